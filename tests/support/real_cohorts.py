"""Real public survival cohorts, bundled with scikit-survival and lifelines (no
download), written as radfusion cohort folders with their values untouched: missing
values stay missing, odd and rare category levels stay as they are.

A cohort folder holds ``clinical.csv`` (patient_id, the clinical covariates, ``time``
and ``event``) and, for an omics cohort, ``genomics.parquet`` (patient_id index, one
column per gene); no ``dicom/`` folder (no image modality). ``RealCohort.cli_args``
gives the LightningCLI data arguments that train a survival model on it (with
configs/experiment/survival_cox.yaml)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Source:
    """One bundled dataset: covariates as they come, genes (omics cohorts) and outcome."""

    covariates: pd.DataFrame
    genes: pd.DataFrame | None
    time: np.ndarray
    event: np.ndarray
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]


@dataclass(frozen=True)
class RealCohort:
    name: str
    path: Path
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    omics: bool
    n_patients: int
    n_events: int

    @property
    def modalities(self) -> list[str]:
        return ["genomics", "clinical"] if self.omics else ["clinical"]

    def cli_args(self) -> list[str]:
        """Data and modality arguments for `radfusion train`/`cv` (task from a config)."""
        return [
            "--data.cohort_dir",
            str(self.path),
            "--data.target",
            "event",
            "--data.labels",
            "[censored, event]",
            "--data.time_column",
            "time",
            "--data.event_column",
            "event",
            "--data.clinical_numeric",
            json.dumps(list(self.numeric)),
            "--data.clinical_categorical",
            json.dumps(list(self.categorical)),
            "--data.cache",
            "none",
            "--model.network.modalities",
            json.dumps(self.modalities),
        ]


def _sksurv(loader: str) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    from sksurv import datasets

    x, y = getattr(datasets, loader)()
    event_field, time_field = y.dtype.names
    return x, y[time_field].astype(np.float64), y[event_field].astype(np.int64)


def breast_cancer() -> Source:
    """198 patients, 51 distant metastases; 76 expression probes, age, size, grade
    (with a 2-patient level spelled "unkown") and oestrogen receptor status."""
    x, time, event = _sksurv("load_breast_cancer")
    genes = [c for c in x.columns if c.startswith("X")]
    clinical = ["age", "size", "grade", "er"]
    return Source(x[clinical], x[genes], time, event, ("age", "size"), ("grade", "er"))


def gbsg2() -> Source:
    """German Breast Cancer Study Group 2: 686 patients, 299 recurrences, clinical only."""
    x, time, event = _sksurv("load_gbsg2")
    numeric = ("age", "estrec", "pnodes", "progrec", "tsize")
    categorical = ("horTh", "menostat", "tgrade")
    return Source(x[[*numeric, *categorical]], None, time, event, numeric, categorical)


def veterans() -> Source:
    """Veterans' Administration lung cancer trial: 137 patients, 128 deaths, clinical only."""
    x, time, event = _sksurv("load_veterans_lung_cancer")
    numeric = ("Age_in_years", "Karnofsky_score", "Months_from_Diagnosis")
    categorical = ("Celltype", "Prior_therapy", "Treatment")
    return Source(x[[*numeric, *categorical]], None, time, event, numeric, categorical)


def lung() -> Source:
    """NCCTG advanced lung cancer (lifelines): 228 patients, 165 deaths, with its gaps
    (meal.cal 47, wt.loss 14, pat.karno 3, ph.ecog and ph.karno 1 missing) and a
    1-patient ECOG level. The institution code is a site, not a covariate: left out."""
    from lifelines.datasets import load_lung

    table = load_lung()
    numeric = ("age", "ph.karno", "pat.karno", "meal.cal", "wt.loss")
    categorical = ("sex", "ph.ecog")
    return Source(
        table[[*numeric, *categorical]],
        None,
        table["time"].to_numpy(np.float64),
        table["status"].to_numpy(np.int64),
        numeric,
        categorical,
    )


DATASETS: dict[str, Callable[[], Source]] = {
    "breast_cancer": breast_cancer,
    "gbsg2": gbsg2,
    "veterans": veterans,
    "lung": lung,
}


def write_cohort(name: str, out: Path) -> RealCohort:
    """The dataset ``name`` as a cohort folder ``out`` (created)."""
    source = DATASETS[name]()
    out.mkdir(parents=True, exist_ok=True)
    ids = [f"p{i:04d}" for i in range(len(source.time))]
    clinical = source.covariates.reset_index(drop=True).copy()
    clinical.insert(0, "patient_id", ids)
    clinical["time"] = source.time
    clinical["event"] = source.event
    clinical.to_csv(out / "clinical.csv", index=False)
    if source.genes is not None:
        genes = source.genes.reset_index(drop=True).copy()
        genes.index = pd.Index(ids, name="patient_id")
        genes.to_parquet(out / "genomics.parquet")
    return RealCohort(
        name=name,
        path=out,
        numeric=source.numeric,
        categorical=source.categorical,
        omics=source.genes is not None,
        n_patients=len(ids),
        n_events=int(source.event.sum()),
    )
