"""Per-patient latent variables, genomics and outcomes, without any imaging I/O.

`simulate_patients` is the whole statistical model of the cohort in one cheap,
vectorised call: tests and evaluation can draw thousands of patients to check
the signal design without writing a single DICOM file. `generate_cohort` calls it
first and then renders each patient's study from the record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from radfusion.synth import genomics_model as gm
from radfusion.synth import outcome_model as om
from radfusion.synth.random_streams import PANEL, PATIENTS, exact_share_mask, stream
from radfusion.synth.site_profile import SiteProfile

SITES = ("site_A", "site_B", "site_C", "site_D")
SITE_PROBS = (0.35, 0.30, 0.20, 0.15)


def lesion_radius_mm(z_img: np.ndarray) -> np.ndarray:
    return np.clip(20.0 + 5.0 * z_img, 8.0, 36.0)


def lesion_contrast_hu(z_img: np.ndarray) -> np.ndarray:
    """Lesion HU above the surrounding soft tissue."""
    return np.clip(80.0 + 25.0 * z_img, 30.0, 160.0)


def lesion_texture_std_hu(z_img: np.ndarray) -> np.ndarray:
    """Internal heterogeneity: higher-score lesions are more heterogeneous."""
    return np.clip(12.0 + 8.0 * z_img, 4.0, 36.0)


@dataclass(frozen=True)
class PatientRecord:
    """Everything the simulation knows about one patient (observed and latent)."""

    index: int
    patient_id: str
    subtype: str
    treatment: str
    sex: str
    age: int
    site: str
    image_score: float
    genomic_score: float
    mutations: dict[str, int]
    has_genomics: bool
    p_chemo: float
    p_targeted: float
    response_probability: float  # under the treatment actually given
    best_treatment: str
    response: int
    survival_months: float
    event: int
    lesion_radius_mm: float
    lesion_contrast_hu: float
    lesion_texture_std_hu: float


@dataclass(frozen=True)
class SimulatedCohort:
    """The patients plus the genomic model and the full expression matrix.

    `expression` holds a row for every patient, including those whose genomics
    is not released (has_genomics False): their outcome still depends on it.
    """

    seed: int
    patients: list[PatientRecord]
    panel: gm.PanelModel
    expression: np.ndarray
    site: SiteProfile | None = None  # one site of a multi-site cohort (None: a single cohort)

    @property
    def genes(self) -> list[str]:
        return self.panel.genes

    @property
    def measured_genes(self) -> list[str]:
        """The panel genes this cohort releases: all but those its site does not measure."""
        dropped = set(self.site.dropped_genes) if self.site else set()
        return [g for g in self.panel.genes if g not in dropped]

    def measured_expression(self, rows: list[int]) -> np.ndarray:
        """The expression of these patients (row indices) in the measured genes' columns."""
        values = self.expression[rows]
        if self.site and self.site.dropped_genes:
            dropped = set(self.site.dropped_genes)
            values = values[:, [i for i, g in enumerate(self.panel.genes) if g not in dropped]]
        return values


def _patient_ids(n: int, rng: np.random.Generator) -> list[str]:
    """Unique MRN-like IDs, sorted, so row order says nothing about the draws."""
    numbers = np.sort(rng.choice(9_000_000, n, replace=False) + 1_000_000)
    return [f"RFP{num:07d}" for num in numbers]


def simulate_patients(
    n_patients: int,
    seed: int = 0,
    n_genes: int = 300,
    genomics_missing_fraction: float = 0.15,
    site: SiteProfile | None = None,
) -> SimulatedCohort:
    """Draw the cohort's latent scores, genomics, treatment and outcomes (one site's
    patients from the shared panel when `site` is given: see site_profile.py)."""
    if n_patients < 1:
        raise ValueError("n_patients must be at least 1")
    if not 0.0 <= genomics_missing_fraction <= 1.0:
        raise ValueError("genomics_missing_fraction must be within [0, 1]")
    panel = gm.build_panel_model(n_genes, stream(seed, PANEL))
    rng = stream(seed, PATIENTS, site=site.index if site else 0)
    n = n_patients
    shift = site.response_shift if site else 0.0

    ids = [f"{site.id_prefix if site else ''}{pid}" for pid in _patient_ids(n, rng)]
    subtype_codes = rng.choice(3, n, p=gm.SUBTYPE_PROBS)
    treatment = np.where(rng.random(n) < 0.5, "chemo", "targeted")
    sex = np.where(rng.random(n) < 0.55, "M", "F")
    age = np.clip(np.round(rng.normal(64.0, 10.0, n)), 30, 90).astype(int)
    site_codes = rng.choice(len(SITES), n, p=SITE_PROBS)
    z_img = rng.standard_normal(n)
    expression = gm.simulate_expression(panel, subtype_codes, rng)
    z_gen = gm.genomic_score(panel, expression)
    mutations = gm.simulate_mutations(n, rng)
    has_genomics = ~exact_share_mask(n, genomics_missing_fraction, rng) & (site is None or site.omics)

    egfr = mutations["EGFR"]
    p_chemo = om.response_probability(z_img, z_gen, egfr, np.full(n, "chemo"), shift)
    p_targeted = om.response_probability(z_img, z_gen, egfr, np.full(n, "targeted"), shift)
    p_given = np.where(treatment == "targeted", p_targeted, p_chemo)
    response = (rng.random(n) < p_given).astype(int)
    months, event = om.simulate_survival(om.survival_hazard(z_img, z_gen, response), rng)
    best = om.best_treatment(p_chemo, p_targeted)

    radius = lesion_radius_mm(z_img)
    contrast = lesion_contrast_hu(z_img)
    texture = lesion_texture_std_hu(z_img)
    patients = [
        PatientRecord(
            index=i,
            patient_id=ids[i],
            subtype=gm.SUBTYPES[subtype_codes[i]],
            treatment=str(treatment[i]),
            sex=str(sex[i]),
            age=int(age[i]),
            site=site.name if site else SITES[site_codes[i]],
            image_score=float(z_img[i]),
            genomic_score=float(z_gen[i]),
            mutations={g: int(mutations[g][i]) for g in gm.MUTATION_GENES},
            has_genomics=bool(has_genomics[i]),
            p_chemo=float(p_chemo[i]),
            p_targeted=float(p_targeted[i]),
            response_probability=float(p_given[i]),
            best_treatment=str(best[i]),
            response=int(response[i]),
            survival_months=round(float(months[i]), 2),
            event=int(event[i]),
            lesion_radius_mm=float(radius[i]),
            lesion_contrast_hu=float(contrast[i]),
            lesion_texture_std_hu=float(texture[i]),
        )
        for i in range(n)
    ]
    return SimulatedCohort(seed=seed, patients=patients, panel=panel, expression=expression, site=site)
