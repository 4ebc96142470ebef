"""Models with a clinical block, exported from the tiny contract, and the cohort's clinical table."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from radfusion.contract import ClinicalSpec, ModelContract, write_contract_to_onnx
from radfusion.preprocess import fit_clinical_spec

COVARIATES = dict(numeric=["age"], categorical=["sex", "treatment"], treatment="treatment")


def read_clinical_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"patient_id": str}).set_index("patient_id")


def clinical_models(tiny_cohort: Path, tiny_contract: ModelContract, folder: Path) -> tuple[Path, Path]:
    """(lenient, strict): one tiny FusionNet with a clinical block, exported once per
    session; ``strict`` is the same network under a contract where clinical may not be
    missing. Shared with test_pacs_pipeline.py through ``folder``."""
    from radfusion.training.export import export_onnx
    from tests.support.tiny import tiny_net

    lenient, strict = folder / "clinical.onnx", folder / "clinical-strict.onnx"
    if lenient.exists() and strict.exists():
        return lenient, strict
    folder.mkdir(parents=True, exist_ok=True)
    spec: ClinicalSpec = fit_clinical_spec(read_clinical_csv(tiny_cohort / "clinical.csv"), **COVARIATES)
    contract = ModelContract(
        **{
            **tiny_contract.__dict__,
            "name": "tiny-clinical",
            "clinical": spec,
            "trained_modalities": ["image", "genomics", "clinical"],
            "may_be_missing": ["image", "genomics", "clinical"],
        }
    )
    export_onnx(tiny_net(contract, seed=3), contract, lenient)
    shutil.copyfile(lenient, strict)
    write_contract_to_onnx(strict, ModelContract(**{**contract.__dict__, "may_be_missing": ["image", "genomics"]}))
    return lenient, strict
