"""One study from files to the model's image tensor: group headers, choose the main
series by the contract's rules, build the volume (repairing geometry within the
contract's limits), preprocess. Used by training, the HTTP service and the archive
scorer alike, so all three see the same pixels. The result says which series was
chosen and why (``selection``) and what geometry was repaired (``corrections``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from radfusion.contract import ImageGeometry
from radfusion.dicom import load_volume, select_series
from radfusion.dicom.discover import NOT_AN_IMAGE, InstanceHeader, read_headers
from radfusion.dicom.geometry import GeometryPolicy
from radfusion.dicom.series import SelectionRules
from radfusion.dicom.sources import list_inputs
from radfusion.errors import CorruptDicomError, NoImageSeriesError
from radfusion.preprocess import grid_to_patient, preprocess_image


@dataclass
class StudyImage:
    study_uid: str
    patient_id: str
    series_uid: str
    sop_uids: list[str]
    image: np.ndarray  # (1, D, H, W) float32 on the contract grid
    series_reason: str
    skipped: list[str] = field(default_factory=list)
    # SeriesChoice.to_record(): the chosen series, the rules, every series' fate.
    selection: dict = field(default_factory=dict)
    corrections: list[str] = field(default_factory=list)
    # Model-grid index (slice, row, col, 1) -> patient mm (LPS): where a location
    # found on the image tensor lies in the source series (preprocess.grid_to_patient).
    grid_affine: np.ndarray | None = None

    @property
    def rejected_summary(self) -> str:
        """Every series that was not chosen, by SeriesNumber (never by description, which
        is free text), with its outcome: "series 1: localizer image type ...; ..." """
        return "; ".join(
            f"series {c['series_number'] if c['series_number'] is not None else '?'}: {c['outcome']}"
            for c in self.selection.get("candidates", [])
            if c["outcome"] != "chosen"
        )


def study_image_from_headers(headers: list[InstanceHeader], geometry: ImageGeometry) -> StudyImage:
    if not headers:
        raise CorruptDicomError("no readable DICOM instances")
    studies = {h.study_uid for h in headers}
    if len(studies) > 1:
        raise NoImageSeriesError(f"input holds {len(studies)} studies; send one study at a time")
    choice = select_series(headers, rules=SelectionRules.from_geometry(geometry))
    volume = load_volume([h.path for h in choice.instances], GeometryPolicy.from_geometry(geometry))
    canonical = volume.canonical()  # once: both below reuse it without another copy
    image = preprocess_image(canonical, geometry)
    first = choice.instances[0]
    return StudyImage(
        study_uid=first.study_uid,
        patient_id=first.patient_id,
        series_uid=choice.series_uid,
        sop_uids=volume.sop_uids,
        image=image,
        series_reason=choice.reason,
        selection=choice.to_record(),
        corrections=volume.corrections,
        grid_affine=grid_to_patient(canonical, geometry),
    )


def read_study_image(paths: Sequence[Path] | Path, geometry: ImageGeometry) -> StudyImage:
    """``paths``: the study's files, or a folder, zip archive or DICOMDIR holding
    exactly one study."""
    if isinstance(paths, (str, Path)):
        files, skipped_inputs = list_inputs(Path(paths))
    else:
        files, skipped_inputs = [Path(p) for p in paths], []
    headers, skipped = read_headers(files)
    if not headers and any(why.startswith(NOT_AN_IMAGE) for _, why in skipped):
        raise NoImageSeriesError(f"no image instances: {len(skipped)} file(s) skipped, e.g. {skipped[0][1]}")
    study = study_image_from_headers(headers, geometry)
    study.skipped = [f"{path.name}: {why}" for path, why in skipped_inputs + skipped]
    return study
