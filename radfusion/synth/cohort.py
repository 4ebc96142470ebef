"""generate_cohort: the synthetic radiogenomic cohort on disk.

Order of work: draw every patient (patients.py), decide every study's storage and
layout in this process, render the studies (in a Pool when workers > 1), then
write the tables and the truth. All randomness comes from named streams keyed by
the seed, so the output is the same for any number of workers.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
from pathlib import Path

import numpy as np

from radfusion.errors import UserError
from radfusion.synth.genomics_model import N_DRIVERS
from radfusion.synth.omics_files import write_omics_files
from radfusion.synth.patients import SimulatedCohort, simulate_patients
from radfusion.synth.random_streams import COMPRESSION, SLICE_COUNTS, STORAGE, exact_share_mask, stream
from radfusion.synth.render import RenderedStudy, render_study, render_study_task
from radfusion.synth.site_profile import SiteProfile
from radfusion.synth.study_spec import (
    HISTORIC_PIXEL_SPACING_MM,
    HISTORIC_SLICE_THICKNESS_MM,
    JPEG2000,
    JPEGLS,
    RLE,
    UNCOMPRESSED,
    MmRange,
    StudySpec,
    make_study_spec,
    pixel_spacing_range,
    slice_thickness_range,
)
from radfusion.synth.tables import clinical_table, genomics_table, write_table
from radfusion.synth.truth import GENERATOR_VERSION, cohort_summary, truth_document, write_json

log = logging.getLogger(__name__)


def _study_dirs(n: int, rng: np.random.Generator) -> list[str]:
    """Unique 6-hex-digit study folder names."""
    names: list[str] = []
    used: set[str] = set()
    while len(names) < n:
        name = f"{int(rng.integers(16**6)):06x}"
        if name not in used:
            used.add(name)
            names.append(name)
    return names


SliceCount = int | tuple[int, int]


def _slice_range(n_slices: SliceCount) -> tuple[int, int]:
    return (int(n_slices[0]), int(n_slices[1])) if isinstance(n_slices, tuple) else (int(n_slices), int(n_slices))


def _slice_counts(seed: int, n: int, n_slices: SliceCount, site: int = 0) -> list[int]:
    """Every study's slice count: the one given, or drawn per patient in (low, high)."""
    low, high = _slice_range(n_slices)
    if low == high:
        return [low] * n
    return [int(k) for k in stream(seed, SLICE_COUNTS, site=site).integers(low, high + 1, n)]


def _compressions(seed: int, rle: np.ndarray, j2k_fraction: float, jpegls_fraction: float, site: int = 0) -> list[str]:
    """Each study's storage: RLE where `rle` says (drawn as ever), then exact shares of
    JPEG 2000 and JPEG-LS among the other studies (as many as fit), the rest uncompressed.
    The JPEG shares come from their own stream, so a cohort without them is unchanged."""
    kinds = np.where(rle, RLE, UNCOMPRESSED).astype(object)
    n = len(rle)
    if j2k_fraction > 0 or jpegls_fraction > 0:
        others = stream(seed, COMPRESSION, site=site).permutation(np.flatnonzero(~rle))
        n_j2k = min(round(j2k_fraction * n), len(others))
        n_jls = min(round(jpegls_fraction * n), len(others) - n_j2k)
        kinds[others[:n_j2k]] = JPEG2000
        kinds[others[n_j2k : n_j2k + n_jls]] = JPEGLS
    return [str(k) for k in kinds]


def plan_studies(
    cohort: SimulatedCohort,
    *,
    n_slices: SliceCount,
    rows: int,
    cols: int,
    rle_fraction: float,
    pixel_spacing_mm: float | MmRange = HISTORIC_PIXEL_SPACING_MM,
    slice_thickness_mm: float | MmRange = HISTORIC_SLICE_THICKNESS_MM,
    j2k_fraction: float = 0.0,
    jpegls_fraction: float = 0.0,
) -> list[StudySpec]:
    """One StudySpec per patient: exact RLE (JPEG 2000, JPEG-LS) shares, exactly half
    signed storage, slice counts and spacings drawn per patient (see generate_cohort)."""
    n = len(cohort.patients)
    site = cohort.site.index if cohort.site else 0
    rng = stream(cohort.seed, STORAGE, site=site)
    rle = exact_share_mask(n, rle_fraction, rng)
    signed = exact_share_mask(n, 0.5, rng)
    dirs = [f"{cohort.site.study_prefix if cohort.site else ''}{name}" for name in _study_dirs(n, rng)]
    compressions = _compressions(cohort.seed, rle, j2k_fraction, jpegls_fraction, site)
    counts = _slice_counts(cohort.seed, n, n_slices, site)
    return [
        make_study_spec(
            p,
            cohort.seed,
            n_slices=counts[i],
            rows=rows,
            cols=cols,
            signed=bool(signed[i]),
            study_dir=dirs[i],
            compression=compressions[i],
            pixel_spacing_mm=pixel_spacing_range(pixel_spacing_mm),
            slice_thickness_mm=slice_thickness_range(slice_thickness_mm),
            site=cohort.site,
        )
        for i, p in enumerate(cohort.patients)
    ]


def written_by_us(out: Path) -> bool:
    """Whether `out` holds a cohort this generator wrote (its cohort.json says so)."""
    ours = out / "cohort.json"
    return ours.exists() and json.loads(ours.read_text()).get("generator_version") == GENERATOR_VERSION


def _prepare_dicom_root(out: Path) -> Path:
    """An empty out/dicom; a previous cohort of ours there is replaced, anything else refused."""
    dicom_root = out / "dicom"
    if dicom_root.exists() and any(dicom_root.iterdir()):
        if not written_by_us(out):
            raise FileExistsError(f"{dicom_root} is not empty and was not written by radfusion.synth")
        shutil.rmtree(dicom_root)
    dicom_root.mkdir(parents=True, exist_ok=True)
    return dicom_root


def _remove_absent(out: Path, site: SiteProfile) -> None:
    """A site without images (omics) leaves no dicom/ (genomics table, omics/) of a
    previous cohort of ours in `out`; another's files there are refused."""
    absent = [] if site.images else [out / "dicom"]
    if not site.omics:
        absent += [out / "genomics.csv", out / "genomics.parquet", out / "omics"]
    present = [path for path in absent if path.exists()]
    if present and not written_by_us(out):
        raise FileExistsError(f"{out} holds files that were not written by radfusion.synth")
    for path in present:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _render_all(specs: list[StudySpec], dicom_root: Path, workers: int) -> list[RenderedStudy]:
    if workers <= 1:
        return [render_study(spec, dicom_root) for spec in specs]
    tasks = [(spec, dicom_root) for spec in specs]
    with multiprocessing.get_context().Pool(workers) as pool:
        return list(pool.imap(render_study_task, tasks, chunksize=4))


# The smallest cohort the generator can draw: the anatomy needs this much volume, the
# genomic design twice the driver genes (radfusion synth checks its flags against them).
MIN_GENES = 2 * N_DRIVERS
MIN_SLICES = 8
MIN_SIZE = 24
MAX_SPACING_MM = 30.0  # what radfusion's readers accept as a pixel spacing (radfusion.limits)


def _validate_geometry(
    n_slices: SliceCount, rows: int, cols: int, pixel_spacing_mm: float | MmRange, slice_thickness_mm: float | MmRange
) -> None:
    low, high = _slice_range(n_slices)
    if low < MIN_SLICES or rows < MIN_SIZE or cols < MIN_SIZE:
        raise UserError(
            f"volumes must be at least {MIN_SLICES} slices of {MIN_SIZE} x {MIN_SIZE} pixels to hold the anatomy",
            "ask for larger volumes",
        )
    if high < low:
        raise UserError(f"n_slices ({low}, {high}) is an empty range", "give the fewest slices first")
    for name, value in (("pixel_spacing_mm", pixel_spacing_mm), ("slice_thickness_mm", slice_thickness_mm)):
        spacing = value if isinstance(value, tuple) else (value, value)
        if not 0 < spacing[0] <= spacing[1] <= MAX_SPACING_MM:
            raise UserError(
                f"{name} must be a spacing in (0, {MAX_SPACING_MM:g}] mm or a (low, high) range of them, not {value}",
                "give millimetres, e.g. 0.7 or (0.6, 0.8)",
            )


def _validate(
    n_patients: int,
    seed: int,
    n_genes: int,
    rle_fraction: float,
    j2k_fraction: float,
    jpegls_fraction: float,
    genomics_missing_fraction: float,
    workers: int,
) -> None:
    if n_patients < 1:
        raise UserError(f"n_patients must be at least 1, not {n_patients}", "ask for one patient or more")
    if seed < 0:
        raise UserError(f"seed must be a non-negative integer, not {seed}", "use 0 or a positive seed")
    if n_genes < MIN_GENES:
        raise UserError(f"n_genes must be at least {MIN_GENES}, not {n_genes}", "ask for more genes")
    fractions = (
        ("rle_fraction", rle_fraction),
        ("j2k_fraction", j2k_fraction),
        ("jpegls_fraction", jpegls_fraction),
        ("genomics_missing_fraction", genomics_missing_fraction),
    )
    for name, value in fractions:
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{name} must be within [0, 1], not {value}", "give a fraction between 0 and 1")
    if rle_fraction + j2k_fraction + jpegls_fraction > 1.0 + 1e-9:
        raise UserError(
            f"the RLE, JPEG 2000 and JPEG-LS shares add up to {rle_fraction + j2k_fraction + jpegls_fraction:g}",
            "give shares that add up to 1 or less (the rest is uncompressed)",
        )
    if workers < 1:
        raise UserError(f"workers must be at least 1, not {workers}", "use 1 for no worker processes")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder", "give a new or empty folder for the cohort")


def _geometry_parameters(
    n_slices: SliceCount,
    pixel_spacing_mm: float | MmRange,
    slice_thickness_mm: float | MmRange,
    j2k_fraction: float,
    jpegls_fraction: float,
) -> dict[str, object]:
    """What truth.json records beyond the historic parameters: only what differs from
    them, so a historic cohort's truth.json is unchanged."""
    low, high = _slice_range(n_slices)
    extra: dict[str, object] = {
        "n_slices": [low, high] if low != high else low,
        "pixel_spacing_mm": list(pixel_spacing_range(pixel_spacing_mm)),
        "slice_thickness_mm": list(slice_thickness_range(slice_thickness_mm)),
        "j2k_fraction": j2k_fraction,
        "jpegls_fraction": jpegls_fraction,
    }
    historic = {
        "n_slices": low,
        "pixel_spacing_mm": list(pixel_spacing_range(HISTORIC_PIXEL_SPACING_MM)),
        "slice_thickness_mm": list(slice_thickness_range(HISTORIC_SLICE_THICKNESS_MM)),
        "j2k_fraction": 0.0,
        "jpegls_fraction": 0.0,
    }
    return {key: value for key, value in extra.items() if value != historic[key]}


def generate_cohort(
    out: Path,
    n_patients: int = 400,
    seed: int = 0,
    n_genes: int = 300,
    n_slices: SliceCount = 32,
    rows: int = 64,
    cols: int = 64,
    rle_fraction: float = 0.25,
    genomics_missing_fraction: float = 0.15,
    workers: int = 1,
    *,
    pixel_spacing_mm: float | MmRange = HISTORIC_PIXEL_SPACING_MM,
    slice_thickness_mm: float | MmRange = HISTORIC_SLICE_THICKNESS_MM,
    j2k_fraction: float = 0.0,
    jpegls_fraction: float = 0.0,
    site: SiteProfile | None = None,
) -> Path:
    """Write a synthetic cohort (DICOM studies, genomics, clinical, truth) under `out`.

    Geometry: `n_slices` per study, or a (low, high) range drawn per patient;
    `pixel_spacing_mm` and `slice_thickness_mm` each one value (the centre of the
    historic spread: 6 mm is drawn in 5.6-6.4 mm, 5 mm in 4.5-5.5 mm) or a (low, high)
    range. The defaults are the historic geometry (64 pixels of ~6 mm make a 384 mm
    field of view; `radfusion synth` passes its field of view / size instead).
    Storage: exact shares `rle_fraction`, `j2k_fraction` (JPEG 2000 lossless) and
    `jpegls_fraction` (JPEG-LS lossless) of the studies, the rest uncompressed.
    `site`: one site of a multi-site cohort (site_profile.py; sites.py writes them all),
    None for the single cohort.

    Deterministic for a given seed: tables, truth.json and every DICOM file
    (UIDs included) are byte-identical on every run and for any `workers`.
    cohort.json is written last and marks a complete cohort; a later run into
    the same `out` replaces that cohort's DICOM folder. Returns `out`.
    """
    _validate(
        n_patients, seed, n_genes, rle_fraction, j2k_fraction, jpegls_fraction, genomics_missing_fraction, workers
    )
    _validate_geometry(n_slices, rows, cols, pixel_spacing_mm, slice_thickness_mm)
    out = Path(out)
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    parameters: dict[str, object] = {
        "n_patients": n_patients,
        "seed": seed,
        "n_genes": n_genes,
        "n_slices": _slice_range(n_slices)[0],
        "rows": rows,
        "cols": cols,
        "rle_fraction": rle_fraction,
        "genomics_missing_fraction": genomics_missing_fraction,
    }
    parameters |= _geometry_parameters(n_slices, pixel_spacing_mm, slice_thickness_mm, j2k_fraction, jpegls_fraction)
    if site is not None:
        parameters["site"] = site.record()
    cohort = simulate_patients(n_patients, seed, n_genes, genomics_missing_fraction, site)
    if site is not None and not set(site.dropped_genes) <= set(cohort.genes):
        raise UserError("a site's dropped genes must be genes of the panel", "drop panel genes only")
    specs = plan_studies(
        cohort,
        n_slices=n_slices,
        rows=rows,
        cols=cols,
        rle_fraction=rle_fraction,
        pixel_spacing_mm=pixel_spacing_mm,
        slice_thickness_mm=slice_thickness_mm,
        j2k_fraction=j2k_fraction,
        jpegls_fraction=jpegls_fraction,
    )
    if site is not None:
        _remove_absent(out, site)
    studies: list[RenderedStudy] | None = None
    if site is None or site.images:
        dicom_root = _prepare_dicom_root(out)
        log.info("rendering %d synthetic studies with %d worker(s)", len(specs), workers)
        studies = _render_all(specs, dicom_root, workers)

    if site is None or site.omics:
        write_table(genomics_table(cohort), out, "genomics")
    write_table(clinical_table(cohort), out, "clinical")
    if site is None or site.omics:
        write_omics_files(cohort, out)  # the same omics as raw files (radfusion cohort build reads them)
    write_json(truth_document(cohort, specs, studies, parameters), out / "truth.json")
    write_json(cohort_summary(cohort, specs if studies is not None else []), out / "cohort.json")
    n_files = sum(s.n_files for s in studies or [])
    log.info("synthetic cohort written: %d studies, %d files", len(studies or []), n_files)
    return out
