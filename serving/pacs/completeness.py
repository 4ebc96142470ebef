"""Whether a received study is complete enough to score.

The quiet period alone cannot tell "the PACS has sent everything" from "the PACS could
not reach us": after an outage the first half of a study looks as quiet as a whole one.
So each instance's header is asked what it says about its series, at the moment it is
stored (``hints_of``, kept in the listener's state), and a quiet study is complete only
when no series visibly misses instances (``assess``):

* ImagesInAcquisition: fewer instances of that acquisition than it declares;
* NumberOfSlices (x NumberOfTimeSlices), for single-frame PET/NM series;
* NumberOfTemporalPositions: a temporal position with no instance;
* InstanceNumber: distinct numbers with holes between 1 and the highest;
* ImagePositionPatient: a stack whose slice steps skip one or more slices.

Headers are not always right (a deleted slice, numbering that skips), so the pipeline
waits for the missing instances up to a bounded time and then scores what it has,
saying so in the SR. Instances received but no longer on disk (deleted after the
retention period) are counted apart: a study is never scored from part of what was
received."""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from radfusion.errors import RadfusionInputError

# A declared count beyond this is a damaged header, not a series to wait for.
_MAX_DECLARED = 100_000
# Position steps longer than this many median steps are gaps.
_GAP_FACTOR = 1.5


class IncompleteStudyError(RadfusionInputError):
    """Instances of the study that were received are no longer on disk (deleted after
    the listener's retention period) and were not sent again: scoring the rest would
    answer for part of the study. The PACS should send the whole study again."""

    kind = "study_incomplete"
    http_status = 422


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        number = int(value) if value is not None and value != "" else None
    except Exception:  # noqa: BLE001 - a damaged element is no hint
        return None
    return number if number is not None and 0 <= number <= _MAX_DECLARED else None


def _floats(ds: Dataset, keyword: str, n: int) -> list[float] | None:
    try:
        values = [float(v) for v in ds.get(keyword) or []]
    except Exception:  # noqa: BLE001 - a damaged element is no hint
        return None
    return values if len(values) == n and all(math.isfinite(v) for v in values) else None


def _stack(ds: Dataset) -> tuple[str, float] | None:
    """(orientation key, position along the slice normal in mm) of a single-frame image."""
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    position = _floats(ds, "ImagePositionPatient", 3)
    if orientation is None or position is None:
        return None
    r, c = orientation[:3], orientation[3:]
    normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    if not 0.5 < math.hypot(*normal) < 1.5:
        return None
    along = sum(p * n for p, n in zip(position, normal, strict=True))
    return ",".join(f"{v:.2f}" for v in orientation), round(along, 2)


def hints_of(ds: Dataset) -> dict[str, Any]:
    """What one instance's header says about its series (JSON-ready; absent or damaged
    elements are left out). Never raises: any byte sequence gives a (maybe empty) dict."""
    hints: dict[str, Any] = {}
    try:
        for key, keyword in (
            ("series_number", "SeriesNumber"),
            ("number", "InstanceNumber"),
            ("acquisition", "AcquisitionNumber"),
            ("images_in_acquisition", "ImagesInAcquisition"),
            ("slices", "NumberOfSlices"),
            ("time_slices", "NumberOfTimeSlices"),
            ("temporal_positions", "NumberOfTemporalPositions"),
            ("temporal_position", "TemporalPositionIdentifier"),
            ("frames", "NumberOfFrames"),
        ):
            value = _int(ds, keyword)
            if value is not None:
                hints[key] = value
        if hints.get("frames", 1) <= 1 and (stack := _stack(ds)) is not None:
            hints["orientation"], hints["position"] = stack
    except Exception:  # noqa: BLE001 - hints are optional; the instance is stored all the same
        return {}
    return hints


@dataclass(frozen=True)
class ReceivedInstance:
    series_uid: str
    hints: dict[str, Any]
    on_disk: bool


@dataclass(frozen=True)
class Completeness:
    received: int
    missing_declared: int  # instances the headers say exist that never arrived
    missing_files: int  # received instances no longer on disk
    reasons: tuple[str, ...]  # one per incomplete series; no identifiers

    @property
    def complete(self) -> bool:
        return self.missing_declared == 0 and self.missing_files == 0

    def note(self) -> str:
        """For the SR and the log."""
        parts = []
        if self.missing_declared:
            parts.append(
                f"{self.missing_declared} instance(s) the headers declare never arrived ({'; '.join(self.reasons)})"
            )
        if self.missing_files:
            parts.append(f"{self.missing_files} of {self.received} received instance(s) are no longer on disk")
        return "; ".join(parts) or "complete"


def _declared_missing(group: list[dict[str, Any]], study_acquisitions: dict[int | None, int]) -> tuple[int, str]:
    """ImagesInAcquisition and NumberOfSlices: the series' declared size."""
    missing, why = 0, ""
    by_acquisition: dict[int | None, int] = defaultdict(int)
    declared: dict[int | None, int] = {}
    for h in group:
        by_acquisition[h.get("acquisition")] += 1
        if "images_in_acquisition" in h:
            key = h.get("acquisition")
            declared[key] = max(declared.get(key, 0), h["images_in_acquisition"])
    for key, expected in declared.items():
        # An acquisition reconstructed into several series may count all of them.
        have = max(by_acquisition[key], study_acquisitions.get(key, 0))
        if expected - have > missing:
            missing, why = expected - have, f"ImagesInAcquisition {expected}"
    single = [h for h in group if h.get("frames", 1) <= 1]
    slices = max((h.get("slices", 0) * max(h.get("time_slices", 1), 1) for h in single), default=0)
    if slices > len(single) and slices - len(single) > missing:
        missing, why = slices - len(single), f"NumberOfSlices {slices}"
    return missing, why


def _temporal_missing(group: list[dict[str, Any]]) -> tuple[int, str]:
    declared = max((h.get("temporal_positions", 0) for h in group), default=0)
    seen = {h["temporal_position"] for h in group if "temporal_position" in h}
    if declared <= 1 or not seen:
        return 0, ""
    absent = set(range(1, declared + 1)) - seen
    per_position = max(1, len(group) // len(seen))
    return len(absent) * per_position, f"temporal positions {len(seen)} of {declared}"


def _numbering_missing(group: list[dict[str, Any]]) -> tuple[int, str]:
    numbers = [h.get("number") for h in group]
    if None in numbers or len(set(numbers)) != len(numbers) or not numbers:
        return 0, ""  # unnumbered, or numbered per acquisition: no evidence either way
    distinct = {n for n in numbers if n is not None}
    highest, lowest = max(distinct), min(distinct)
    start = 1 if lowest >= 1 else lowest
    holes = (highest - start + 1) - len(distinct)
    if holes <= 0 or highest > 5 * len(distinct) + 10:  # sparse numbering is a scheme, not loss
        return 0, ""
    return holes, f"instance numbers {start}-{highest} with {holes} missing"


def _positions_missing(group: list[dict[str, Any]]) -> tuple[int, str]:
    stacks: dict[str, set[float]] = defaultdict(set)
    for h in group:
        if "orientation" in h and "position" in h:
            stacks[h["orientation"]].add(h["position"])
    missing = 0
    for positions in stacks.values():
        if len(positions) < 3:
            continue
        ordered = sorted(positions)
        steps = [b - a for a, b in itertools.pairwise(ordered)]
        step = statistics.median(steps)
        regular = sum(abs(s - step) <= 0.1 * step for s in steps)
        if step <= 0.01 or 2 * regular < len(steps):
            continue  # no typical step: the spacing is irregular, not gapped
        missing += sum(round(s / step) - 1 for s in steps if s > _GAP_FACTOR * step)
    return missing, f"slice positions with {missing} gap(s)" if missing else ""


def assess(instances: Sequence[ReceivedInstance] | Iterable[ReceivedInstance]) -> Completeness:
    instances = list(instances)
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    study_acquisitions: dict[int | None, int] = defaultdict(int)
    for instance in instances:
        series[instance.series_uid].append(instance.hints)
        study_acquisitions[instance.hints.get("acquisition")] += 1
    missing, reasons = 0, []
    for index, group in enumerate(series.values(), start=1):
        found = max(
            (
                _declared_missing(group, study_acquisitions),
                _temporal_missing(group),
                _numbering_missing(group),
                _positions_missing(group),
            ),
            key=lambda pair: pair[0],
        )
        if found[0]:
            number = next((h["series_number"] for h in group if "series_number" in h), None)
            name = f"series {number}" if number is not None else f"series #{index}"
            missing += found[0]
            reasons.append(f"{name}: {len(group)} received, {found[1]}")
    return Completeness(
        received=len(instances),
        missing_declared=missing,
        missing_files=sum(not i.on_disk for i in instances),
        reasons=tuple(reasons),
    )
