"""Every cohort shape trains, exports and scores: image + omics, omics only (no dicom/
folder), image only (no genomics table) and clinical only (neither), each with the
experiment config a user would pick (configs/experiment/*.yaml).

The data module is checked on each shape without training (fast); the slow test trains
each shape on the tiny cohort, exports it and scores every case with the scorer that
fits the shape (the archive for a model with an image, the patients table otherwise)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.paths import CONFIGS
from tests.support.tiny import TINY_TARGET_SHAPE, TINY_TARGET_SPACING
from tests.support.tiny_training import train_tiny

GENOMICS_FILES = ("genomics.parquet", "genomics.csv", "omics")


@dataclass(frozen=True)
class Shape:
    removed: tuple[str, ...]  # what the cohort folder lacks
    experiment: str | None  # configs/experiment/<file>, None: the default fusion model
    modalities: list[str]  # the data module's presence-mask order
    trained: list[str]  # the exported contract's trained_modalities

    @property
    def has_image(self) -> bool:
        return "dicom" not in self.removed


SHAPES = {
    "image_omics": Shape((), None, ["image", "expression", "mutation"], ["image", "genomics"]),
    "omics_only": Shape(("dicom",), "genomics_only.yaml", ["image", "expression", "mutation"], ["genomics"]),
    "image_only": Shape(GENOMICS_FILES, "image_only.yaml", ["image"], ["image"]),
    "clinical_only": Shape(("dicom", *GENOMICS_FILES), "clinical_only.yaml", ["image", "clinical"], ["clinical"]),
}
# configs/experiment/clinical_only.yaml's covariates.
CLINICAL = dict(clinical_numeric=("age",), clinical_categorical=("treatment", "sex", "site"))


def _cohort(tiny_cohort: Path, folder: Path, shape: Shape) -> Path:
    cohort = Path(shutil.copytree(tiny_cohort, folder, ignore=shutil.ignore_patterns(".radfusion")))
    for name in shape.removed:
        path = cohort / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return cohort


@pytest.fixture(scope="module")
def cohorts(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    return {name: _cohort(tiny_cohort, root / name, shape) for name, shape in SHAPES.items()}


@pytest.mark.parametrize("name", SHAPES)
def test_the_data_module_takes_each_shape(name: str, cohorts, tiny_cohort: Path) -> None:
    from radfusion.genomics import load_genomics_table
    from radfusion.training.data import RadfusionDataModule

    shape, cohort = SHAPES[name], cohorts[name]
    dm = RadfusionDataModule(
        str(cohort),
        target_shape=TINY_TARGET_SHAPE,
        target_spacing=TINY_TARGET_SPACING,
        cache="none",
        **(CLINICAL if name == "clinical_only" else {}),
    )
    dm.setup("fit")
    assert dm.modalities == shape.modalities
    records = [r for part in ("train", "val", "test") for r in dm.records[part]]
    assert len(records) == 10  # every patient with an outcome, whatever the cohort lacks
    presence = pd.DataFrame(
        [r["presence"] for r in records], columns=dm.modalities, index=[r["patient_id"] for r in records]
    )
    assert (presence["image"] == float(shape.has_image)).all()
    assert all(bool(r["image"]) == shape.has_image for r in records)
    if "expression" in dm.modalities:
        with_genes = set(load_genomics_table(tiny_cohort / "genomics.parquet").index)
        assert (presence["expression"] == presence.index.isin(with_genes)).all() and 0 < len(with_genes) < 10
    else:
        assert dm.omics_sizes == {} and all(r["genomics"].size == 0 for r in records)
    if "clinical" in dm.modalities:
        assert (presence["clinical"] == 1).all() and dm.n_clinical == len(dm.clinical.features)
        assert dm.clinical.covariates == ["age", "sex", "site", "treatment"]
    else:
        assert dm.n_clinical == 0 and dm.clinical is None
    assert len(dm.cohort_hash) > 0  # hashes what the cohort has, without the folders it lacks


@pytest.mark.slow
@pytest.mark.parametrize("name", SHAPES)
def test_each_shape_trains_exports_and_scores(name: str, cohorts, tmp_path: Path) -> None:
    from radfusion.contract import read_contract_from_onnx
    from radfusion.serving.scoring.score import score_archive
    from radfusion.serving.scoring.table import score_table
    from radfusion.training.export import export

    shape, cohort = SHAPES[name], cohorts[name]
    extra = ["--config", str(CONFIGS / "experiment" / shape.experiment)] if shape.experiment else []
    checkpoint = train_tiny(cohort, tmp_path / "run", *extra, "--data.cache", "none")
    model = tmp_path / "model.onnx"
    report = export(checkpoint, model)
    assert report["onnx_max_abs_diff"] <= report["parity_tolerance"]
    contract = read_contract_from_onnx(model)
    assert contract.trained_modalities == shape.trained
    assert contract.uses_image == shape.has_image
    assert contract.uses_genomics == ("genomics" in shape.trained)
    assert contract.uses_clinical == (name == "clinical_only")

    out = tmp_path / "scores.parquet"
    tables = {"genomics": cohort / "genomics.parquet" if contract.uses_genomics else None}
    tables["clinical"] = cohort / "clinical.csv" if contract.uses_clinical else None
    common = dict(device="cpu", progress=False)
    if shape.has_image:
        summary = score_archive(cohort / "dicom", model, out, workers=0, **tables, **common)
    else:
        summary = score_table(model, out, **tables, **common)
    rows = pd.read_parquet(out)
    expected_rows = 8 if name == "omics_only" else 10  # omics only: the genomics table's patients
    assert len(rows) == expected_rows and summary["failed"] == 0 and rows["error"].isna().all()
    assert np.isfinite(rows["prob_responder"]).all()
    used = {m for text in rows["modalities_used"] for m in text.split("+")}
    assert used == {m for m in shape.modalities if contract.trains(m)}
    assert (rows["imputed_features"] == 0).all()  # the tiny cohort's tables have no gaps
