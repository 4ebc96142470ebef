"""`radfusion evaluate`: the strategy x modality-pattern table (Markdown + JSON) over
classification and survival models trained on one tiny cohort, with the numbers
checked against metrics recomputed from the models' own predictions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lifelines.utils import concordance_index
from sklearn.metrics import roc_auc_score

from radfusion.prediction import prob_column
from radfusion.training.evaluate import markdown_table
from tests.support.paths import PROJECT_ROOT as ROOT
from tests.support.tiny_training import TINY_GRID, train_tiny

CONFIGS = ROOT / "configs"


def test_markdown_table_has_a_column_per_metric_and_pattern():
    results = {
        "gated": {
            "modalities": ["image", "genomics"],
            "task": "classification",
            "fusion": "gated",
            "auroc_observed": 0.91,
            "auroc_image_only": 0.8,
            "auroc_genomics_only": 0.82,
            "n_observed": 160,
        },
        "image_only": {
            "modalities": ["image"],
            "task": "classification",
            "fusion": "late",
            "auroc_observed": 0.79,
            "auroc_image_only": 0.79,
            "n_observed": 160,
        },
        "cox": {
            "modalities": ["image", "genomics"],
            "task": "survival_cox",
            "fusion": "late",
            "cindex_observed": 0.7,
            "td_auc_observed": 0.75,
            "n_observed": 160,
        },
    }
    lines = markdown_table(results).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[4:7] == ["AUROC all", "AUROC image only", "AUROC genomics only"]
    assert header[7:10] == ["C-index all", "C-index image only", "C-index genomics only"]
    assert header[10] == "td-AUC all" and header[-2:] == ["n test", "over seeds"]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in lines[2:]}
    assert rows["gated"][2:7] == ["gated", "image+genomics", "0.910", "0.800", "0.820"]
    assert rows["image_only"][2] == "–" and rows["image_only"][6] == "–"  # no fusion; cannot use genomics
    assert rows["cox"][4] == "–" and rows["cox"][7] == "0.700" and rows["cox"][10] == "0.750"
    assert rows["gated"][-1] == "–"  # one seed: no spread
    results["gated"]["seeds"] = {"values": [0.91, 0.85, 0.80], "mean": 0.853, "sd": 0.055, "stable": False}
    row = next(line for line in markdown_table(results).splitlines() if line.startswith("| gated"))
    assert row.rstrip(" |").endswith("0.853 ± 0.055 (n=3) unstable")


def test_markdown_table_puts_the_baselines_beside_the_deep_models_and_says_where_one_wins():
    comparison = {
        "metric": "cindex",
        "model": 0.64,
        "baseline_value": 0.7,
        "difference": -0.06,
        "ci95": [-0.11, -0.01],
        "verdict": "worse",
        "n_test": 160,
        "resamples": 1000,
    }
    results = {
        "cox": {
            "modalities": ["image", "genomics"],
            "task": "survival_cox",
            "fusion": "gated",
            "cindex_observed": 0.64,
            "cindex_image_only": 0.6,
            "n_observed": 160,
            "vs_baselines": {"coxnet (genomics)": comparison},
        },
        "coxnet (genomics)": {
            "kind": "baseline",
            "task": "survival",
            "modalities": ["genomics"],
            "cindex_observed": 0.7,
            "td_auc_observed": 0.72,
            "n_observed": 160,
        },
        "cox_ridge (genomics)": {"kind": "baseline", "task": "survival", "modalities": ["genomics"], "skipped": "slow"},
    }
    lines = markdown_table(results).splitlines()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in lines[2:4]}
    assert list(rows) == ["cox", "coxnet (genomics)"] and lines[4] == ""  # the skipped one: a note below
    # A baseline has no fusion and only the "all" pattern: it has no image to lose.
    assert rows["coxnet (genomics)"][1:8] == ["survival", "–", "genomics", "0.700", "–", "–", "0.720"]
    assert "| cox | coxnet (genomics) | C-index | 0.640 | 0.700 | -0.060 | -0.110 to -0.010 | worse |" in lines
    assert (
        "- coxnet (genomics) is better than cox on this test split by 0.060 C-index (95% CI 0.010 to 0.110): "
        "use coxnet (genomics) for this cohort instead of cox."
    ) in lines
    assert "- cox_ridge (genomics): skipped: slow" in lines


def _train(cohort: Path, out: Path, *extra: str) -> Path:
    return train_tiny(cohort, out, *extra, batch_size=8)


def _test(cohort: Path, out: Path, checkpoint: Path, *extra: str) -> dict:
    """`radfusion train test` in process: the logged test metrics."""
    return dict(_train_command("test", cohort, out, checkpoint, *extra).trainer.callback_metrics)


def _train_command(subcommand: str, cohort: Path, out: Path, checkpoint: Path, *extra: str):
    from radfusion.training.cli import main

    configs = [
        CONFIGS / "trainer" / "cpu.yaml",
        CONFIGS / "data" / "synthetic.yaml",
        CONFIGS / "model" / "fusion_cpu.yaml",
    ]
    return main(
        [
            subcommand,
            *[a for c in configs for a in ("--config", str(c))],
            *extra,
            "--data.cohort_dir",
            str(cohort),
            "--trainer.default_root_dir",
            str(out),
            "--data.batch_size",
            "8",
            *TINY_GRID,
            "--ckpt_path",
            str(checkpoint),
        ]
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from radfusion.synth import generate_cohort

    out = tmp_path_factory.mktemp("evaluate_cohort")
    generate_cohort(out, n_patients=40, seed=5, n_genes=40, n_slices=12, rows=32, cols=32, workers=1)
    return out


@pytest.mark.slow
def test_evaluate_compares_strategies_baselines_and_survival_on_one_split(cohort, tmp_path):
    from radfusion.cli import main as radfusion_main
    from radfusion.training.checkpoints import load_datamodule, load_module
    from radfusion.training.evaluate import predict_split

    experiment = CONFIGS / "experiment"
    checkpoints = {
        "gated": _train(cohort, tmp_path / "gated", "--config", str(experiment / "fusion_gated.yaml")),
        "image_only": _train(cohort, tmp_path / "image_only", "--config", str(experiment / "image_only.yaml")),
        "cox": _train(cohort, tmp_path / "cox", "--config", str(experiment / "survival_cox.yaml")),
    }
    # The gated configuration again with another seed: one row, with its spread over the two.
    reseeded = _train(
        cohort, tmp_path / "gated_seed1", "--config", str(experiment / "fusion_gated.yaml"), "--seed_everything", "1"
    )
    out = tmp_path / "eval"
    named = [a for n, p in checkpoints.items() for a in ("--checkpoint", f"{n}={p}")]
    radfusion_main(["evaluate", *named, "--checkpoint", f"gated={reseeded}", "--out", str(out)])
    saved = json.loads((out / "metrics.json").read_text())
    # The classical baselines follow the deep models, fitted on each one's split and
    # table features: the genomics of "gated" and "cox"; "image_only" has none to fit on.
    assert list(saved) == [
        "gated",
        "image_only",
        "cox",
        "logistic (genomics)",
        "gradient_boosting (genomics)",
        "coxnet (genomics)",
        "cox_ridge (genomics)",
        "rsf (genomics)",
    ]
    assert list(saved["cox"]["vs_baselines"]) == ["coxnet (genomics)", "cox_ridge (genomics)", "rsf (genomics)"]
    assert "vs_baselines" not in saved["image_only"]
    assert saved["coxnet (genomics)"]["n_observed"] == saved["cox"]["n_observed"]
    assert saved["gated"]["fusion"] == "gated" and saved["cox"]["task"] == "survival_cox"
    assert "auroc_genomics_only" not in saved["image_only"]  # it cannot use genomics
    assert "auroc" not in saved["cox"] or math.isnan(saved["cox"]["auroc"])
    seeds = saved["gated"]["seeds"]
    assert seeds["metric"] == "auroc" and seeds["values"][0] == saved["gated"]["auroc"] and len(seeds["values"]) == 2
    assert seeds["sd"] == pytest.approx(np.std(seeds["values"], ddof=1))
    assert 0 < seeds["standard_error"] < 0.5 and seeds["stable"] == (seeds["sd"] <= seeds["standard_error"])
    assert "seeds" not in saved["cox"]
    # Same split for every model: the same number of test patients.
    assert saved["gated"]["n_observed"] == saved["image_only"]["n_observed"] == saved["cox"]["n_observed"]

    # The numbers are the models' own: recompute two of them from their predictions.
    module, dm = load_module(checkpoints["gated"]), load_datamodule(checkpoints["gated"])
    predicted = predict_split(module, dm, "test", ("image",))
    probs = torch.softmax(predicted["outputs"], -1)[:, 1].numpy()
    assert saved["gated"]["auroc_image_only"] == pytest.approx(
        roc_auc_score(predicted["label"].numpy(), probs), abs=1e-6
    )
    module, dm = load_module(checkpoints["cox"]), load_datamodule(checkpoints["cox"])
    predicted = predict_split(module, dm, "test")
    risk = predicted["outputs"][:, 0].numpy()
    expected = concordance_index(predicted["time"].numpy(), -risk, predicted["event"].numpy())
    assert saved["cox"]["cindex"] == pytest.approx(expected, abs=1e-9)
    horizons = [
        k for k in saved["cox"] if k.startswith("td_auc_") and k.endswith("_observed") and k != "td_auc_observed"
    ]
    assert len(horizons) == 3
    finite = [saved["cox"][k] for k in horizons if not math.isnan(saved["cox"][k])]
    assert all(0.0 <= v <= 1.0 for v in finite)
    assert saved["cox"]["td_auc_observed"] == pytest.approx(np.mean(finite))

    # `radfusion train test` measures the same checkpoint on the same split.
    tested = _test(
        cohort, tmp_path / "gated_test", checkpoints["gated"], "--config", str(experiment / "fusion_gated.yaml")
    )
    assert float(tested["test/auroc"]) == pytest.approx(saved["gated"]["auroc_observed"], abs=1e-6)

    # `radfusion train predict` writes the same test patients' outputs, in the scorer's columns.
    gated = "--config", str(experiment / "fusion_gated.yaml")
    _train_command("predict", cohort, tmp_path / "gated_predict", checkpoints["gated"], *gated)
    rows = pd.read_parquet(tmp_path / "gated_predict" / "predictions.parquet")
    module, dm = load_module(checkpoints["gated"]), load_datamodule(checkpoints["gated"])
    predicted = predict_split(module, dm, "test")
    labels = list(module.contract_parts["labels"])
    assert len(rows) == len(predicted["label"]) and set(rows["split"]) == {"test"}
    assert rows["patient_id"].is_unique
    assert rows[prob_column(labels[1])].to_numpy() == pytest.approx(
        torch.softmax(predicted["outputs"], -1)[:, 1].numpy(), abs=1e-5
    )
    assert rows["true_label"].tolist() == [labels[i] for i in predicted["label"].tolist()]
    assert rows[[prob_column(label) for label in labels]].sum(axis=1).to_numpy() == pytest.approx(np.ones(len(rows)))
    _train_command(
        "predict",
        cohort,
        tmp_path / "cox_predict",
        checkpoints["cox"],
        "--config",
        str(experiment / "survival_cox.yaml"),
    )
    risk = pd.read_parquet(tmp_path / "cox_predict" / "predictions.parquet")["risk_score"].to_numpy()
    module, dm = load_module(checkpoints["cox"]), load_datamodule(checkpoints["cox"])
    assert risk == pytest.approx(predict_split(module, dm, "test")["outputs"][:, 0].numpy(), abs=1e-5)

    table = (out / "metrics.md").read_text()
    assert "| gated | classification | gated | image+genomics |" in table
    assert "C-index all" in table and "| cox | survival_cox | late |" in table


def test_demo_trains_survival_baselines_and_reports_their_cindex():
    """The demo's survival models: the Cox config after each baseline's own (whose
    modalities it must not undo), and the summary reads their c-index from evaluate."""
    from radfusion.cli.demo import (
        SURVIVAL,
        SURVIVAL_MODELS,
        _train_args,
        survival_summary,
    )

    for name, modalities in [
        ("survival_image_only", "[image, clinical]"),
        ("survival_genomics_only", "[genomics, clinical]"),
    ]:
        args = [str(a) for a in _train_args(SURVIVAL_MODELS[name])]
        assert args.index(str(SURVIVAL)) > args.index(
            str(CONFIGS / "experiment" / f"{name.removeprefix('survival_')}.yaml")
        )
        assert args[args.index("--model.network.modalities") + 1] == modalities
    metrics = {
        "fusion": {"auroc": 0.9, "auroc_observed": 0.9, "n_observed": 160},
        "survival_fusion": {
            "cindex": 0.68,
            "cindex_observed": 0.68,
            "cindex_image_only": 0.62,
            "cindex_genomics_only": 0.61,
            "td_auc_observed": 0.7,
            "n_observed": 161,
        },
        "survival_image_only": {"cindex": 0.63, "cindex_observed": 0.63, "n_observed": 161},
        "survival_genomics_only": {"cindex": 0.6, "cindex_observed": 0.6, "n_observed": 161},
    }
    assert survival_summary(metrics) == {
        "cindex": {"survival_fusion": 0.68, "survival_image_only": 0.63, "survival_genomics_only": 0.6},
        "cindex_survival_fusion_by_presence": {"observed": 0.68, "image_only": 0.62, "genomics_only": 0.61},
        "n_test_survival": 161,
    }
