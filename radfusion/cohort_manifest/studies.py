"""Patients -> studies -> the main series, from DICOM headers only.

Discovery and series selection are radfusion.dicom's (the same rules the model
contract carries); this module applies them to every study of a cohort, records the
chosen series and why, the studies that have no usable series and why, and, for a
patient with several usable studies, which one is kept. Reading pixels (to check
geometry) is optional because it costs a full read of every chosen series."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from radfusion.dicom import GeometryPolicy, SelectionRules, find_studies, load_volume, select_series
from radfusion.errors import RadfusionInputError

STUDY_COLUMNS = [
    "patient_id",
    "study_uid",
    "series_uid",
    "series_reason",
    "n_slices",
    "slice_thickness",
    "selection",
    "files",
]


@dataclass
class StudyIndex:
    """``chosen``: one row per patient (STUDY_COLUMNS), the kept study. ``rejected``:
    studies without a usable series, each with its reason. ``duplicates``: patient ->
    {"kept": study_uid, "dropped": [study_uid, ...]}."""

    chosen: pd.DataFrame
    rejected: list[dict] = field(default_factory=list)
    duplicates: dict[str, dict] = field(default_factory=dict)
    skipped_files: dict[str, int] = field(default_factory=dict)
    n_studies: int = 0


log = logging.getLogger(__name__)
PROGRESS_STUDIES = 200  # studies between two progress lines


def index_cohort_studies(
    dicom_root: Path | str,
    rules: SelectionRules | None = None,
    verify_pixels: bool = False,
    policy: GeometryPolicy | None = None,
) -> StudyIndex:
    root = Path(dicom_root)
    rules = rules or SelectionRules()
    discovery = find_studies(root)
    log.info(
        "%d studies found; choosing each one's main series%s",
        len(discovery.studies),
        " (reading pixels)" if verify_pixels else "",
    )
    candidates, rejected = [], []
    for n, (uid, study) in enumerate(sorted(discovery.studies.items()), 1):
        if n % PROGRESS_STUDIES == 0:
            log.info("series chosen for %d of %d studies", n, len(discovery.studies))
        if not study.patient_id.strip():
            rejected.append(
                {
                    "study_uid": uid,
                    "patient_id": "",
                    "kind": "no_patient_id",
                    "reason": "study has no PatientID: it cannot be joined to omics or outcomes",
                }
            )
            continue
        try:
            choice = select_series(study.instances, rules=rules)
            corrections = load_volume([h.path for h in choice.instances], policy).corrections if verify_pixels else []
        except RadfusionInputError as exc:
            rejected.append({"study_uid": uid, "patient_id": study.patient_id, "kind": exc.kind, "reason": exc.message})
            continue
        record = choice.to_record()
        if verify_pixels:
            record["corrections"] = corrections
        candidates.append(
            {
                "patient_id": study.patient_id,
                "study_uid": uid,
                "series_uid": choice.series_uid,
                "series_reason": choice.reason,
                "n_slices": int(record["n_slices"]),
                "slice_thickness": record["slice_thickness"],
                "selection": json.dumps(record, sort_keys=True),
                "files": sorted(str(h.path.relative_to(root)) for h in choice.instances),
            }
        )
    chosen, duplicates = _one_study_per_patient(pd.DataFrame(candidates, columns=STUDY_COLUMNS))
    skipped = Counter(why for _, why in discovery.skipped)
    return StudyIndex(chosen, rejected, duplicates, dict(sorted(skipped.items())), len(discovery.studies))


def _one_study_per_patient(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Keep the study whose main series has the most slices, then the thinnest
    slices, then the smallest StudyInstanceUID (deterministic for any file order)."""
    thickness = table["slice_thickness"].astype(float).fillna(float("inf"))
    ordered = (
        table.assign(_neg=-table["n_slices"], _thick=thickness)
        .sort_values(["patient_id", "_neg", "_thick", "study_uid"])
        .drop(columns=["_neg", "_thick"])
    )
    duplicates = {
        pid: {"kept": group["study_uid"].iloc[0], "dropped": group["study_uid"].iloc[1:].tolist()}
        for pid, group in ordered.groupby("patient_id", sort=True)
        if len(group) > 1
    }
    return ordered.drop_duplicates("patient_id", keep="first").set_index("patient_id"), duplicates
