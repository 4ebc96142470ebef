"""Choose the main image series of a study: skip localizers, scouts, secondary
captures, derived images and series too short to be a volume, then prefer the series
with most slices and, among equals, the thinnest slices. The choice says why."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from radfusion.dicom.discover import SECONDARY_CAPTURE_PREFIX, InstanceHeader
from radfusion.errors import NoImageSeriesError, WrongModalityError

_NEVER_MAIN = ("LOCALIZER", "SCOUT", "DERIVED", "SECONDARY", "PROJECTION IMAGE")


@dataclass
class SeriesChoice:
    series_uid: str
    instances: list[InstanceHeader]
    reason: str
    rejected: dict[str, str] = field(default_factory=dict)


def select_series(
    instances: list[InstanceHeader],
    modalities: tuple[str, ...] = ("CT",),
    min_slices: int = 8,
) -> SeriesChoice:
    by_series: dict[str, list[InstanceHeader]] = defaultdict(list)
    for inst in instances:
        by_series[inst.series_uid].append(inst)

    rejected: dict[str, str] = {}
    candidates: list[tuple[str, list[InstanceHeader]]] = []
    wrong_modality: set[str] = set()
    for uid, members in by_series.items():
        reason = _rejection(members, modalities, min_slices)
        if reason is None:
            candidates.append((uid, members))
            continue
        rejected[uid] = reason
        if reason.startswith("modality"):
            wrong_modality.add(members[0].modality)

    if not candidates:
        if wrong_modality:
            raise WrongModalityError(
                f"study has modality {sorted(wrong_modality)}, model accepts {list(modalities)}"
            )
        summary = "; ".join(sorted(set(rejected.values()))) or "no instances"
        raise NoImageSeriesError(f"no usable image series ({summary})")

    def rank(item: tuple[str, list[InstanceHeader]]):
        _, members = item
        n = _slice_count(members)
        thickness = min((m.slice_thickness or 1e9) for m in members)
        return (-n, thickness, item[0])

    candidates.sort(key=rank)
    uid, members = candidates[0]
    n = _slice_count(members)
    reason = f"{members[0].modality} series with {n} slices"
    if len(candidates) > 1:
        reason += f", most slices / thinnest of {len(candidates)} candidates"
    return SeriesChoice(series_uid=uid, instances=members, reason=reason, rejected=rejected)


def _slice_count(members: list[InstanceHeader]) -> int:
    return sum(m.n_frames for m in members)


def _rejection(members: list[InstanceHeader], modalities: tuple[str, ...], min_slices: int) -> str | None:
    first = members[0]
    if not any(m.has_image for m in members):
        return "no pixel data (not an image series)"
    if first.sop_class_uid.startswith(SECONDARY_CAPTURE_PREFIX):
        return "secondary capture"
    kinds = {word for m in members for word in m.image_type}
    for word in _NEVER_MAIN:
        if word in kinds:
            return f"{word.lower()} image type (localizer/scout/derived)"
    if first.modality not in modalities:
        return f"modality {first.modality or 'missing'} not accepted"
    n = _slice_count(members)
    if n < min_slices:
        return f"only {n} slice(s), fewer than {min_slices}"
    return None
