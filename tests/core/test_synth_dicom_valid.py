"""Every DICOM file the synthetic cohort writes passes dciodvfy (dicom3tools) with 0
errors: the axial CT series and the localizer, in each storage the generator mixes
(signed and unsigned, 12 and 16 bits stored, RLE Lossless and uncompressed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from tests.support.validators import dciodvfy_errors


def kind(ds: pydicom.Dataset) -> tuple[str, str, int, str]:
    """(series role, pixel representation, bits stored, transfer syntax) of one file."""
    role = "localizer" if "LOCALIZER" in ds.ImageType else "axial"
    signed = "signed" if ds.PixelRepresentation == 1 else "unsigned"
    return role, signed, int(ds.BitsStored), str(ds.file_meta.TransferSyntaxUID)


def test_every_synthetic_file_passes_dciodvfy(tiny_cohort: Path) -> None:
    files = sorted((tiny_cohort / "dicom").rglob("*.dcm"))
    by_kind: dict[tuple, list[Path]] = defaultdict(list)
    for path in files:
        by_kind[kind(pydicom.dcmread(path, stop_before_pixels=True))].append(path)
    # The cohort holds every variant the generator writes, so each is checked.
    kinds = set(by_kind)
    assert {k[0] for k in kinds} == {"localizer", "axial"}
    assert {k[1] for k in kinds} == {"signed", "unsigned"}
    assert {k[2] for k in kinds} == {12, 16}
    assert {k[3] for k in kinds} == {ExplicitVRLittleEndian, RLELossless}
    errors = {str(p.relative_to(tiny_cohort)): dciodvfy_errors(p) for p in files}
    assert {path: found for path, found in errors.items() if found} == {}
    assert len(errors) == 110  # 10 studies of 10 axial slices and a localizer


def test_the_localizer_has_an_empty_slice_thickness(tiny_cohort: Path) -> None:
    """Type 2 in the Image Plane module: present (dciodvfy's error when absent) and empty
    (a projection scout has none), so readers still see no thickness for it."""
    for path in sorted((tiny_cohort / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if "LOCALIZER" in ds.ImageType:
            assert "SliceThickness" in ds and ds.SliceThickness in (None, "")
            assert "SliceLocation" not in ds
        else:
            assert 4.5 <= float(ds.SliceThickness) <= 5.5
            assert float(ds.SliceLocation) == float(ds.ImagePositionPatient[2])
