"""`radfusion evaluate`: held-out (test split) metrics for several checkpoints on the
same split, overall and per modality-presence pattern, as JSON and a Markdown table
(and the table as a plot, evaluation.png): one row per model (a fusion strategy or a
unimodal baseline), columns pattern x metric. Classification and multi-label models
get AUROC (torchmetrics); survival models the concordance index (lifelines) and the
time-dependent AUC at the model's horizons (cumulative/dynamic, scikit-learn), whose
mean is the table's td-AUC.

By default the classical baselines (penalised Cox / logistic, a forest or gradient
boosting: training/cv/baselines.py) are fitted on each model's own split and table
features and scored on the same test patients (training/cv/holdout.py): their rows sit
beside the deep models', and each deep model gets its paired difference from each
baseline with a bootstrap interval, and a sentence where it loses.

The same name given several checkpoints (the same configuration trained with other
seeds) makes one row: the first checkpoint's metrics, and the headline metric's spread
over all of them (``seeds``: each value, their standard deviation and the first
one's standard error on this test split). A strategy whose metric moves between seeds
by more than its standard error is marked unstable: what it scored depends on the
draw of floats and initial weights, not only on the strategy."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, multiclass_auroc, multilabel_auroc

from radfusion.training.checkpoints import load_datamodule, load_module
from radfusion.training.cv.holdout import check_names, compare_with_baselines, held_out
from radfusion.training.cv.verdict import model_summary
from radfusion.training.tasks import SurvivalTask, concordance, time_dependent_auc

# Presence patterns forced at evaluation time: what a model gives when a hospital
# can supply only part of a case. Clinical covariates, when a model has them, are
# kept in every pattern: a hospital always knows them.
PATTERNS = {"observed": None, "image_only": ("image",), "genomics_only": ("genomics",)}
PATTERN_TITLES = {"observed": "all", "image_only": "image only", "genomics_only": "genomics only"}
METRIC_TITLES = {"auroc": "AUROC", "cindex": "C-index", "td_auc": "td-AUC"}
FIGURE_FILE = "evaluation.png"  # beside metrics.json

log = logging.getLogger(__name__)


def pattern_mask(net, keep: tuple[str, ...]) -> torch.Tensor:
    kept = lambda name: name in keep or name == "clinical" or ("genomics" in keep and name in net.omics_sizes)  # noqa: E731
    return torch.tensor([float(kept(n)) for n in net.modality_names])


@torch.no_grad()
def predict_split(module, dm, part: str = "test", pattern: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """Raw outputs, labels, times, events and the presence actually fed, for one split."""
    out: dict[str, list] = {"outputs": [], "label": [], "time": [], "event": [], "presence": []}
    for batch in dm._loader(part, shuffle=False):
        presence = module._presence(batch)
        if pattern is not None:
            presence = presence * pattern_mask(module.net, pattern)
        out["outputs"].append(module(batch["image"], batch["genomics"], batch["clinical"], presence))
        out["presence"].append(presence)
        for key in ("label", "time", "event"):
            out[key].append(batch[key])
    return {k: torch.cat(v) for k, v in out.items()}


def pattern_metrics(module, predicted: dict[str, torch.Tensor], horizons) -> dict[str, float]:
    """The task's metrics on one pattern's predictions; empty when undefined (one class
    only, no events)."""
    task, outputs = module.task, predicted["outputs"]
    if isinstance(task, SurvivalTask):
        risk = task.risk(outputs).numpy()
        time, event = predicted["time"].numpy(), predicted["event"].numpy()
        if event.sum() == 0 or len(risk) < 2:
            return {}
        per_horizon = {f"td_auc_{h:g}": time_dependent_auc(risk, time, event, h) for h in horizons}
        finite = [v for v in per_horizon.values() if np.isfinite(v)]
        return {
            "cindex": concordance(risk, time, event),
            **per_horizon,
            "td_auc": float(np.mean(finite)) if finite else float("nan"),
        }
    labels = predicted["label"]
    if task.kind == "multilabel":
        if (labels.min(dim=0).values == labels.max(dim=0).values).any():
            return {}
        return {"auroc": float(multilabel_auroc(torch.sigmoid(outputs), labels.long(), num_labels=outputs.shape[1]))}
    if labels.unique().numel() < 2:
        return {}
    probs = torch.softmax(outputs, dim=-1)
    if outputs.shape[1] == 2:
        return {"auroc": float(binary_auroc(probs[:, 1], labels))}
    return {"auroc": float(multiclass_auroc(probs, labels, num_classes=outputs.shape[1]))}


def evaluate_checkpoint(checkpoint: Path, cohort_dir: Path | None = None) -> dict:
    """Test-split metrics of one checkpoint (any radfusion version), observed and per
    modality pattern. ``cohort_dir``: where the training cohort lies now, if it moved."""
    module = load_module(checkpoint)
    dm = load_datamodule(checkpoint, cohort_dir)
    return checkpoint_metrics(module, dm, checkpoint)[0]


def checkpoint_metrics(module, dm, checkpoint: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """evaluate_checkpoint's result for a loaded module and data module, and the
    observed-pattern test predictions (for the baselines' paired comparison)."""
    horizons = tuple(module.task_config.horizons)
    result: dict = {
        "kind": "deep",
        "checkpoint": str(checkpoint),
        "modalities": list(module.network_config.modalities),
        "task": module.task.kind,
        "fusion": module.net.fusion_kind,
    }
    covariates_only = pattern_mask(module.net, ()).bool()
    observed: dict[str, torch.Tensor] = {}
    for name, pattern in PATTERNS.items():
        predicted = predict_split(module, dm, "test", pattern)
        # Cases with nothing the model can use (beyond covariates) are excluded from that pattern.
        usable = predicted["presence"][:, ~covariates_only].sum(dim=1) > 0
        if name == "observed":
            usable = torch.ones_like(usable)
            observed = predicted
        kept = {k: v[usable] for k, v in predicted.items()}
        metrics = pattern_metrics(module, kept, horizons)
        if not metrics:  # e.g. an image-only model under "genomics only": no usable case
            continue
        result.update({f"{metric}_{name}": value for metric, value in metrics.items()})
        result[f"n_{name}"] = int(usable.sum())
    # The headline metric; NaN when undefined on this test split (tiny cohorts), not 0.5.
    headline = headline_metric(module)
    result[headline] = result.get(f"{headline}_observed", float("nan"))
    return result, observed


def evaluate(
    checkpoints: dict[str, Path | list[Path]], out_dir: Path, baselines: tuple[str, ...] | None = None
) -> dict:
    """metrics.json and metrics.md for ``checkpoints`` (name -> path, or paths: one
    configuration trained with several seeds). ``baselines``: None: each task's
    default classical baselines (within evaluation's time limits); (): none; or the
    names to fit (training/cv/baselines.py)."""
    check_names(baselines)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    held = []
    for name, paths in checkpoints.items():
        first, *others = [Path(p) for p in (paths if isinstance(paths, list) else [paths])]
        log.info(
            "evaluate: %s on its test split, each modality pattern%s", name, f" (+{len(others)} seeds)" * bool(others)
        )
        module, dm = load_module(first), load_datamodule(first)
        results[name], observed = checkpoint_metrics(module, dm, first)
        if others:
            results[name]["seeds"] = seed_spread(module, results[name], observed, others)
        if baselines != ():
            model = held_out(name, module, dm, observed)
            if model is not None:
                held.append(model)
    if held:
        log.info("evaluate: classical baselines on the same test patients")
        rows, comparisons = compare_with_baselines(held, baselines, taken=set(results))
        for name, compared in comparisons.items():
            results[name]["vs_baselines"] = compared
        results.update(rows)
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    (out_dir / "metrics.md").write_text(markdown_table(results))
    write_figure(results, out_dir / FIGURE_FILE)
    return results


def write_figure(results: dict, path: Path) -> Path | None:
    """The table as a plot (training/report/figures.py): each model's metric per
    presence pattern, the baselines' bootstrap intervals, the seeds' values. The
    metrics are written already: a figure that cannot be drawn is a warning."""
    from radfusion.training.report.figures import evaluation

    try:
        path.write_bytes(evaluation(results))
    except (ValueError, OSError) as exc:
        log.warning("no %s: %s", path.name, exc)
        return None
    return path


def headline_metric(module) -> str:
    """The one number a model's row is judged by: the c-index for survival, else AUROC."""
    return "cindex" if isinstance(module.task, SurvivalTask) else "auroc"


def headline_standard_error(module, result: dict, observed: dict[str, torch.Tensor]) -> float | None:
    """The headline metric's standard error on this test split: Hanley & McNeil's for a
    binary AUROC, the bootstrap's (200 resamples of the patients) for a c-index; None
    for multi-class and multi-label AUROC."""
    headline = headline_metric(module)
    value = result.get(headline)
    if value is None or np.isnan(value):
        return None
    label = observed["label"].numpy()
    if headline == "auroc" and label.ndim == 1 and observed["outputs"].shape[1] == 2:
        n1, n0 = int((label == 1).sum()), int((label == 0).sum())
        q1, q2 = value / (2 - value), 2 * value**2 / (1 + value)
        return float(
            np.sqrt((value * (1 - value) + (n1 - 1) * (q1 - value**2) + (n0 - 1) * (q2 - value**2)) / (n1 * n0))
        )
    if headline == "cindex":
        rng = np.random.default_rng(0)
        risk = module.task.risk(observed["outputs"]).numpy()
        time, event = observed["time"].numpy(), observed["event"].numpy()
        values = []
        for _ in range(200):
            pick = rng.integers(0, len(time), len(time))
            if event[pick].sum() > 0:
                values.append(concordance(risk[pick], time[pick], event[pick]))
        return float(np.std(values)) if len(values) > 1 else None
    return None


def seed_spread(module, result: dict, observed: dict[str, torch.Tensor], others: list[Path]) -> dict:
    """The headline metric of the first checkpoint and of ``others`` (the same model
    trained with other seeds), their standard deviation, the first one's standard
    error and whether the spread stays within it."""
    headline = headline_metric(module)
    values = [result.get(headline, float("nan")), *(evaluate_checkpoint(p).get(headline, float("nan")) for p in others)]
    finite = all(np.isfinite(values))
    sd = float(np.std(values, ddof=1)) if finite else None
    se = headline_standard_error(module, result, observed)
    return {
        "metric": headline,
        "values": values,
        "mean": float(np.mean(values)) if finite else None,
        "sd": sd,
        "standard_error": se,
        # Undefined (a seed without the metric on this split, or no standard error): not judged.
        "stable": None if se is None or sd is None else bool(sd <= se),
    }


def markdown_table(results: dict) -> str:
    """Rows: models, the deep ones first, then the classical baselines; columns: metric
    x presence pattern, for the metrics any model has (a baseline has only "all": it
    has no image to lose). Then each deep model against each baseline."""
    metrics = [m for m in METRIC_TITLES if any(f"{m}_observed" in r for r in results.values())]
    columns = [(m, p) for m in metrics for p in PATTERNS]
    header = [
        "model",
        "task",
        "fusion",
        "modalities",
        *(f"{METRIC_TITLES[m]} {PATTERN_TITLES[p]}" for m, p in columns),
        "n test",
        "over seeds",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results.items():
        if r.get("kind") == "baseline" and not any(f"{m}_observed" in r for m in metrics):
            continue  # skipped or failed: said below the comparison table
        # A unimodal model's fusion strategy is moot: nothing to fuse; a baseline has none.
        fusion = r.get("fusion", "late") if len(r["modalities"]) > 1 and r.get("kind") != "baseline" else "–"
        cells = [name, r.get("task", "classification"), fusion, "+".join(r["modalities"])]
        cells += [_fmt(r.get(f"{m}_{p}")) for m, p in columns]
        cells.append(str(r.get("n_observed", "")))
        cells.append(_spread(r.get("seeds")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + baseline_comparison(results)


def baseline_comparison(results: dict) -> str:
    """Markdown: per deep model and baseline (fitted on the model's split and table
    features) the test metric of each, the paired difference with its bootstrap
    interval; then a sentence for each deep model that loses to a baseline, and a
    line for each baseline skipped or failed."""
    compared = {name: r["vs_baselines"] for name, r in results.items() if r.get("vs_baselines")}
    absent = {n: r for n, r in results.items() if r.get("kind") == "baseline" and ("skipped" in r or "failed" in r)}
    if not compared and not absent:
        return ""
    lines = [""]
    if compared:
        resamples = next(iter(next(iter(compared.values())).values()))["resamples"]
        lines += [
            f"Deep model − classical baseline on the same test patients (95% CI: {resamples} bootstrap resamples "
            "of the patients; positive: the deep model did better):",
            "",
            "| model | baseline | metric | model value | baseline value | model − baseline | 95% CI | verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, by_baseline in compared.items():
            for row, c in by_baseline.items():
                low, high = c["ci95"]
                cells = [name, row, METRIC_TITLES[c["metric"]], _fmt(c["model"]), _fmt(c["baseline_value"])]
                cells += [_signed(c["difference"]), f"{_signed(low)} to {_signed(high)}", c["verdict"]]
                lines.append("| " + " | ".join(cells) + " |")
        said = [
            "- " + text
            for name, by_baseline in compared.items()
            if (text := model_summary(name, by_baseline, _title(by_baseline), "this test split"))
        ]
        lines += ["", *said] if said else ["", "No deep model did worse than a classical baseline on this test split."]
    for name, r in absent.items():
        lines.append(f"- {name}: {'skipped' if 'skipped' in r else 'failed'}: {r.get('skipped') or r.get('failed')}")
    return "\n".join(lines) + "\n"


def _spread(seeds: dict | None) -> str:
    """mean ± sd over the seeds (n), and "unstable" when the sd exceeds the standard error."""
    if not seeds or seeds["mean"] is None:
        return "–"
    text = f"{seeds['mean']:.3f} ± {seeds['sd']:.3f} (n={len(seeds['values'])})"
    return text + (" unstable" if seeds["stable"] is False else "")


def _title(comparisons: dict) -> str:
    return METRIC_TITLES[next(iter(comparisons.values()))["metric"]]


def _fmt(value) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def _signed(value) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:+.3f}"
