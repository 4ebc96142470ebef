"""What one study may claim and what it may cost, declared in one place.

``PhysicalBounds``: the header values a CT or MR series can physically hold. A value
outside them is a damaged or hostile header (a PixelSpacing of 2000 mm asks the
resampler for a 100-metre volume), refused with ``geometry_rejected`` or
``corrupt_dicom`` before any pixel is decoded.

``StudyBudget``: what reading one study may cost, checked *before* each piece of work
from what the headers declare (files, stored and decoded bytes, voxels after
resampling) and between pieces of work (seconds). A study over it fails alone with
``study_over_budget`` (or ``upload_too_large`` for its stored bytes and files); the
archive run and the server go on."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from radfusion.errors import StudyOverBudgetError, UploadTooLargeError, ZipBombError


@dataclass(frozen=True)
class PhysicalBounds:
    # In-plane pixel spacing, mm: micro-CT reaches 0.01, a 2 m field of view over
    # 64 pixels about 30.
    pixel_spacing_mm: tuple[float, float] = (0.005, 30.0)
    # Distance between neighbouring slices, mm.
    slice_spacing_mm: tuple[float, float] = (0.005, 100.0)
    # Rows and Columns of one frame.
    max_matrix: int = 4096
    # Frames of one multi-frame instance.
    max_frames: int = 10_000
    # The modality LUT: a slope of 0 erases the image, a huge one is not a scanner's.
    rescale_slope_abs: tuple[float, float] = (1e-6, 1e6)
    rescale_intercept_abs_max: float = 1e7


BOUNDS = PhysicalBounds()

GIB = 1024**3

# A zip member that inflates to more than this many times its compressed size is a zip
# bomb, not a DICOM file: CT and MR pixels deflate 2-10 times, and even a slice of pure
# air stays under ~1000 only because it is small.
MAX_ZIP_RATIO = 200
# Members declaring less than this are never bombs worth refusing (a blank 512 x 512
# slice is 0.5 MiB and deflates ~1000 times): the ratio is checked above it only.
ZIP_RATIO_MIN_BYTES = 1024**2


def check_zip_member(declared: int, compressed: int, bytes_left: int) -> None:
    """One zip member's header (declared and compressed size) against the zip-bomb
    ratio and what the study may still take: refused before it is inflated. The bytes
    are counted again while inflating, because headers can lie."""
    ratio = declared / max(compressed, 1)
    if declared > ZIP_RATIO_MIN_BYTES and ratio > MAX_ZIP_RATIO:
        raise ZipBombError(f"a zip member would expand {ratio:,.0f} times (at most {MAX_ZIP_RATIO}): refused")
    if declared > bytes_left:
        raise UploadTooLargeError(f"a zip member declares {declared:,} bytes; the study may take {bytes_left:,} more")


@dataclass(frozen=True)
class StudyBudget:
    """The cost one study may have. The defaults take a 1000-slice 512x512 CT with room
    to spare; an operator lowers them for a small worker (``radfusion score
    --study-*`` options, RADFUSION_STUDY_* settings of the service)."""

    max_files: int = 20_000
    max_bytes: int = 2 * GIB  # stored (uncompressed) bytes over all files
    max_decoded_bytes: int = 2 * GIB  # float32 values of the chosen series
    max_voxels: int = 256 * 1024**2  # the volume resampled to the model's spacing
    max_seconds: float = 600.0  # reading and preprocessing, wall clock

    def start(self) -> StudyClock:
        return StudyClock(self)


@dataclass
class StudyClock:
    """A budget being spent on one study: ``check_*`` raise StudyOverBudgetError (the
    cost of reading) or UploadTooLargeError (what the study holds)."""

    budget: StudyBudget
    started: float = field(default_factory=time.monotonic)

    def check_time(self, step: str) -> None:
        elapsed = time.monotonic() - self.started
        if elapsed > self.budget.max_seconds:
            raise StudyOverBudgetError(
                f"study took more than {self.budget.max_seconds:g} s to read (stopped at {step})"
            )

    def check_files(self, n_files: int) -> None:
        if n_files > self.budget.max_files:
            raise UploadTooLargeError(f"study holds {n_files:,} files; at most {self.budget.max_files:,}")

    def check_stored(self, n_bytes: int) -> None:
        if n_bytes > self.budget.max_bytes:
            raise UploadTooLargeError(
                f"study files hold {n_bytes / GIB:.2f} GiB; at most {self.budget.max_bytes / GIB:.2f} GiB"
            )

    def check_decoded(self, n_bytes: int) -> None:
        if n_bytes > self.budget.max_decoded_bytes:
            raise StudyOverBudgetError(
                f"series would decode to {n_bytes / GIB:.2f} GiB; at most {self.budget.max_decoded_bytes / GIB:.2f} GiB"
            )

    def check_voxels(self, n_voxels: int) -> None:
        if n_voxels > self.budget.max_voxels:
            raise StudyOverBudgetError(
                f"resampling would produce {n_voxels:,} voxels; at most {self.budget.max_voxels:,}"
            )
