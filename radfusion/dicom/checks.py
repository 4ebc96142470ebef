"""Header values of one image instance against radfusion.limits.BOUNDS, read before
any pixel is decoded.

A damaged or hostile header asks the reader for absurd work (Rows 70000 makes the
decoder allocate gigabytes, a PixelSpacing of 2000 mm makes the resampler build a
100-metre volume) or for a silently wrong image (a RescaleSlope of 0 erases it). Each
value is refused with the kind that says what is wrong: a size or frame count that is
not one is ``corrupt_dicom``, a spacing outside what scanners produce is
``geometry_rejected``, a modality LUT that is not usable is ``invalid_value``. The
messages name the element and its (numeric) value, never text from the file."""

from __future__ import annotations

import math

import pydicom

from radfusion.errors import CorruptDicomError, GeometryError, InvalidValueError, UnsupportedPixelDataError
from radfusion.limits import BOUNDS

# Bytes of one decoded value: the reader keeps float32.
DECODED_VALUE_BYTES = 4


def check_instance(ds: pydicom.Dataset) -> None:
    """Every per-file check, in the order a reader meets the problems: colour, sizes,
    frame count, modality LUT (top level and functional groups), pixel spacing when
    given (its absence is the series' problem, reported when the series is stacked)."""
    if ds.get("SamplesPerPixel", 1) != 1:
        raise UnsupportedPixelDataError("colour images are not volumes")
    matrix_size(ds)
    number_of_frames(ds)
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        rescale(ds)
    for group in functional_groups(ds):
        for transform in group.get("PixelValueTransformationSequence") or []:
            rescale(transform)
        for measures in group.get("PixelMeasuresSequence") or []:
            if "PixelSpacing" in measures:
                pixel_spacing(measures)
    if "PixelSpacing" in ds or "ImagerPixelSpacing" in ds:
        pixel_spacing(ds)


def functional_groups(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    """The shared and the per-frame functional group items of an enhanced image."""
    return [*(ds.get("SharedFunctionalGroupsSequence") or []), *(ds.get("PerFrameFunctionalGroupsSequence") or [])]


def matrix_size(ds: pydicom.Dataset) -> tuple[int, int]:
    """(Rows, Columns), each within 1 and BOUNDS.max_matrix."""
    return _whole(ds, "Rows", BOUNDS.max_matrix), _whole(ds, "Columns", BOUNDS.max_matrix)


def number_of_frames(ds: pydicom.Dataset) -> int:
    """NumberOfFrames (1 when absent or empty), within 1 and BOUNDS.max_frames."""
    return _whole(ds, "NumberOfFrames", BOUNDS.max_frames, default=1)


def check_counts(rows: int, cols: int, frames: int) -> None:
    """The same bounds on sizes already read (discovery's InstanceHeader)."""
    _within("Rows", rows, BOUNDS.max_matrix)
    _within("Columns", cols, BOUNDS.max_matrix)
    _within("NumberOfFrames", frames, BOUNDS.max_frames)


def decoded_bytes(ds: pydicom.Dataset) -> int:
    """What decoding the instance will hold in memory, from its checked header."""
    rows, cols = matrix_size(ds)
    return rows * cols * number_of_frames(ds) * DECODED_VALUE_BYTES


def rescale(item: pydicom.Dataset) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of a dataset or PixelValueTransformation item:
    1 and 0 when absent, InvalidValueError naming the element when not usable (a slope
    of 0 erases the image; it is refused, never replaced)."""
    slope = _number(item, "RescaleSlope", 1.0)
    intercept = _number(item, "RescaleIntercept", 0.0)
    low, high = BOUNDS.rescale_slope_abs
    if not low <= abs(slope) <= high:
        raise InvalidValueError(f"RescaleSlope {slope:g} is not usable: its magnitude must lie in {low:g}-{high:g}")
    if abs(intercept) > BOUNDS.rescale_intercept_abs_max:
        raise InvalidValueError(
            f"RescaleIntercept {intercept:g} is not usable: beyond ±{BOUNDS.rescale_intercept_abs_max:g}"
        )
    return slope, intercept


def pixel_spacing(item: pydicom.Dataset) -> tuple[float, float]:
    """(between rows, between columns) in mm from PixelSpacing (or ImagerPixelSpacing),
    each within BOUNDS.pixel_spacing_mm."""
    spacing = item.get("PixelSpacing") or item.get("ImagerPixelSpacing")
    try:
        values = tuple(float(v) for v in spacing) if spacing is not None else ()
    except (TypeError, ValueError, OverflowError) as exc:
        raise GeometryError("missing or invalid PixelSpacing") from exc
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise GeometryError("missing or invalid PixelSpacing")
    low, high = BOUNDS.pixel_spacing_mm
    if not all(low <= v <= high for v in values):
        raise GeometryError(f"PixelSpacing {values[0]:g} x {values[1]:g} mm is outside {low:g}-{high:g} mm")
    return values[0], values[1]


def _whole(ds: pydicom.Dataset, keyword: str, maximum: int, default: int | None = None) -> int:
    """A count within 1 and ``maximum``; ``default`` when absent or empty, if given."""
    try:
        raw = ds.get(keyword)
        value = None if raw is None or raw == "" else int(raw)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CorruptDicomError(f"invalid {keyword}") from exc
    if value is None:
        if default is None:
            raise CorruptDicomError(f"missing {keyword}")
        return default
    return _within(keyword, value, maximum)


def _within(keyword: str, value: int, maximum: int) -> int:
    if not 1 <= value <= maximum:
        raise CorruptDicomError(f"{keyword} {value} is outside 1-{maximum}")
    return value


def _number(item: pydicom.Dataset, keyword: str, default: float) -> float:
    value = item.get(keyword)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidValueError(f"{keyword} is not a number") from exc
    if not math.isfinite(number):
        raise InvalidValueError(f"{keyword} is not a finite number")
    return number


_UNDEFINED_LENGTH = 0xFFFFFFFF


def cut_short(ds: pydicom.Dataset, file_size: int | None = None) -> bool:
    """Whether the file ``ds`` was read from was cut short. pydicom reads such a file
    without complaint, its last value short (or, read with ``defer_size``, a deferred value
    that would end beyond ``file_size``); written out or decoded later, that value would be
    corrupt. Looks at the raw top-level elements only: nothing is decoded."""
    for raw in ds._dict.values():
        if not isinstance(raw, pydicom.dataelem.RawDataElement) or raw.length == _UNDEFINED_LENGTH:
            continue
        if raw.value is not None and len(raw.value) < raw.length:
            return True
        if raw.value is None and file_size is not None and raw.value_tell + raw.length > file_size:
            return True
    return False
