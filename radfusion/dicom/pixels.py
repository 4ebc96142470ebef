"""Stored pixels -> physical values (HU for CT) for one instance.

pydicom decodes every transfer syntax an installed plugin handles (RLE natively; JPEG
baseline/extended/lossless through pylibjpeg-libjpeg, JPEG-LS through pyjpegls,
JPEG 2000 through pylibjpeg-openjpeg) and applies the signedness. On top of that:

* the modality LUT (RescaleSlope/Intercept or a LUT sequence) gives HU for CT; a
  slope or intercept outside radfusion.limits.BOUNDS is refused (radfusion.dicom.checks),
  never replaced;
* pixel padding (PixelPaddingValue, optionally up to PixelPaddingRangeLimit) marks
  pixels outside the scanner's field of view; they become air for CT (-1024 HU) and 0
  elsewhere, so resampling does not smear an arbitrary -2000/-3024 into the patient;
* MONOCHROME1 is inverted for non-quantitative modalities (MR), over the range the
  stored bits can hold, so every slice of a series is inverted the same way. CT stays
  as it is: HU come from the modality LUT and MONOCHROME1 only says how to display them.
"""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID, UID_dictionary

from radfusion.dicom.checks import rescale
from radfusion.errors import CorruptDicomError, UnsupportedPixelDataError

# What padded (outside the field of view) pixels become, by modality.
PADDING_FILL = {"CT": -1024.0}
DEFAULT_PADDING_FILL = 0.0


def physical_values(ds: pydicom.Dataset) -> np.ndarray:
    """float32 (rows, cols), or (frames, rows, cols) for a multi-frame image. The header
    is expected to have passed radfusion.dicom.checks.check_instance."""
    if ds.get("SamplesPerPixel", 1) != 1:
        raise UnsupportedPixelDataError("colour images are not volumes")
    raw = _decode(ds)
    padding = padding_mask(ds, raw)
    values = _modality_lut(raw, ds)
    modality = str(ds.get("Modality", ""))
    if ds.get("PhotometricInterpretation") == "MONOCHROME1" and modality != "CT":
        low, high = _representable_range(ds)
        values = (high + low) - values
    if padding is not None:
        values[padding] = PADDING_FILL.get(modality, DEFAULT_PADDING_FILL)
    if not np.all(np.isfinite(values)):
        raise CorruptDicomError("pixel data holds non-finite values")
    return values


def _decode(ds: pydicom.Dataset) -> np.ndarray:
    """The stored values. The decoders' messages are not passed on (they can quote the
    file); what is wrong is said in our words."""
    try:
        return ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        if not _decoder_installed(ds):
            raise UnsupportedPixelDataError(
                f"cannot decode transfer syntax {_syntax_name(ds)} ({type(exc).__name__})"
            ) from exc
        # A decoder for the syntax is installed and failed: the codestream is damaged
        # (or uses a variant that decoder lacks, which the file cannot tell apart).
        raise CorruptDicomError(f"pixel data cannot be decoded as {_syntax_name(ds)} ({type(exc).__name__})") from exc
    except (ValueError, EOFError, AttributeError, KeyError, IndexError, TypeError) as exc:
        raise CorruptDicomError(f"pixel data cannot be decoded ({type(exc).__name__}){_length_note(ds)}") from exc


def _decoder_installed(ds: pydicom.Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    uid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    try:
        return bool(get_decoder(UID(uid)).is_available)
    except NotImplementedError:  # no decoder is even defined for this syntax
        return False


def _syntax_name(ds: pydicom.Dataset) -> str:
    """A transfer syntax pydicom knows by name; any other string is the file's, unsaid."""
    meta = getattr(ds, "file_meta", None)
    uid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    return UID_dictionary[uid][0] if uid in UID_dictionary else "(unknown)"


def _length_note(ds: pydicom.Dataset) -> str:
    """': 8130 vs 8192 bytes' when native pixel data is shorter or longer than the
    header says; '' when it cannot be told (encapsulated data)."""
    try:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            return ""
        bits = int(ds.BitsAllocated)
        values = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames") or 1) * int(ds.SamplesPerPixel or 1)
        expected = (values * bits + 7) // 8
        have = len(ds.PixelData)
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
        return ""
    return f": {have} vs {expected} bytes" if have != expected else ""


def _modality_lut(raw: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
    if "RescaleSlope" not in ds and "PerFrameFunctionalGroupsSequence" in ds and raw.ndim >= 2:
        # Enhanced CT/MR keep the modality LUT in the functional groups, which
        # apply_modality_lut does not look at.
        return _rescale_frames(raw.reshape(-1, *raw.shape[-2:]), ds).reshape(raw.shape)
    slope, intercept = rescale(ds)
    if slope == 1.0 and intercept.is_integer():
        # Exact in float32 (integers below 2**24): skips a float64 copy per slice.
        values = raw.astype(np.float32)
        values += np.float32(intercept)
        return values
    # Otherwise float64 arithmetic and one cast, as apply_modality_lut would give.
    return (raw * slope + intercept).astype(np.float32)


def padding_mask(ds: pydicom.Dataset, raw: np.ndarray) -> np.ndarray | None:
    """Stored values that are padding, or None when the image declares none (or none
    of its pixels are padding). The padding range runs between the two values in
    whichever order they are given (PS3.3 C.7.5.1.1.2)."""
    if "PixelPaddingValue" not in ds:
        return None
    try:
        first = int(ds.PixelPaddingValue)
        limit = int(ds.PixelPaddingRangeLimit) if "PixelPaddingRangeLimit" in ds else first
    except (TypeError, ValueError):
        return None  # a malformed optional tag: ignore it rather than reject the image
    low, high = min(first, limit), max(first, limit)
    mask = (raw >= low) & (raw <= high)
    return mask if mask.any() else None


def _representable_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """The modality-LUT values of the smallest and largest storable pixel."""
    bits = int(ds.get("BitsStored", 16) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0):
        stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], dtype=np.int64)
    else:
        stored = np.array([0, 2**bits - 1], dtype=np.int64)
    ends = _modality_lut(stored, ds)
    return float(ends.min()), float(ends.max())


def _rescale_frames(frames: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Apply PixelValueTransformationSequence (shared or per frame) to get HU."""
    per_frame = ds.PerFrameFunctionalGroupsSequence
    shared_groups = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_groups[0] if shared_groups else pydicom.Dataset()
    if len(per_frame) != len(frames):
        return frames.astype(np.float32)  # the geometry check reports the mismatch
    slopes, intercepts = [], []
    for item in per_frame:
        group = item if "PixelValueTransformationSequence" in item else shared
        if "PixelValueTransformationSequence" not in group:
            return frames.astype(np.float32)
        slope, intercept = rescale(group.PixelValueTransformationSequence[0])
        slopes.append(slope)
        intercepts.append(intercept)
    slope_of = np.asarray(slopes, dtype=np.float32)[:, None, None]
    intercept_of = np.asarray(intercepts, dtype=np.float32)[:, None, None]
    return (frames * slope_of + intercept_of).astype(np.float32)
