"""Choose the main image series of a study by configurable rules.

Localizers, scouts, secondary captures, derived images and objects without pixels are
never chosen (their ImageType or SOP class says what they are). The remaining series
must match the rules (modality, acquisition plane, minimum slice count, a
SeriesDescription pattern); among those the thinnest slices win (then the most
slices), or the most slices (then the thinnest) when the rules say so. The choice is a
structured record saying which series was chosen, why, and why every other was not,
so the cohort manifest and the archive scorer can store it as it is."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np

from radfusion.dicom.discover import SECONDARY_CAPTURE_PREFIX, InstanceHeader
from radfusion.errors import NoImageSeriesError, WrongModalityError

_NEVER_MAIN = ("LOCALIZER", "SCOUT", "DERIVED", "SECONDARY", "PROJECTION IMAGE")
PLANES = ("axial", "coronal", "sagittal")
PREFERENCES = ("thinnest", "most_slices")
# Patient axis (x, y, z) that a plane's slice normal runs along.
_PLANE_OF_AXIS = {0: "sagittal", 1: "coronal", 2: "axial"}


@dataclass(frozen=True)
class SelectionRules:
    """What makes a series the main one. ``description`` is a regular expression
    searched (case-insensitively) in SeriesDescription; empty accepts any."""

    modalities: tuple[str, ...] = ("CT",)
    min_slices: int = 8
    plane: str | None = None  # "axial" | "coronal" | "sagittal" | None (any)
    description: str = ""
    prefer: str = "thinnest"  # "thinnest" | "most_slices"

    def __post_init__(self) -> None:
        if self.plane is not None and self.plane not in PLANES:
            raise ValueError(f"plane must be one of {PLANES} or None, not {self.plane!r}")
        if self.prefer not in PREFERENCES:
            raise ValueError(f"prefer must be one of {PREFERENCES}, not {self.prefer!r}")
        if self.min_slices < 1:
            raise ValueError("min_slices must be at least 1")
        re.compile(self.description)  # a bad pattern fails here, not on the first study

    @classmethod
    def from_geometry(cls, geometry) -> SelectionRules:
        """The rules a model contract's ImageGeometry carries (older contracts lack the
        newer fields: the defaults apply)."""
        return cls(
            modalities=tuple(geometry.modalities),
            min_slices=int(geometry.min_slices),
            plane=getattr(geometry, "series_plane", None),
            description=getattr(geometry, "series_description", ""),
            prefer=getattr(geometry, "series_preference", "thinnest"),
        )


@dataclass(frozen=True)
class SeriesSummary:
    """One series as the selection saw it: enough to audit the choice later."""

    series_uid: str
    series_number: int | None
    description: str
    modality: str
    n_instances: int
    n_slices: int
    slice_thickness: float | None
    plane: str | None


@dataclass
class SeriesChoice:
    series_uid: str
    instances: list[InstanceHeader]
    reason: str
    rejected: dict[str, str] = field(default_factory=dict)
    rules: SelectionRules = field(default_factory=SelectionRules)
    series: list[SeriesSummary] = field(default_factory=list)

    def to_record(self) -> dict:
        """JSON-ready: chosen series, why, the rules, and every series with its fate."""
        chosen = next(s for s in self.series if s.series_uid == self.series_uid)
        return {
            "series_uid": self.series_uid,
            "series_number": chosen.series_number,
            "series_description": chosen.description,
            "modality": chosen.modality,
            "n_slices": chosen.n_slices,
            "slice_thickness": chosen.slice_thickness,
            "plane": chosen.plane,
            "reason": self.reason,
            "rules": {**asdict(self.rules), "modalities": list(self.rules.modalities)},
            "candidates": [
                {
                    **asdict(s),
                    "outcome": "chosen"
                    if s.series_uid == self.series_uid
                    else self.rejected.get(s.series_uid, "candidate, ranked lower"),
                }
                for s in self.series
            ],
        }


def select_series(
    instances: list[InstanceHeader],
    modalities: tuple[str, ...] = ("CT",),
    min_slices: int = 8,
    rules: SelectionRules | None = None,
) -> SeriesChoice:
    """``rules`` wins over ``modalities``/``min_slices`` (kept for simple callers)."""
    rules = rules or SelectionRules(modalities=tuple(modalities), min_slices=min_slices)
    by_series: dict[str, list[InstanceHeader]] = defaultdict(list)
    for inst in instances:
        by_series[inst.series_uid].append(inst)
    summaries = [_summary(uid, members) for uid, members in by_series.items()]

    rejected: dict[str, str] = {}
    candidates: list[SeriesSummary] = []
    wrong_modality: set[str] = set()
    for summary in summaries:
        reason = _rejection(by_series[summary.series_uid], summary, rules)
        if reason is None:
            candidates.append(summary)
            continue
        rejected[summary.series_uid] = reason
        if reason.startswith("modality"):
            wrong_modality.add(summary.modality)

    if not candidates:
        # Wrong modality only when the study holds nothing of an accepted modality; a
        # CT study whose CT series are all too short is "no usable series" instead.
        if wrong_modality and not any(s.modality in rules.modalities for s in summaries):
            raise WrongModalityError(
                f"study has modality {sorted(wrong_modality)}, model accepts {list(rules.modalities)}"
            )
        reasons = "; ".join(sorted(set(rejected.values()))) or "no instances"
        raise NoImageSeriesError(f"no usable image series ({reasons})")

    candidates.sort(key=lambda s: _rank(s, rules.prefer))
    best = candidates[0]
    reason = f"{best.modality} series with {best.n_slices} slices"
    if len(candidates) > 1:
        what = "thinnest slices, then most slices" if rules.prefer == "thinnest" else "most slices, then thinnest"
        reason += f", {what} of {len(candidates)} candidates"
    return SeriesChoice(
        series_uid=best.series_uid,
        instances=by_series[best.series_uid],
        reason=reason,
        rejected=rejected,
        rules=rules,
        series=sorted(summaries, key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid)),
    )


def _rank(s: SeriesSummary, prefer: str) -> tuple:
    thickness = s.slice_thickness if s.slice_thickness is not None else float("inf")
    if prefer == "thinnest":
        return (thickness, -s.n_slices, s.series_uid)
    return (-s.n_slices, thickness, s.series_uid)


def _summary(uid: str, members: list[InstanceHeader]) -> SeriesSummary:
    first = members[0]
    thicknesses = [m.slice_thickness for m in members if m.slice_thickness is not None]
    return SeriesSummary(
        series_uid=uid,
        series_number=first.series_number,
        description=first.series_description,
        modality=first.modality,
        n_instances=len(members),
        n_slices=sum(m.n_frames for m in members),
        slice_thickness=min(thicknesses) if thicknesses else None,
        plane=plane_of(first.orientation),
    )


def plane_of(orientation: tuple[float, ...] | None) -> str | None:
    """Acquisition plane from ImageOrientationPatient: the patient axis the slice
    normal runs closest to. None when the orientation is unknown."""
    if not orientation or len(orientation) != 6:
        return None
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    if not np.any(normal):
        return None
    return _PLANE_OF_AXIS[int(np.argmax(np.abs(normal)))]


def _rejection(members: list[InstanceHeader], summary: SeriesSummary, rules: SelectionRules) -> str | None:
    first = members[0]
    if not any(m.has_image for m in members):
        return "no pixel data (not an image series)"
    if first.sop_class_uid.startswith(SECONDARY_CAPTURE_PREFIX):
        return "secondary capture"
    kinds = {word for m in members for word in m.image_type}
    for word in _NEVER_MAIN:
        if word in kinds:
            return f"{word.lower()} image type (localizer/scout/derived)"
    if first.modality not in rules.modalities:
        return f"modality {first.modality or 'missing'} not accepted"
    if rules.plane is not None and summary.plane != rules.plane:
        return f"plane {summary.plane or 'unknown'} is not {rules.plane}"
    if rules.description and not re.search(rules.description, summary.description, re.IGNORECASE):
        return f"description does not match {rules.description!r}"
    if summary.n_slices < rules.min_slices:
        return f"only {summary.n_slices} slice(s), fewer than {rules.min_slices}"
    return None
