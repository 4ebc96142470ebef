"""What one patient's CT study looks like on disk, decided before any rendering.

A StudySpec is small and picklable: the parent process draws every spec from
per-patient random streams (so worker scheduling cannot change anything) and
hands it to a worker that renders the phantom and writes the files.

The variety here is deliberate: readers must cope with signed and unsigned
storage, 12- and 16-bit data, RLE and uncompressed transfer syntaxes, vendor
differences in descriptions, nested random folders, and a localizer series that
must be skipped.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from pydicom.uid import generate_uid

from radfusion.synth.patients import PatientRecord
from radfusion.synth.random_streams import STUDY_SPEC, stream

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
    rle: bool
    # on-disk layout
    study_dir: str
    layout: str
    # imaging phenotype
    lesion_radius_mm: float
    lesion_contrast_hu: float
    lesion_texture_std_hu: float

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
    rle: bool,
    signed: bool,
    study_dir: str,
) -> StudySpec:
    """Draw one study's acquisition details from the patient's own stream."""
    rng = stream(seed, STUDY_SPEC, patient.index)
    manufacturer, model, kernel, localizer, descriptions = SCANNERS[patient.site]
    study_date, birth_date = _dates(patient.age, rng)
    pixel_spacing = round(float(rng.uniform(5.6, 6.4)), 4)
    slice_spacing = round(float(rng.uniform(4.5, 5.5)), 4)
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
        series_description=str(rng.choice(descriptions)),
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
        rle=rle,
        study_dir=study_dir,
        layout=str(rng.choice(LAYOUTS)),
        lesion_radius_mm=patient.lesion_radius_mm,
        lesion_contrast_hu=patient.lesion_contrast_hu,
        lesion_texture_std_hu=patient.lesion_texture_std_hu,
    )
