"""`radfusion evaluate` with the classical baselines beside the deep models: fitted on
each model's own split and table features, scored on the same test patients, with
paired differences and bootstrap intervals; checked on a real bundled cohort against
baselines refitted here, and the bootstrap against the metric on each resample."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from radfusion.training.cv.arrays import Outcome, outcome_of, table_inputs
from radfusion.training.cv.holdout import skip_reason
from radfusion.training.cv.metrics import bootstrap_counts, fold_metric, resampled_metric
from radfusion.training.cv.verdict import BETTER, SIMILAR, WORSE, WORSE_WITHIN_NOISE, judge, model_summary, sentence
from tests.support.paths import CONFIGS
from tests.support.real_cohorts import RealCohort, write_cohort

SURVIVAL_BASELINES = ["coxnet (genomics+clinical)", "cox_ridge (genomics+clinical)", "rsf (genomics+clinical)"]
CLASSIFICATION_BASELINES = ["logistic (genomics+clinical)", "gradient_boosting (genomics+clinical)"]


def _resample(counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts.astype(int))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_bootstrap_scores_each_resample_as_the_metric_does(seed: int) -> None:
    """Pair sums give what lifelines and scikit-learn give on the resampled patients,
    with tied times (an event and a censoring at one time), tied scores and repeats."""
    rng = np.random.default_rng(seed)
    n = 50
    time = rng.integers(1, 12, n).astype(float)
    survival = Outcome(rng.integers(0, 2, n), time, rng.integers(0, 2, n))
    risk = np.round(rng.normal(size=n), 1)
    p = np.round(rng.random(n), 1)
    binary = np.stack([1 - p, p], axis=1)
    three = Outcome(rng.integers(0, 3, n), time, survival.event)
    probs = rng.dirichlet([1, 1, 1], n)
    counts = bootstrap_counts(n, samples=40, seed=seed)
    assert counts.sum(axis=1).tolist() == [n] * 40
    for is_survival, scores, outcome in ((True, risk, survival), (False, binary, survival), (False, probs, three)):
        fast = resampled_metric(is_survival, scores, outcome, counts)
        slow = [fold_metric(is_survival, scores[_resample(c)], outcome.take(_resample(c))) for c in counts]
        np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)
        # No resampling: the metric itself.
        single = resampled_metric(is_survival, scores, outcome, np.ones((1, n)))
        assert single[0] == pytest.approx(fold_metric(is_survival, scores, outcome), abs=1e-12)


def test_a_resample_without_events_or_without_a_class_is_undefined() -> None:
    outcome = Outcome(np.array([0, 0, 1]), np.array([1.0, 2.0, 3.0]), np.array([0, 0, 1]))
    counts = np.array([[3.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    survival = resampled_metric(True, np.array([0.1, 0.2, 0.3]), outcome, counts)
    assert np.isnan(survival[0]) and np.isnan(survival[1])  # the only event is the last time: no pair
    binary = resampled_metric(False, np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]), outcome, counts)
    assert np.isnan(binary[0]) and binary[1] == 1.0


def test_the_verdict_says_when_the_deep_model_loses() -> None:
    assert judge(-0.05, -0.09, -0.01) == WORSE
    assert judge(-0.05, -0.12, 0.02) == WORSE_WITHIN_NOISE
    assert judge(0.04, 0.01, 0.07) == BETTER
    assert judge(0.01, -0.03, 0.05) == SIMILAR
    text = sentence("radfusion", "coxnet", -0.05, -0.09, -0.01, "C-index", "this cohort's folds")
    assert text == (
        "coxnet is better than radfusion on this cohort's folds by 0.050 C-index (95% CI 0.010 to 0.090): "
        "use coxnet for this cohort instead of radfusion."
    )
    assert "consider coxnet" in sentence("radfusion", "coxnet", -0.05, -0.12, 0.02, "C-index", "x")
    comparisons = {
        "coxnet": {"difference": -0.02, "ci95": [-0.08, 0.04]},
        "rsf": {"difference": -0.06, "ci95": [-0.1, -0.02]},
        "cox_ridge": {"difference": 0.03, "ci95": [0.01, 0.05]},
    }
    summary = model_summary("cox", comparisons, "C-index", "this test split")
    assert (
        summary.startswith("rsf is better than cox on this test split by 0.060")
        and "Also ahead of cox: coxnet." in summary
    )
    assert model_summary("cox", {"cox_ridge": comparisons["cox_ridge"]}, "C-index", "x") is None


def test_an_image_only_network_has_no_table_features_and_wide_tables_skip_slow_baselines() -> None:
    image_only = SimpleNamespace(
        modality_names=["image", "expression", "clinical"], omics_sizes={"expression": 3}, uses=lambda m: m == "image"
    )
    assert table_inputs(image_only, ["image", "expression", "clinical"]) is None
    omics = SimpleNamespace(
        modality_names=["image", "expression", "mutation", "clinical"],
        omics_sizes={"expression": 3, "mutation": 2},
        uses=lambda m: m != "mutation",
    )
    inputs = table_inputs(omics, ["image", "expression", "mutation", "clinical"])
    assert (inputs.genomics, inputs.clinical, inputs.presence, inputs.label) == (True, True, (1,), "genomics+clinical")
    # The demo cohort's shape: 640 training patients, 318 features.
    assert "cox_ridge" in skip_reason("cox_ridge", 640, 318) and skip_reason("rsf", 640, 318) is None
    assert skip_reason("cox_ridge", 640, 11) is None and skip_reason("coxnet", 10**5, 10**4) is None
    assert "forest" in skip_reason("rsf", 5000, 300)


@pytest.fixture(scope="module")
def breast_cancer(tmp_path_factory: pytest.TempPathFactory) -> RealCohort:
    """sksurv's 198-patient expression cohort (76 genes, age/size/grade/ER), untouched."""
    return write_cohort("breast_cancer", tmp_path_factory.mktemp("breast_cancer"))


def _train(cohort: RealCohort, out: Path, *configs: Path) -> Path:
    from radfusion.training.cli import main

    files = [CONFIGS / "trainer" / "cpu.yaml", CONFIGS / "model" / "fusion_cpu.yaml", *configs]
    main(
        [
            "fit",
            *[a for c in files for a in ("--config", str(c))],
            *cohort.cli_args(),
            "--trainer.max_epochs",
            "3",
            "--trainer.default_root_dir",
            str(out),
        ]
    )
    return out / "checkpoints" / "best.ckpt"


@pytest.mark.slow
def test_evaluate_puts_each_baseline_beside_the_deep_models_on_the_same_patients(breast_cancer, tmp_path) -> None:
    from radfusion.training.checkpoints import load_datamodule, load_module
    from radfusion.training.cv.baselines import make_baseline
    from radfusion.training.evaluate import evaluate
    from radfusion.training.report.baselines import baselines_section

    cox = _train(breast_cancer, tmp_path / "cox", CONFIGS / "experiment" / "survival_cox.yaml")
    classifier = _train(breast_cancer, tmp_path / "classifier")  # classification of the event flag
    # "cox_again": the same network again: its baselines are the same fits, shared.
    saved = evaluate({"cox": cox, "cox_again": cox, "classifier": classifier}, tmp_path / "eval")
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # Baseline rows and comparisons are standard JSON: an undefined value is null, not NaN.
    assert list(written) == list(saved) and all(
        written[n] == saved[n] for n in saved if n not in ("cox", "cox_again", "classifier")
    )
    assert written["cox"]["vs_baselines"] == saved["cox"]["vs_baselines"]
    assert list(saved) == ["cox", "cox_again", "classifier", *SURVIVAL_BASELINES, *CLASSIFICATION_BASELINES]
    for name in SURVIVAL_BASELINES:
        row = saved[name]
        assert row["kind"] == "baseline" and row["compared_with"] == ["cox", "cox_again"]
        assert row["n_observed"] == saved["cox"]["n_observed"] == 40
        low, high = row["cindex_ci95"]
        assert low < row["cindex"] < high
    assert saved["rsf (genomics+clinical)"]["fit"]["trees"] == 100
    assert saved["cox_again"]["vs_baselines"] == saved["cox"]["vs_baselines"]

    # The numbers are the baselines' own: refit coxnet and logistic here, score them alike.
    module, dm = load_module(cox), load_datamodule(cox)
    inputs = table_inputs(module.net, dm.modalities)
    train, test = dm.records["train"] + dm.records["val"], dm.records["test"]
    coxnet = make_baseline("coxnet").fit(inputs.of(train), outcome_of(train))
    expected = fold_metric(True, coxnet.predict(inputs.of(test)), outcome_of(test))
    assert saved["coxnet (genomics+clinical)"]["cindex"] == pytest.approx(expected, abs=1e-12)
    dm = load_datamodule(classifier)
    train, test = dm.records["train"] + dm.records["val"], dm.records["test"]
    logistic = make_baseline("logistic").fit(inputs.of(train), outcome_of(train))
    expected = fold_metric(False, logistic.predict(inputs.of(test)), outcome_of(test))
    assert saved["logistic (genomics+clinical)"]["auroc"] == pytest.approx(expected, abs=1e-12)

    # Paired: the deep model's own metric minus the baseline's, on the same patients.
    for deep, metric, baselines in (
        ("cox", "cindex", SURVIVAL_BASELINES),
        ("classifier", "auroc", CLASSIFICATION_BASELINES),
    ):
        compared = saved[deep]["vs_baselines"]
        assert list(compared) == baselines
        for name, c in compared.items():
            assert c["model"] == pytest.approx(saved[deep][metric], abs=1e-6)
            assert c["difference"] == pytest.approx(c["model"] - saved[name][metric], abs=1e-12)
            low, high = c["ci95"]
            assert low < c["difference"] < high and high - low < 0.6
    # One split of 40 test patients (10 events) is noisy, yet every baseline ranks above
    # chance (the lowest, ridge Cox, 0.546) and the forest well above it (0.720).
    values = {n: saved[n]["cindex"] for n in SURVIVAL_BASELINES}
    assert min(values.values()) > 0.52 and max(values.values()) > 0.68, values

    table = (tmp_path / "eval" / "metrics.md").read_text()
    assert "| coxnet (genomics+clinical) | survival | – | genomics+clinical | " in table
    c = saved["cox"]["vs_baselines"]["coxnet (genomics+clinical)"]
    assert f"| cox | coxnet (genomics+clinical) | C-index | {c['model']:.3f} | {c['baseline_value']:.3f} |" in table
    losses = [n for n, c in saved["cox"]["vs_baselines"].items() if c["difference"] < 0]
    if losses:  # the network saying so where it loses, naming the baseline ahead by most
        worst = min(losses, key=lambda n: saved["cox"]["vs_baselines"][n]["difference"])
        assert f"- {worst} " in table and "than cox on this test split" in table
    html = baselines_section(saved, None)
    assert "coxnet (genomics+clinical)" in html and "Deep models against classical baselines" in html

    # --baselines none: the deep rows alone, as before.
    alone = evaluate({"cox": cox}, tmp_path / "alone", baselines=())
    assert list(alone) == ["cox"] and "vs_baselines" not in alone["cox"]
    assert alone["cox"]["cindex"] == saved["cox"]["cindex"]
    with pytest.raises(ValueError, match="unknown baseline"):
        evaluate({"cox": cox}, tmp_path / "x", baselines=("lasso",))
