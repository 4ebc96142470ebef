"""Classical baselines on one train/test split, beside the deep models of
`radfusion evaluate`.

Each deep model's data module gives the split and the features: the table inputs the
network uses (arrays.table_inputs), after the data module's missing-data policy. The
baselines are fitted on its training and validation patients (they choose their
penalties by their own inner CV, as in `radfusion cv`) and scored on its test patients.
Deep models with the same split and the same feature matrix share one fit of each
baseline. Every deep model is compared with each baseline fitted on its features: the
paired difference (deep − baseline) on the same test patients, with a 95% percentile
bootstrap interval over patients (the same resamples for every model of a split).

Evaluation is meant to take seconds (the demo runs it), so by default the forest is
smaller than cross-validation's and the slowest fits are left out where the table is
wide; a baseline named explicitly always runs."""

from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import dataclass

import numpy as np

from radfusion.training.cv.arrays import Outcome, TableInputs, outcome_of, table_inputs
from radfusion.training.cv.baselines import CLASSIFICATION, SURVIVAL, default_baselines, make_baseline
from radfusion.training.cv.metrics import (
    BOOTSTRAP_SAMPLES,
    bootstrap_counts,
    fold_metric,
    metric_name,
    percentile_interval,
    resampled_metric,
)
from radfusion.training.cv.verdict import judge

# Measured on the demo cohort (640 training patients x 318 features, 2 shared cores):
# the forest took 17 s with cross-validation's 300 trees and 5.8 s with 100, for the
# same test c-index (0.616 and 0.617, seed 0). lifelines' ridge Cox solves p x p Newton
# systems in every one of its 31 fits: 245 s at 318 features, 11 s at 100, 3.9 s at 50
# (n·p² = 1.6e6), 2.1 s at 11. Beyond the limits below a default baseline is skipped
# and the table says so (`radfusion cv` fits it, or name it with --baselines).
EVALUATE_TREES = 100
RIDGE_MAX_COST = 2_000_000  # patients x features²
FOREST_MAX_CELLS = 500_000  # patients x features


@dataclass(frozen=True)
class HeldOut:
    """One deep model's predictions on its test patients (risk, or one probability per
    class) and the arrays its baselines are fitted and scored on (None without table
    inputs: an image-only network)."""

    name: str
    survival: bool
    n_classes: int
    horizons: tuple[float, ...]
    scores: np.ndarray
    patients: tuple[str, ...]
    test: Outcome
    train: Outcome
    inputs: TableInputs | None
    x_train: np.ndarray | None
    x_test: np.ndarray | None

    @property
    def key(self) -> str:
        """Equal for models whose baselines would be the same fits: same task kind,
        patients, outcomes and feature matrices."""
        digest = hashlib.sha256(repr((self.survival, self.n_classes, self.patients)).encode())
        for array in (self.x_train, self.x_test, *_outcome_arrays(self.train), *_outcome_arrays(self.test)):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


def _outcome_arrays(outcome: Outcome) -> tuple[np.ndarray, ...]:
    return outcome.label, outcome.time, outcome.event


def held_out(name: str, module, dm, predicted: dict) -> HeldOut | None:
    """``predicted``: evaluate.predict_split's observed test predictions of ``module``
    (in the order of ``dm.records["test"]``). None for a multi-label model: the
    classical baselines predict one target."""
    import torch

    from radfusion.training.tasks import SurvivalTask

    task = module.task
    if task.kind == "multilabel":
        return None
    survival = isinstance(task, SurvivalTask)
    outputs = predicted["outputs"]
    scores = task.risk(outputs) if survival else torch.softmax(outputs, dim=-1)
    train_records, test_records = dm.records["train"] + dm.records["val"], dm.records["test"]
    if len(test_records) != len(outputs):
        raise ValueError(f"{name}: {len(outputs)} predictions for {len(test_records)} test patients")
    inputs = table_inputs(module.net, dm.modalities)
    return HeldOut(
        name=name,
        survival=survival,
        n_classes=dm.n_classes,
        horizons=tuple(float(h) for h in module.task_config.horizons),
        scores=scores.detach().numpy().astype(np.float64),
        patients=tuple(str(r["patient_id"]) for r in test_records),
        test=outcome_of(test_records),
        train=outcome_of(train_records),
        inputs=inputs,
        x_train=inputs.of(train_records) if inputs else None,
        x_test=inputs.of(test_records) if inputs else None,
    )


def check_names(names: tuple[str, ...] | None) -> None:
    known = (*SURVIVAL, *CLASSIFICATION)
    unknown = [n for n in names or () if n not in known]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(known)}")


def skip_reason(name: str, n: int, p: int) -> str | None:
    """Why a default baseline is left out of evaluation for n patients x p features."""
    if name == "cox_ridge" and n * p * p > RIDGE_MAX_COST:
        return (
            f"{n} patients x {p} features is too wide for lifelines' ridge Cox within evaluation's time "
            f"(patients x features² above {RIDGE_MAX_COST:.0e}); radfusion cv fits it, or ask: --baselines cox_ridge"
        )
    if name == "rsf" and n * p > FOREST_MAX_CELLS:
        return (
            f"{n} patients x {p} features is too large for the forest within evaluation's time "
            f"(patients x features above {FOREST_MAX_CELLS:.0e}); radfusion cv fits it, or ask: --baselines rsf"
        )
    return None


def _chosen(names: tuple[str, ...] | None, model: HeldOut) -> list[tuple[str, str | None]]:
    """(baseline, reason it is skipped or None) for this model's task."""
    assert model.x_train is not None
    n, p = model.x_train.shape
    if names is None:
        return [(b, skip_reason(b, n, p)) for b in default_baselines(model.survival)]
    fitting = SURVIVAL if model.survival else CLASSIFICATION
    return [(b, None) for b in names if b in fitting]


def compare_with_baselines(
    models: list[HeldOut],
    names: tuple[str, ...] | None = None,
    taken: set[str] | frozenset[str] = frozenset(),
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Fit the baselines (``names``; None: each task's defaults within the time limits)
    once per split and feature matrix, and compare every deep model with those fitted
    on its features. Returns the baseline rows of metrics.json (named "<baseline>
    (<features>)", not colliding with ``taken``) and, per deep model, its comparisons
    by baseline row."""
    check_names(names)
    groups: dict[str, list[HeldOut]] = {}
    for model in models:
        if model.inputs is not None:
            groups.setdefault(model.key, []).append(model)
    rows: dict[str, dict] = {}
    comparisons: dict[str, dict] = {}
    for members in groups.values():
        first = members[0]
        counts = bootstrap_counts(len(first.patients), samples, seed)
        deep = {m.name: _scored(m.survival, m.scores, m.test, counts) for m in members}
        for baseline, skipped in _chosen(names, first):
            row_name = _row_name(baseline, first, set(taken) | set(rows))
            row = _row(baseline, first, [m.name for m in members])
            rows[row_name] = row
            if skipped:
                row["skipped"] = skipped
                continue
            fitted = _fit(baseline, first, seed)
            if "failed" in fitted:
                row["failed"] = fitted["failed"]
                continue
            value, draws = _scored(first.survival, fitted["scores"], first.test, counts)
            row.update(_metrics(first, fitted["scores"], value, draws))
            row["fit"] = {k: v for k, v in fitted.items() if k != "scores"}
            for m in members:
                comparisons.setdefault(m.name, {})[row_name] = _comparison(
                    baseline, first.survival, deep[m.name], (value, draws), len(first.patients)
                )
    return rows, comparisons


def _row_name(baseline: str, model: HeldOut, taken: set[str]) -> str:
    assert model.inputs is not None
    name = f"{baseline} ({model.inputs.label})"
    # Another split with the same features (e.g. a second target): name the split by its first model.
    return name if name not in taken else f"{baseline} ({model.inputs.label}; split of {model.name})"


def _row(baseline: str, model: HeldOut, compared_with: list[str]) -> dict:
    assert model.inputs is not None
    return {
        "kind": "baseline",
        "baseline": baseline,
        "task": "survival" if model.survival else "classification",
        "modalities": model.inputs.label.split("+"),
        "compared_with": compared_with,
    }


def _fit(baseline: str, model: HeldOut, seed: int) -> dict:
    """Fit on the training + validation patients and predict the test patients; a fit
    that cannot run on these patients (too few of a class for the inner folds, a
    diverging solver) is reported, not raised: the deep models' rows still get written."""
    began = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # Coxnet's path starts at the penalty that zeroes every weight, by design.
            warnings.filterwarnings("ignore", message="all coefficients are zero")
            fitted = make_baseline(baseline, n_classes=model.n_classes, seed=seed, trees=EVALUATE_TREES)
            fitted.fit(model.x_train, model.train)
            scores = np.asarray(fitted.predict(model.x_test), dtype=np.float64)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as error:
        return {"failed": f"{type(error).__name__}: {error}"}
    result = {
        "scores": scores,
        "seconds": time.perf_counter() - began,
        "n_train": len(model.train),
        "chosen": _plain(getattr(fitted, "chosen", {})),
    }
    if baseline == "rsf":
        result["trees"] = EVALUATE_TREES
    return result


def _scored(survival: bool, scores: np.ndarray, outcome: Outcome, counts: np.ndarray) -> tuple[float, np.ndarray]:
    return fold_metric(survival, scores, outcome), resampled_metric(survival, scores, outcome, counts)


def _metrics(model: HeldOut, scores: np.ndarray, value: float, draws: np.ndarray) -> dict:
    """The baseline's metrics under evaluate's names (observed pattern only: a
    baseline has no image to lose), the headline metric's bootstrap interval, and for
    survival the time-dependent AUC at the deep model's horizons."""
    from radfusion.training.tasks import time_dependent_auc

    metric = metric_name(model.survival)
    out: dict = {f"{metric}_observed": _finite(value), metric: _finite(value)}
    out[f"{metric}_ci95"] = [_finite(v) for v in percentile_interval(draws)]
    if model.survival and model.horizons:
        per_horizon = {
            f"td_auc_{h:g}_observed": time_dependent_auc(scores, model.test.time, model.test.event, h)
            for h in model.horizons
        }
        defined = [v for v in per_horizon.values() if np.isfinite(v)]
        out.update({k: _finite(v) for k, v in per_horizon.items()})
        out["td_auc_observed"] = float(np.mean(defined)) if defined else None
    out["n_observed"] = len(model.patients)
    return out


def _comparison(
    baseline: str, survival: bool, deep: tuple[float, np.ndarray], base: tuple[float, np.ndarray], n_test: int
) -> dict:
    difference = deep[0] - base[0]
    low, high = percentile_interval(deep[1] - base[1])
    return {
        "baseline": baseline,
        "metric": metric_name(survival),
        "model": _finite(deep[0]),
        "baseline_value": _finite(base[0]),
        "difference": _finite(difference),
        "ci95": [_finite(low), _finite(high)],
        "n_test": n_test,
        "resamples": len(deep[1]),
        "verdict": judge(difference, low, high),
    }


def _finite(value: float) -> float | None:
    """JSON-safe: an undefined metric (NaN) is null, as in cv.json."""
    value = float(value)
    return value if np.isfinite(value) else None


def _plain(chosen: dict) -> dict:
    return {k: float(v) if isinstance(v, (int, float, np.floating)) else v for k, v in chosen.items()}
