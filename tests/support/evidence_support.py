"""The cohort and trained model the evidence tests share (see conftest's
``evidence_run``): big enough that the analyses have something real to find.

1500 patients: 600 train, 150 validate (the temperature) and 750 are held out. The
held-out patients serve the calibration check: binned ECE is biased upwards by
sampling noise, and a perfectly calibrated model with these probabilities shows 0.074
on 176 patients (95%: 0.105) but about 0.03 on 750, so only at this size can "ECE <=
0.05" tell a calibrated model from a miscalibrated one. The training patients serve the
treatment effect: on 255 of them (the split this used before) the EGFR x treatment
term was too noisy for the recommendation to hold across cohort draws (treatment
accuracy 0.72-0.96 over five seeds, bench/evidence.py), and the fused model reached a
held-out AUROC of 0.77-0.88 where 600 give 0.92. Measured on 2 cores: about 4
minutes to generate and train, 2 for the analyses.

The treatment-aware configuration (configs/experiment/treatment.yaml) on a small
image grid: the planted lesion (8-36 mm radius) still spans several voxels at 9 mm."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.paths import PROJECT_ROOT as ROOT

CONFIGS = ROOT / "configs"
# RADFUSION_EVIDENCE_SEED draws another cohort (and training seed) for the same tests: the
# perturbation runs that stand in for other machines (docs/evidence.md, "Checked against the truth").
EVIDENCE_SEED = int(os.environ.get("RADFUSION_EVIDENCE_SEED", "11"))
EVIDENCE_COHORT = dict(n_patients=1500, seed=EVIDENCE_SEED, n_genes=100, n_slices=16, rows=48, cols=48, workers=2)
EVIDENCE_TRAINING = [
    "--data.target_shape",
    "[16, 32, 32]",
    "--data.target_spacing",
    "[5.0, 9.0, 9.0]",
    "--data.split",
    "[0.4, 0.1, 0.5]",
    "--data.batch_size",
    "32",
    "--model.network.embed_dim",
    "32",
    "--trainer.max_epochs",
    "20",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.callbacks",
    "null",
    "--seed_everything",
    str(EVIDENCE_SEED),
]
# Occlusion saliency costs a few hundred forward passes per study: measured on the
# first 200 held-out studies, not all 1095.
EVIDENCE_SALIENCY_CASES = 200


def train_evidence_model(root: Path, cohort: dict | None = None, training: list[str] | None = None) -> Path:
    """Generate the cohort under root/cohort and train; returns the best checkpoint.
    ``cohort``/``training``: instead of EVIDENCE_COHORT/EVIDENCE_TRAINING (bench/evidence.py
    draws other seeds)."""
    from radfusion.synth import generate_cohort
    from radfusion.training.cli import main

    path = generate_cohort(root / "cohort", **(cohort or EVIDENCE_COHORT))
    configs = ["trainer/cpu.yaml", "data/synthetic.yaml", "model/fusion_cpu.yaml", "experiment/treatment.yaml"]
    args = ["fit", *[a for c in configs for a in ("--config", str(CONFIGS / c))]]
    extra = EVIDENCE_TRAINING if training is None else training
    main([*args, "--data.cohort_dir", str(path), "--trainer.default_root_dir", str(root / "run"), *extra])
    return root / "run" / "checkpoints" / "best.ckpt"
