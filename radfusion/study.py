"""One study from files to the model's image tensor: group headers, choose the main
series, build the volume, preprocess. Used by training, the HTTP service and the
archive scorer alike, so all three see the same pixels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from radfusion.contract import ImageGeometry
from radfusion.dicom import load_volume, select_series
from radfusion.dicom.discover import InstanceHeader, iter_files, read_headers
from radfusion.errors import CorruptDicomError, NoImageSeriesError
from radfusion.preprocess import preprocess_image


@dataclass
class StudyImage:
    study_uid: str
    patient_id: str
    series_uid: str
    sop_uids: list[str]
    image: np.ndarray  # (1, D, H, W) float32 on the contract grid
    series_reason: str
    skipped: list[str] = field(default_factory=list)


def study_image_from_headers(headers: list[InstanceHeader], geometry: ImageGeometry) -> StudyImage:
    if not headers:
        raise CorruptDicomError("no readable DICOM instances")
    studies = {h.study_uid for h in headers}
    if len(studies) > 1:
        raise NoImageSeriesError(f"input holds {len(studies)} studies; send one study at a time")
    choice = select_series(headers, modalities=geometry.modalities, min_slices=geometry.min_slices)
    volume = load_volume([h.path for h in choice.instances])
    image = preprocess_image(volume, geometry)
    first = choice.instances[0]
    return StudyImage(
        study_uid=first.study_uid,
        patient_id=first.patient_id,
        series_uid=choice.series_uid,
        sop_uids=volume.sop_uids,
        image=image,
        series_reason=choice.reason,
    )


def read_study_image(paths: Sequence[Path] | Path, geometry: ImageGeometry) -> StudyImage:
    """``paths``: the study's files, or a folder holding exactly one study."""
    if isinstance(paths, (str, Path)):
        files = iter_files(Path(paths))  # a folder's files, or [paths] for one file
    else:
        files = [Path(p) for p in paths]
    headers, skipped = read_headers(files)
    study = study_image_from_headers(headers, geometry)
    study.skipped = [f"{path.name}: {why}" for path, why in skipped]
    return study

