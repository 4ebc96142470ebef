"""truth.json and cohort.json: what the generator knows, for tests and evaluation.

truth.json holds the latent variables (scores, subtype, lesion location) that a
model must never see; evaluation uses it to check that predictions track the
true signal. cohort.json is a small human-readable summary.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from radfusion.synth import outcome_model as om
from radfusion.synth.dicom_writer import main_slice_position
from radfusion.synth.patients import PatientRecord, SimulatedCohort
from radfusion.synth.render import RenderedStudy
from radfusion.synth.study_spec import JPEG2000, JPEGLS, StudySpec

GENERATOR_VERSION = "radfusion.synth/1"
VOXEL_ORDER = "(slice, row, col); slices of the main series sorted by increasing z"


def _r(value: float) -> float:
    return round(float(value), 6)


def lesion_centre_mm(spec: StudySpec, voxel: tuple[int, int, int]) -> list[float]:
    """Patient coordinates (x, y, z) of a voxel centre in the main series."""
    k, r, c = voxel
    x0, y0, z = main_slice_position(spec, k)
    return [_r(x0 + c * spec.pixel_spacing_mm), _r(y0 + r * spec.pixel_spacing_mm), _r(z)]


def _patient_truth(
    p: PatientRecord, spec: StudySpec, study: RenderedStudy | None, varying_slices: bool
) -> dict[str, Any]:
    """What the generator knows of one patient; without a study (a site without
    images) the fields of the study are left out."""
    if study is None:
        imaged: dict[str, Any] = {"lesion_radius_mm": _r(p.lesion_radius_mm)}
    else:
        imaged = {
            "study_instance_uid": spec.study_uid,
            "main_series_instance_uid": spec.main_series_uid,
            "lesion_centre_mm": lesion_centre_mm(spec, study.lesion_voxel),
            "lesion_centre_voxel": list(study.lesion_voxel),
            "lesion_radius_mm": _r(p.lesion_radius_mm),
            "lesion_semi_axes_mm": [_r(v) for v in study.lesion_semi_axes_mm],
        }
    return {
        "patient_id": p.patient_id,
        **imaged,
        "lesion_contrast_hu": _r(p.lesion_contrast_hu),
        "lesion_texture_std_hu": _r(p.lesion_texture_std_hu),
        **({} if study is None else {"lesion_fully_in_soft_tissue": study.lesion_fully_in_soft_tissue}),
        "image_score": _r(p.image_score),
        "genomic_score": _r(p.genomic_score),
        "subtype": p.subtype,
        "has_genomics": p.has_genomics,
        "mutations": p.mutations,
        "treatment": p.treatment,
        "response": p.response,
        "response_probability": _r(p.response_probability),
        "response_probability_chemo": _r(p.p_chemo),
        "response_probability_targeted": _r(p.p_targeted),
        "best_treatment": p.best_treatment,
        **({} if study is None else _study_truth(spec, varying_slices)),
    }


def _study_truth(spec: StudySpec, varying_slices: bool) -> dict[str, Any]:
    return {
        "pixel_spacing_mm": spec.pixel_spacing_mm,
        "slice_spacing_mm": spec.slice_spacing_mm,
        "storage": _storage(spec),
        **({"n_slices": spec.n_slices} if varying_slices else {}),
    }


def _storage(spec: StudySpec) -> dict[str, Any]:
    """RLE or not, signedness and bits, as ever; JPEG 2000 and JPEG-LS studies (cohorts
    that ask for them) also name their compression."""
    storage: dict[str, Any] = {"rle": spec.rle, "signed": spec.signed, "bits_stored": spec.bits_stored}
    if spec.compression in (JPEG2000, JPEGLS):
        storage["compression"] = spec.compression
    return storage


def truth_document(
    cohort: SimulatedCohort,
    specs: list[StudySpec],
    studies: list[RenderedStudy] | None,
    parameters: dict[str, Any],
) -> dict[str, Any]:
    """truth.json; `studies` None for a cohort without images. A site's outcome model is
    the shared one with its intercept shifted (b0 is the shared intercept)."""
    varying = isinstance(parameters.get("n_slices"), list)  # drawn per patient: each count recorded
    shift = {"site_logit_shift": cohort.site.response_shift} if cohort.site else {}
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": cohort.seed,
        "parameters": parameters,
        "outcome_model": {
            "b0": om.B0,
            **shift,
            "coef_image_score": om.COEF_IMAGE,
            "coef_genomic_score": om.COEF_GENOMIC,
            "hazard": {
                "image_score": om.HAZARD_IMAGE,
                "genomic_score": om.HAZARD_GENOMIC,
                "response": om.HAZARD_RESPONSE,
            },
        },
        "driver_genes": cohort.panel.driver_genes,
        "driver_weights": [float(w) for w in cohort.panel.driver_weights],
        "interaction": {
            "gene": om.INTERACTION_GENE,
            "treatment": "targeted",
            "logit_effect": dict(om.EGFR_INTERACTION),
        },
        "voxel_order": VOXEL_ORDER,
        "patients": [
            _patient_truth(p, spec, study, varying)
            for p, spec, study in zip(cohort.patients, specs, _or_none(studies, len(specs)), strict=True)
        ],
    }


def _or_none(studies: list[RenderedStudy] | None, n: int) -> list[RenderedStudy | None]:
    return [None] * n if studies is None else list(studies)


def cohort_summary(cohort: SimulatedCohort, specs: list[StudySpec]) -> dict[str, Any]:
    patients = cohort.patients
    n = len(patients)
    return {
        "generator_version": GENERATOR_VERSION,
        "n_patients": n,
        "seed": cohort.seed,
        "n_genes": len(cohort.genes),
        "subtype_counts": dict(sorted(Counter(p.subtype for p in patients).items())),
        "treatment_counts": dict(sorted(Counter(p.treatment for p in patients).items())),
        "response_rate": _r(sum(p.response for p in patients) / n),
        "censored_fraction": _r(sum(1 - p.event for p in patients) / n),
        "fraction_with_genomics": _r(sum(p.has_genomics for p in patients) / n),
        "n_rle_studies": sum(s.rle for s in specs),
        **{f"n_{kind}_studies": count for kind in (JPEG2000, JPEGLS) if (count := _count(specs, kind))},
        "n_dicom_files": sum(s.n_slices + 1 for s in specs),
    }


def _count(specs: list[StudySpec], compression: str) -> int:
    return sum(s.compression == compression for s in specs)


def write_json(document: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
