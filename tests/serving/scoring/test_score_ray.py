"""``--engine ray`` on a local Ray instance: the same rows as the local engine, and the
same resume behaviour (it writes through the same PartWriter)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from radfusion.serving.scoring.ray_engine import RayEngine
from radfusion.serving.scoring.rows import TIMING_COLUMNS
from radfusion.serving.scoring.score import score_archive

ray = pytest.importorskip("ray", reason="Ray is in the `cluster` extra (scripts/bootstrap.sh installs it)")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


def results(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path).drop(columns=list(TIMING_COLUMNS)).set_index("study_instance_uid")


def test_ray_engine_gives_the_local_engine_rows(
    local_ray, tiny_cohort: Path, tiny_onnx_model: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(RayEngine, "CHUNK", 4)  # three Ray Data pipelines, one after the other
    args = dict(genomics=tiny_cohort / "genomics.parquet", device="cpu", progress=False, batch_size=4)
    local = score_archive(tiny_cohort / "dicom", tiny_onnx_model, tmp_path / "local.parquet", workers=0, **args)
    on_ray = score_archive(
        tiny_cohort / "dicom",
        tiny_onnx_model,
        tmp_path / "ray.parquet",
        engine="ray",
        ray_actors=1,
        chunk_size=3,
        **args,
    )
    assert on_ray["engine"] == "ray"
    assert (on_ray["studies"], on_ray["scored"], on_ray["processed_this_run"]) == (
        local["studies"],
        local["scored"],
        10,
    )
    pd.testing.assert_frame_equal(results(tmp_path / "ray.parquet"), results(tmp_path / "local.parquet"), atol=1e-6)

    again = score_archive(tiny_cohort / "dicom", tiny_onnx_model, tmp_path / "ray.parquet", engine="ray", **args)
    assert (again["processed_this_run"], again["taken_from_earlier_runs"]) == (0, 10)


def test_ray_engine_joins_clinical_covariates_like_the_local_engine(
    local_ray, tiny_cohort: Path, tiny_contract, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The lookup runs in the driver; each Ray task gets its patient's PatientData."""
    from tests.support.clinical_models import clinical_models, read_clinical_csv

    model, _ = clinical_models(tiny_cohort, tiny_contract, tmp_path_factory.getbasetemp() / "clinical_models")
    table = read_clinical_csv(tiny_cohort / "clinical.csv")
    absent = sorted(table.index)[0]
    clinical = tmp_path / "clinical.parquet"
    table.drop(index=absent).reset_index().to_parquet(clinical)
    args = dict(
        genomics=tiny_cohort / "genomics.parquet", clinical=clinical, device="cpu", progress=False, batch_size=4
    )
    score_archive(tiny_cohort / "dicom", model, tmp_path / "local.parquet", workers=0, **args)
    on_ray = score_archive(tiny_cohort / "dicom", model, tmp_path / "ray.parquet", engine="ray", **args)
    assert on_ray["clinical_source"] == {"clinical table": 9, "patient not in the clinical table": 1}
    rows = results(tmp_path / "ray.parquet")
    pd.testing.assert_frame_equal(rows, results(tmp_path / "local.parquet"), atol=1e-6)
    assert rows["modalities_used"].str.endswith("+clinical").sum() == 9
