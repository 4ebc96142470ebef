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
from radfusion.synth.random_streams import STORAGE, exact_share_mask, stream
from radfusion.synth.render import RenderedStudy, render_study, render_study_task
from radfusion.synth.study_spec import StudySpec, make_study_spec
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


def plan_studies(
    cohort: SimulatedCohort, *, n_slices: int, rows: int, cols: int, rle_fraction: float
) -> list[StudySpec]:
    """One StudySpec per patient: exact RLE share, exactly half signed storage."""
    n = len(cohort.patients)
    rng = stream(cohort.seed, STORAGE)
    rle = exact_share_mask(n, rle_fraction, rng)
    signed = exact_share_mask(n, 0.5, rng)
    dirs = _study_dirs(n, rng)
    return [
        make_study_spec(
            p,
            cohort.seed,
            n_slices=n_slices,
            rows=rows,
            cols=cols,
            rle=bool(rle[i]),
            signed=bool(signed[i]),
            study_dir=dirs[i],
        )
        for i, p in enumerate(cohort.patients)
    ]


def _prepare_dicom_root(out: Path) -> Path:
    """An empty out/dicom; a previous cohort of ours there is replaced, anything else refused."""
    dicom_root = out / "dicom"
    if dicom_root.exists() and any(dicom_root.iterdir()):
        ours = out / "cohort.json"
        if not ours.exists() or json.loads(ours.read_text()).get("generator_version") != GENERATOR_VERSION:
            raise FileExistsError(f"{dicom_root} is not empty and was not written by radfusion.synth")
        shutil.rmtree(dicom_root)
    dicom_root.mkdir(parents=True, exist_ok=True)
    return dicom_root


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


def _validate(
    n_patients: int,
    seed: int,
    n_genes: int,
    n_slices: int,
    rows: int,
    cols: int,
    rle_fraction: float,
    genomics_missing_fraction: float,
    workers: int,
) -> None:
    if n_patients < 1:
        raise UserError(f"n_patients must be at least 1, not {n_patients}", "ask for one patient or more")
    if seed < 0:
        raise UserError(f"seed must be a non-negative integer, not {seed}", "use 0 or a positive seed")
    if n_genes < MIN_GENES:
        raise UserError(f"n_genes must be at least {MIN_GENES}, not {n_genes}", "ask for more genes")
    if n_slices < MIN_SLICES or rows < MIN_SIZE or cols < MIN_SIZE:
        raise UserError(
            f"volumes must be at least {MIN_SLICES} slices of {MIN_SIZE} x {MIN_SIZE} pixels to hold the anatomy",
            "ask for larger volumes",
        )
    for name, value in (("rle_fraction", rle_fraction), ("genomics_missing_fraction", genomics_missing_fraction)):
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{name} must be within [0, 1], not {value}", "give a fraction between 0 and 1")
    if workers < 1:
        raise UserError(f"workers must be at least 1, not {workers}", "use 1 for no worker processes")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder", "give a new or empty folder for the cohort")


def generate_cohort(
    out: Path,
    n_patients: int = 400,
    seed: int = 0,
    n_genes: int = 300,
    n_slices: int = 32,
    rows: int = 64,
    cols: int = 64,
    rle_fraction: float = 0.25,
    genomics_missing_fraction: float = 0.15,
    workers: int = 1,
) -> Path:
    """Write a synthetic cohort (DICOM studies, genomics, clinical, truth) under `out`.

    Deterministic for a given seed: tables, truth.json and every DICOM file
    (UIDs included) are byte-identical on every run and for any `workers`.
    cohort.json is written last and marks a complete cohort; a later run into
    the same `out` replaces that cohort's DICOM folder. Returns `out`.
    """
    _validate(n_patients, seed, n_genes, n_slices, rows, cols, rle_fraction, genomics_missing_fraction, workers)
    out = Path(out)
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    parameters = {
        "n_patients": n_patients,
        "seed": seed,
        "n_genes": n_genes,
        "n_slices": n_slices,
        "rows": rows,
        "cols": cols,
        "rle_fraction": rle_fraction,
        "genomics_missing_fraction": genomics_missing_fraction,
    }
    cohort = simulate_patients(n_patients, seed, n_genes, genomics_missing_fraction)
    specs = plan_studies(cohort, n_slices=n_slices, rows=rows, cols=cols, rle_fraction=rle_fraction)
    dicom_root = _prepare_dicom_root(out)
    log.info("rendering %d synthetic studies with %d worker(s)", len(specs), workers)
    studies = _render_all(specs, dicom_root, workers)

    write_table(genomics_table(cohort), out, "genomics")
    write_table(clinical_table(cohort), out, "clinical")
    write_omics_files(cohort, out)  # the same omics as raw files (radfusion cohort build reads them)
    write_json(truth_document(cohort, specs, studies, parameters), out / "truth.json")
    write_json(cohort_summary(cohort, specs), out / "cohort.json")
    log.info("synthetic cohort written: %d studies, %d files", len(studies), sum(s.n_files for s in studies))
    return out
