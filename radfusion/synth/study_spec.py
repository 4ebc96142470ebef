"""What one patient's CT study looks like on disk, decided before any rendering.

A StudySpec is small and picklable: the parent process draws every spec from
per-patient random streams (so worker scheduling cannot change anything) and
hands it to a worker that renders the phantom and writes the files.

The variety here is deliberate: readers must cope with signed and unsigned
storage, 12- and 16-bit data, RLE and uncompressed transfer syntaxes (and JPEG 2000
and JPEG-LS lossless where a cohort asks for them, as archives store studies),
vendor differences in descriptions, nested random folders, and a localizer series
that must be skipped.

Geometry: each study draws its pixel spacing and slice thickness within a range. A
single value names the centre of the historic spread (a 6 mm pixel spacing is drawn
in 5.6-6.4 mm, a 5 mm thickness in 4.5-5.5 mm, as every cohort before these options
was); a (low, high) pair is drawn as given.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import numpy as np
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from radfusion.synth.patients import PatientRecord
from radfusion.synth.random_streams import STUDY_SPEC, stream
from radfusion.synth.site_profile import SiteProfile

FAMILY_NAMES = (
    "Smith",
    "Jones",
    "Garcia",
    "Muller",
    "Rossi",
    "Novak",
    "Silva",
    "Kim",
    "Tanaka",
    "Dubois",
    "Olsen",
    "Kowalski",
    "Murphy",
    "Costa",
    "Nguyen",
    "Fischer",
    "Larsen",
)
GIVEN_NAMES = {
    "M": ("John", "Lukas", "Marco", "Pierre", "Jan", "Hiroshi", "Diego", "Tom", "Erik"),
    "F": ("Anna", "Maria", "Sofia", "Claire", "Eva", "Yuki", "Laura", "Ingrid", "Julia"),
}

# Per site: (manufacturer, model, reconstruction kernel, localizer name, main series names)
SCANNERS = {
    "site_A": (
        "SIEMENS",
        "SOMATOM Definition AS",
        "B30f",
        "Topogram  0.6  T20f",
        ("CHEST 5mm", "Thorax 5.0 B30f", "CHEST 5.0 mm"),
    ),
    "site_B": (
        "GE MEDICAL SYSTEMS",
        "Revolution CT",
        "STANDARD",
        "Scout",
        ("CHEST 5mm", "5mm Chest", "CT CHEST W/ 5mm"),
    ),
    "site_C": ("Philips", "iCT 256", "B", "Surview", ("CHEST 5mm", "Chest 5mm iDose", "THORAX 5mm")),
    "site_D": ("TOSHIBA", "Aquilion ONE", "FC08", "Scanogram", ("CHEST 5mm", "Chest 5.0 FC08", "CHEST AXIAL 5mm")),
}

LAYOUT_FLAT = "flat"  # dicom/<study>/<file>
LAYOUT_BY_SERIES = "by_series"  # dicom/<study>/<series>/<file>
LAYOUT_BUCKETS = "buckets"  # dicom/<study>/<a>/<b>/<file>, slices spread over buckets
LAYOUTS = (LAYOUT_FLAT, LAYOUT_BY_SERIES, LAYOUT_BUCKETS)

# How the pixels are stored: each study's whole series in one transfer syntax.
UNCOMPRESSED = "uncompressed"
RLE = "rle"
JPEG2000 = "jpeg2000"
JPEGLS = "jpegls"
TRANSFER_SYNTAXES: dict[str, UID] = {
    UNCOMPRESSED: ExplicitVRLittleEndian,
    RLE: RLELossless,
    JPEG2000: JPEG2000Lossless,
    JPEGLS: JPEGLSLossless,
}

# The historic geometry (every cohort before physical fields of view): ~6 mm pixels
# (64 of them make a 384 mm field of view) and ~5 mm slices, each drawn within the
# spread below. A value given as one number keeps the same relative spread.
HISTORIC_PIXEL_SPACING_MM = 6.0
HISTORIC_SLICE_THICKNESS_MM = 5.0
PIXEL_SPACING_SPREAD = (14, 15, 16)  # 6 mm -> 5.6-6.4 mm: x 14/15 to x 16/15
SLICE_THICKNESS_SPREAD = (9, 10, 11)  # 5 mm -> 4.5-5.5 mm: x 9/10 to x 11/10

MmRange = tuple[float, float]


def drawn_range(value: float | MmRange, spread: tuple[int, int, int]) -> MmRange:
    """The (low, high) a spacing is drawn in: a pair as given, one value with the
    historic relative spread around it (exactly 5.6-6.4 for 6, 4.5-5.5 for 5)."""
    if isinstance(value, tuple):
        return (float(value[0]), float(value[1]))
    low, centre, high = spread
    return (round(value * low / centre, 6), round(value * high / centre, 6))


def pixel_spacing_range(value: float | MmRange) -> MmRange:
    return drawn_range(value, PIXEL_SPACING_SPREAD)


def slice_thickness_range(value: float | MmRange) -> MmRange:
    return drawn_range(value, SLICE_THICKNESS_SPREAD)


def described_thickness(description: str, nominal_mm: float) -> str:
    """A vendor's series description ("CHEST 5mm", "Thorax 5.0 B30f") naming the
    nominal slice thickness instead of 5 mm (unchanged at 5 mm)."""
    decimal = f"{nominal_mm:.1f}" if round(nominal_mm, 1) == nominal_mm else f"{nominal_mm:g}"
    return re.sub(r"5mm|5\.0", lambda m: f"{nominal_mm:g}mm" if m.group() == "5mm" else decimal, description)


@dataclass(frozen=True)
class StudySpec:
    """Identity, acquisition, storage and geometry of one study."""

    seed: int
    index: int
    patient_id: str
    patient_name: str
    patient_sex: str
    birth_date: str
    patient_age: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    institution: str
    manufacturer: str
    model_name: str
    kernel: str
    series_description: str
    localizer_description: str
    kvp: float
    tube_current_ma: int
    study_uid: str
    main_series_uid: str
    localizer_series_uid: str
    frame_of_reference_uid: str
    # geometry of the main axial series
    n_slices: int
    rows: int
    cols: int
    pixel_spacing_mm: float
    slice_spacing_mm: float
    origin_mm: tuple[float, float, float]  # centre of voxel (slice 0, row 0, col 0)
    # storage
    signed: bool
    bits_stored: int
    compression: str  # a key of TRANSFER_SYNTAXES
    # on-disk layout
    study_dir: str
    layout: str
    # imaging phenotype
    lesion_radius_mm: float
    lesion_contrast_hu: float
    lesion_texture_std_hu: float
    # a site of a multi-site cohort: its stream key and its scanner's noise and offset
    site: int = 0
    noise_scale: float = 1.0
    hu_offset: float = 0.0

    @property
    def rle(self) -> bool:
        return self.compression == RLE

    @property
    def transfer_syntax(self) -> UID:
        return TRANSFER_SYNTAXES[self.compression]

    @property
    def rescale_intercept(self) -> float:
        return 0.0 if self.signed else -1024.0

    def sop_uid(self, series: str, number: int) -> str:
        return generate_uid(entropy_srcs=[*self._uid_key(), series, "sop", str(number)])

    def _uid_key(self) -> list[str]:
        return ["radfusion.synth", str(self.seed), self.patient_id]


def _uid(seed: int, patient_id: str, *what: str) -> str:
    return generate_uid(entropy_srcs=["radfusion.synth", str(seed), patient_id, *what])


def _dates(age: int, rng: np.random.Generator) -> tuple[dt.date, dt.date]:
    """(study date, birth date) consistent with `age` completed years."""
    study = dt.date(int(rng.integers(2014, 2024)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    birth = study.replace(year=study.year - age) - dt.timedelta(days=int(rng.integers(1, 365)))
    return study, birth


def make_study_spec(
    patient: PatientRecord,
    seed: int,
    *,
    n_slices: int,
    rows: int,
    cols: int,
    signed: bool,
    study_dir: str,
    compression: str = UNCOMPRESSED,
    pixel_spacing_mm: MmRange = (5.6, 6.4),
    slice_thickness_mm: MmRange = (4.5, 5.5),
    site: SiteProfile | None = None,
) -> StudySpec:
    """Draw one study's acquisition details from the patient's own stream (the
    spacings within the given ranges: the defaults are the historic ones). A site's
    studies all come from its scanner, with its kernel, noise and offset."""
    rng = stream(seed, STUDY_SPEC, patient.index, site.index if site else 0)
    manufacturer, model, vendor_kernel, localizer, descriptions = SCANNERS[site.scanner if site else patient.site]
    kernel = site.kernel if site else vendor_kernel
    study_date, birth_date = _dates(patient.age, rng)
    pixel_spacing = round(float(rng.uniform(*pixel_spacing_mm)), 4)
    slice_spacing = round(float(rng.uniform(*slice_thickness_mm)), 4)
    nominal_thickness = round(sum(slice_thickness_mm) / 2, 4)
    half_fov = np.array([cols, rows]) * pixel_spacing / 2.0
    origin_xy = -half_fov + pixel_spacing / 2.0 + rng.uniform(-8.0, 8.0, 2)
    origin_z = float(rng.uniform(-350.0, -100.0))
    pid = patient.patient_id
    return StudySpec(
        seed=seed,
        index=patient.index,
        patient_id=pid,
        patient_name=f"{rng.choice(FAMILY_NAMES)}^{rng.choice(GIVEN_NAMES[patient.sex])}",
        patient_sex=patient.sex,
        birth_date=birth_date.strftime("%Y%m%d"),
        patient_age=f"{patient.age:03d}Y",
        study_date=study_date.strftime("%Y%m%d"),
        study_time=f"{rng.integers(7, 20):02d}{rng.integers(0, 60):02d}{rng.integers(0, 60):02d}",
        accession_number=f"A{rng.integers(10**7, 10**8)}",
        study_id=str(rng.integers(1000, 99999)),
        institution=patient.site,
        manufacturer=manufacturer,
        model_name=model,
        kernel=kernel,
        series_description=described_thickness(str(rng.choice(descriptions)), nominal_thickness).replace(
            vendor_kernel, kernel
        ),
        localizer_description=localizer,
        kvp=float(rng.choice([100.0, 120.0, 120.0, 140.0])),
        tube_current_ma=int(rng.integers(80, 400)),
        study_uid=_uid(seed, pid, "study"),
        main_series_uid=_uid(seed, pid, "series", "main"),
        localizer_series_uid=_uid(seed, pid, "series", "localizer"),
        frame_of_reference_uid=_uid(seed, pid, "frame_of_reference"),
        n_slices=n_slices,
        rows=rows,
        cols=cols,
        pixel_spacing_mm=pixel_spacing,
        slice_spacing_mm=slice_spacing,
        origin_mm=(round(float(origin_xy[0]), 3), round(float(origin_xy[1]), 3), round(origin_z, 3)),
        signed=signed,
        bits_stored=int(rng.choice([12, 16])),
        compression=compression,
        study_dir=study_dir,
        layout=str(rng.choice(LAYOUTS)),
        lesion_radius_mm=patient.lesion_radius_mm,
        lesion_contrast_hu=patient.lesion_contrast_hu,
        lesion_texture_std_hu=patient.lesion_texture_std_hu,
        site=site.index if site else 0,
        noise_scale=site.noise_scale if site else 1.0,
        hu_offset=site.hu_offset if site else 0.0,
    )
