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

Native (uncompressed) little-endian pixel data of one sample is read as the values of
its bytes, with pydicom's correction of unused high bits, instead of through pydicom's
decoder machinery, whose per-call cost outweighs the copy of a 512 x 512 slice; pixel
data a file read left in the file (radfusion.study reads each file once, its pixels
deferred) is read from the file straight into a buffer of the thread's. The values are
the same (tests/core/test_real_size_reading.py). They become float32 straight from the
stored integers (into ``out``, a buffer of the volume reader's, when given), never
through a float64 copy when the modality LUT is exact in float32. The stored values
never outlive physical_values.
"""

from __future__ import annotations

import struct
import threading

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UID_dictionary,
)

from radfusion.dicom.checks import rescale
from radfusion.errors import CorruptDicomError, UnsupportedPixelDataError

# What padded (outside the field of view) pixels become, by modality.
PADDING_FILL = {"CT": -1024.0}
DEFAULT_PADDING_FILL = 0.0
# Native syntaxes whose pixel bytes are little-endian values as stored (a deflated
# body is inflated when the file is read).
_NATIVE_LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)


def physical_values(ds: pydicom.Dataset, out: np.ndarray | None = None) -> np.ndarray:
    """float32 (rows, cols), or (frames, rows, cols) for a multi-frame image. The header
    is expected to have passed radfusion.dicom.checks.check_instance. ``out``: a
    float32 array of that shape to write the values into (returned)."""
    if ds.get("SamplesPerPixel", 1) != 1:
        raise UnsupportedPixelDataError("colour images are not volumes")
    raw = _decode(ds)
    if out is not None and raw.shape != out.shape:
        raise CorruptDicomError(
            f"pixel data decodes to {' x '.join(map(str, raw.shape))} values, not the"
            f" {' x '.join(map(str, out.shape))} its header declares"
        )
    padding = padding_mask(ds, raw)
    values = _modality_lut(raw, ds, out)
    modality = str(ds.get("Modality", ""))
    if ds.get("PhotometricInterpretation") == "MONOCHROME1" and modality != "CT":
        low, high = _representable_range(ds)
        np.subtract(high + low, values, out=values)
    if padding is not None:
        values[padding] = PADDING_FILL.get(modality, DEFAULT_PADDING_FILL)
    # Stored integers through a bounded modality LUT (radfusion.dicom.checks) are always
    # finite in float32; float pixel data need not be.
    if raw.dtype.kind not in "iub" and not np.all(np.isfinite(values)):
        raise CorruptDicomError("pixel data holds non-finite values")
    return values


def _decode(ds: pydicom.Dataset) -> np.ndarray:
    """The stored values. The decoders' messages are not passed on (they can quote the
    file); what is wrong is said in our words."""
    native = _native_values(ds)
    if native is not None:
        return native
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


def _native_values(ds: pydicom.Dataset) -> np.ndarray | None:
    """The stored values of native little-endian, one-sample integer pixel data whose
    length is what the header declares, as pixel_array gives them (unused high bits
    cleared, or sign-extended when signed); None for anything else, which pixel_array
    decodes (and whose errors it reports). Values read from the file may be this
    thread's buffer (_buffer): used before the thread's next slice is read."""
    if transfer_syntax(ds) not in _NATIVE_LITTLE_ENDIAN or "PixelData" not in ds:
        return None
    try:
        bits, stored = int(ds.BitsAllocated), int(ds.BitsStored)
        signed = int(ds.PixelRepresentation)
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel", 1))
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
        return None
    if bits not in (8, 16, 32) or not 1 <= stored <= bits or signed not in (0, 1) or samples != 1:
        return None
    count = rows * cols * frames
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    expected = count * dtype.itemsize
    values = _deferred_values(ds, dtype, count)
    if values is None:
        data = ds.PixelData
        if not isinstance(data, bytes) or len(data) not in (expected, expected + expected % 2):
            return None
        values = np.frombuffer(data, dtype=dtype, count=count)
    if stored < bits and not _within_stored_bits(values, stored, signed):
        # As pydicom's correct_unused_bits: the high bits are not the value's.
        shift = bits - stored
        values = np.right_shift(np.left_shift(values, shift), shift)
    return values.reshape((rows, cols) if frames == 1 else (frames, rows, cols))


def _within_stored_bits(values: np.ndarray, stored: int, signed: int) -> bool:
    """Every value already is what clearing (or sign-extending) the high bits above
    ``stored`` would make it: the usual case, and two reductions cheaper than the shifts."""
    low, high = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if signed else (0, (1 << stored) - 1)
    return bool(values.size == 0 or (values.min() >= low and values.max() <= high))


def _deferred_values(ds: pydicom.Dataset, dtype: np.dtype, count: int) -> np.ndarray | None:
    """Pixel data the file read left in the file (pydicom's ``defer_size``), read from
    where the element's value starts straight into a buffer this thread reuses (a
    real-size slice: no bytes object, no fresh pages for each slice); None when the
    value is not deferred, is not ``count`` values long or the file holds less (pydicom
    then reads it and reports what is wrong)."""
    raw = ds.get_item("PixelData", keep_deferred=True)
    filename = getattr(ds, "filename", None)
    expected = count * dtype.itemsize
    syntax = transfer_syntax(ds)
    if not (
        # A deflated body's offsets are into the inflated stream, not the file.
        syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        and isinstance(raw, RawDataElement)
        and raw.value is None
        and isinstance(filename, str)
        and raw.length in (expected, expected + expected % 2)
    ):
        return None
    # The element's header just before its value, as the header read saw it: a file
    # replaced since (or an offset that is not this element's) is left to pydicom.
    header = 8 if syntax == ImplicitVRLittleEndian else 12
    values = _buffer(dtype, count)
    with open(filename, "rb") as handle:
        handle.seek(max(0, raw.value_tell - header))
        head = handle.read(header)
        if head[:4] != _PIXEL_DATA_TAG or head[-4:] != struct.pack("<I", raw.length):
            return None
        if handle.readinto(memoryview(values).cast("B")) != expected:
            return None
    return values


_PIXEL_DATA_TAG = struct.pack("<HH", 0x7FE0, 0x0010)


_buffers = threading.local()
# Buffers up to this size (a 1024 x 1024 slice of 32-bit values) are kept for the
# thread's next slice; a larger (multi-frame) image gets its own.
_REUSED_BUFFER_BYTES = 4 * 1024**2


def _buffer(dtype: np.dtype, count: int) -> np.ndarray:
    if count * dtype.itemsize > _REUSED_BUFFER_BYTES:
        return np.empty(count, dtype=dtype)
    kept = getattr(_buffers, "raw", None)
    if kept is None or kept.nbytes < count * dtype.itemsize:
        kept = _buffers.raw = np.empty(count * dtype.itemsize, dtype=np.uint8)
    return kept[: count * dtype.itemsize].view(dtype)


def transfer_syntax(ds: pydicom.Dataset) -> str | None:
    """The file's TransferSyntaxUID; None where it has no meta header or none there."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return None if syntax is None else str(syntax)


def _decoder_installed(ds: pydicom.Dataset) -> bool:
    try:
        return bool(get_decoder(UID(transfer_syntax(ds) or "")).is_available)
    except NotImplementedError:  # no decoder is even defined for this syntax
        return False


def _syntax_name(ds: pydicom.Dataset) -> str:
    """A transfer syntax pydicom knows by name; any other string is the file's, unsaid."""
    uid = transfer_syntax(ds) or ""
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


def _modality_lut(raw: np.ndarray, ds: pydicom.Dataset, out: np.ndarray | None = None) -> np.ndarray:
    """float32 physical values of ``raw`` (written into ``out`` when given)."""
    if "ModalityLUTSequence" in ds:
        return _into(np.asarray(apply_modality_lut(raw, ds), dtype=np.float32), out)
    if "RescaleSlope" not in ds and "PerFrameFunctionalGroupsSequence" in ds and raw.ndim >= 2:
        # Enhanced CT/MR keep the modality LUT in the functional groups, which
        # apply_modality_lut does not look at.
        return _into(_rescale_frames(raw.reshape(-1, *raw.shape[-2:]), ds).reshape(raw.shape), out)
    slope, intercept = rescale(ds)
    if slope == 1.0 and intercept.is_integer():
        # Exact in float32 (integers below 2**24): one pass from the stored integers,
        # no float64 copy.
        values = np.empty(raw.shape, dtype=np.float32) if out is None else out
        return np.add(raw, np.float32(intercept), out=values, dtype=np.float32)
    # Otherwise float64 arithmetic and one cast, as apply_modality_lut would give.
    return _into((raw * slope + intercept).astype(np.float32, copy=False), out)


def _into(values: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return values
    out[...] = values
    return out


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
