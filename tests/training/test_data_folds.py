"""The data module's folds and its missing-data policy: folds partition the cohort,
validation never sees the test fold, and the policy is fitted on the training part only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radfusion.errors import ClinicalInputError
from radfusion.training.data import RadfusionDataModule
from radfusion.training.folds import assign_folds


def _cohort(root: Path, n: int = 60, seed: int = 0) -> Path:
    """Tables only (no dicom/): gaps in a covariate and in genes, a rare level."""
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(n)]
    clinical = pd.DataFrame(
        {
            "patient_id": ids,
            "age": np.where(rng.random(n) < 0.1, np.nan, rng.normal(60, 10, n)),
            "grade": rng.choice(["low", "high"], n),
            "response": rng.integers(0, 2, n),
        }
    )
    clinical.loc[3, "grade"] = "rare"  # seen once: merged into "other"
    clinical.to_csv(root / "clinical.csv", index=False)
    genes = pd.DataFrame(rng.normal(size=(n, 6)), index=pd.Index(ids, name="patient_id"), columns=list("ABCDEF"))
    genes.iloc[5, :2] = np.nan  # 2 of 6 missing: imputed
    genes.iloc[6, :5] = np.nan  # 5 of 6 missing: over the cap, absent
    genes.to_parquet(root / "genomics.parquet")
    return root


def _module(cohort: Path, **kwargs) -> RadfusionDataModule:
    dm = RadfusionDataModule(
        str(cohort), clinical_numeric=("age",), clinical_categorical=("grade",), cache="none", **kwargs
    )
    dm.setup()
    return dm


def _ids(dm: RadfusionDataModule, part: str) -> set[str]:
    return {r["patient_id"] for r in dm.records[part]}


def test_folds_partition_the_cohort_and_validation_never_sees_the_test_fold(tmp_path) -> None:
    cohort = _cohort(tmp_path)
    tests = []
    for fold in range(5):
        dm = _module(cohort, folds=5, fold=fold)
        train, val, test = (_ids(dm, p) for p in ("train", "val", "test"))
        assert not (train & val) and not (train & test) and not (val & test)
        assert len(train | val | test) == 60
        assert abs(len(val) - 0.25 * (60 - len(test))) <= 2  # split[1] of split[0] + split[1]
        tests.append(test)
    assert set().union(*tests) == {f"P{i:03d}" for i in range(60)} and sum(map(len, tests)) == 60
    # The module's folds are the ones radfusion.training.folds deals (what baselines use).
    table = pd.read_csv(cohort / "clinical.csv", dtype={"patient_id": str}).set_index("patient_id")
    folds = assign_folds(table, 5, 0, "response")
    assert [set(folds.index[folds == k]) for k in range(5)] == tests
    # A repeat deals other folds.
    assert _ids(_module(cohort, folds=5, fold=0, repeat=1), "test") != tests[0]


def test_the_policy_is_fitted_on_the_training_part_and_applied_to_every_record(tmp_path) -> None:
    cohort = _cohort(tmp_path)
    dm = _module(cohort, folds=5, fold=1)
    train = pd.read_csv(cohort / "clinical.csv", dtype={"patient_id": str}).set_index("patient_id")
    train = train.loc[sorted(_ids(dm, "train"))]
    assert dm.clinical is not None
    assert dm.clinical.fill["age"] == pytest.approx(float(train["age"].median()))
    assert dm.clinical.categorical["grade"] == ["high", "low", "other"]
    assert dm.n_clinical == len(dm.clinical.features) == 5  # age, age=missing, three grade levels
    records = {r["patient_id"]: r for part in ("train", "val", "test") for r in dm.records[part]}
    for record in records.values():
        assert np.isfinite(record["clinical"]).all() and np.isfinite(record["genomics"]).all()
    modalities = dm.modalities
    assert records["P005"]["presence"][modalities.index("expression")] == 1.0  # imputed
    assert records["P006"]["presence"][modalities.index("expression")] == 0.0  # over the cap
    assert records["P003"]["clinical"][dm.clinical.features.index("grade=other")] == 1.0


def test_a_cohort_without_dicom_or_genomics_sets_up(tmp_path) -> None:
    cohort = _cohort(tmp_path)
    (cohort / "genomics.parquet").unlink()
    dm = _module(cohort)
    assert dm.omics_sizes == {} and dm.modalities == ["image", "clinical"]
    assert all(r["presence"].tolist() == [0.0, 1.0] for r in dm.records["train"])
    assert dm.cohort_hash  # a cohort without some parts still has an identity


def test_a_patient_listed_twice_is_refused_by_count(tmp_path) -> None:
    cohort = _cohort(tmp_path)
    table = pd.read_csv(cohort / "clinical.csv", dtype={"patient_id": str})
    pd.concat([table, table.iloc[[4]]]).to_csv(cohort / "clinical.csv", index=False)
    with pytest.raises(ClinicalInputError, match=r"^clinical table clinical.csv lists 1 patient\(s\) more than once$"):
        _module(cohort)


def test_a_checkpoint_policy_is_adopted_not_refitted(tmp_path) -> None:
    """A model trained before a policy change keeps its own input widths: evaluation
    preprocesses with the spec the checkpoint carries."""
    from radfusion.contract import ClinicalSpec

    cohort = _cohort(tmp_path)
    table = pd.read_csv(cohort / "clinical.csv", dtype={"patient_id": str})
    table.loc[3, "grade"] = "low"  # a level that older spec knows
    table.to_csv(cohort / "clinical.csv", index=False)
    dm = RadfusionDataModule(str(cohort), clinical_numeric=("age",), clinical_categorical=("grade",), cache="none")
    older = ClinicalSpec(numeric={"age": [60.0, 10.0]}, categorical={"grade": ["high", "low"]}, fill={"age": 60.0})
    dm.adopt_policy(dm._fitted.omics, older)
    dm.setup()
    assert dm.n_clinical == 3 and dm.clinical is older  # no indicator, no "other": that spec's width
    assert all(len(r["clinical"]) == 3 for part in ("train", "val", "test") for r in dm.records[part])
