"""One study from files to the model's image tensor: group headers, choose the main
series by the contract's rules, build the volume (repairing geometry within the
contract's limits), preprocess. Used by training, the HTTP service and the archive
scorer alike, so all three see the same pixels. The result says which series was
chosen and why (``selection``) and what geometry was repaired (``corrections``).

``read_study_image`` is the boundary of the reading path: whatever the bytes, it
raises only RadfusionInputError subclasses (radfusion.errors.input_error maps what
nothing below anticipated), and it spends the study's budget (radfusion.limits) before
each piece of work: files and stored bytes before headers are read, decoded bytes
before pixels are decoded, voxels before resampling, wall time between files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import Dataset

from radfusion.contract import ImageGeometry
from radfusion.dicom import load_volume, select_series
from radfusion.dicom.checks import DECODED_VALUE_BYTES, check_counts
from radfusion.dicom.discover import NOT_AN_IMAGE, UNREADABLE, InstanceHeader, read_headers
from radfusion.dicom.geometry import GeometryPolicy
from radfusion.dicom.series import SelectionRules
from radfusion.dicom.sources import list_inputs, stored_size
from radfusion.errors import (
    CorruptDicomError,
    GeometryError,
    MultipleStudiesError,
    NoImageSeriesError,
    RadfusionInputError,
    input_error,
)
from radfusion.limits import StudyBudget, StudyClock
from radfusion.preprocess import grid_to_patient, preprocess_image

# Unreadable files named in a "no usable series" message; the rest are counted.
_MAX_FILES_NAMED = 10


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


def study_image_from_headers(
    headers: list[InstanceHeader],
    geometry: ImageGeometry,
    clock: StudyClock | None = None,
    datasets: dict[Path, Dataset] | None = None,
) -> StudyImage:
    """``datasets``: the files already read whole (read_headers' ``keep``), by path:
    the volume reader does not read them again. Those of the series not chosen are
    dropped from it once the series is chosen."""
    clock = clock or StudyBudget().start()
    if not headers:
        raise CorruptDicomError("no readable DICOM instances")
    studies = {h.study_uid for h in headers}
    if len(studies) > 1:
        raise MultipleStudiesError(f"input holds {len(studies)} studies; send one study at a time")
    rules = SelectionRules.from_geometry(geometry)
    choice = select_series(headers, rules=rules)
    _check_series_headers(choice.instances, clock)
    if datasets:
        chosen = {h.path for h in choice.instances}
        for path in [p for p in datasets if p not in chosen]:
            del datasets[path]  # compressed pixel data is never deferred: not held for nothing
    volume = load_volume(
        [h.path for h in choice.instances],
        GeometryPolicy.from_geometry(geometry),
        clock,
        datasets=datasets,
        target_spacing=geometry.target_spacing,
    )
    if volume.shape[0] < rules.min_slices:
        # Counted again once duplicates are dropped: copies of one slice are no volume.
        raise GeometryError(
            f"only {volume.shape[0]} distinct slice position(s) in the chosen series once duplicates are"
            f" dropped; at least {rules.min_slices}"
        )
    canonical = volume.canonical()  # once: both below reuse it without another copy
    image = preprocess_image(canonical, geometry, clock)
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


def _check_series_headers(instances: list[InstanceHeader], clock: StudyClock) -> None:
    """Sizes and frame counts within BOUNDS, and what decoding them all would hold
    within the budget, from the headers alone: nothing is decoded yet."""
    for i, h in enumerate(instances, start=1):
        try:
            check_counts(h.rows, h.cols, h.n_frames)
        except CorruptDicomError as exc:
            raise CorruptDicomError(f"file {i} of {len(instances)}: {exc.message}") from exc
    clock.check_decoded(sum(h.rows * h.cols * h.n_frames * DECODED_VALUE_BYTES for h in instances))


def read_study_image(
    paths: Sequence[Path] | Path, geometry: ImageGeometry, budget: StudyBudget | None = None
) -> StudyImage:
    """``paths``: the study's files, or a folder, zip archive or DICOMDIR holding
    exactly one study. Raises only RadfusionInputError subclasses."""
    try:
        return _read_study_image(paths, geometry, (budget or StudyBudget()).start())
    except RadfusionInputError:
        raise
    except Exception as exc:  # the boundary: any input gets a specific kind, never a crash
        raise input_error(exc, "study") from exc


def _read_study_image(paths: Sequence[Path] | Path, geometry: ImageGeometry, clock: StudyClock) -> StudyImage:
    if isinstance(paths, (str, Path)):
        files, skipped_inputs = list_inputs(Path(paths))
    else:
        files, skipped_inputs = [Path(p) for p in paths], []
    clock.check_files(len(files))
    clock.check_stored(sum(stored_size(f) for f in files))
    kept: dict[Path, Dataset] = {}  # each plain file is read once: its header now, its pixels when decoded
    headers, skipped = read_headers(files, clock, keep=kept)
    try:
        if not headers and any(why.startswith(NOT_AN_IMAGE) for _, why in skipped):
            raise NoImageSeriesError(f"no image instances: {len(skipped)} file(s) skipped, e.g. {skipped[0][1]}")
        study = study_image_from_headers(headers, geometry, clock, datasets=kept)
    except (NoImageSeriesError, CorruptDicomError) as exc:
        unreadable = _unreadable_files(files, skipped)
        if not unreadable or (headers and not isinstance(exc, NoImageSeriesError)):
            raise
        raise type(exc)(f"{exc.message}; {unreadable}") from exc
    study.skipped = [f"{path.name}: {why}" for path, why in skipped_inputs + skipped]
    return study


def _unreadable_files(files: list[Path], skipped: list[tuple[Path, str]]) -> str:
    """'3 unreadable files: file 2 of 25: truncated (EOFError); ...': which of the study's
    files could not be read and why, by position (never by name), '' when none."""
    position = {path: i for i, path in enumerate(files, start=1)}
    prefix = f"{UNREADABLE}: "
    found = [
        f"file {position[path]} of {len(files)}: {why.removeprefix(prefix)}"
        for path, why in skipped
        if why.startswith(prefix) and path in position
    ]
    if not found:
        return ""
    more = len(found) - _MAX_FILES_NAMED
    named = "; ".join(found[:_MAX_FILES_NAMED]) + (f"; and {more} more" if more > 0 else "")
    return f"{len(found)} unreadable file{'s' if len(found) > 1 else ''}: {named}"
