"""Synthetic radiogenomic cohort: CT studies as DICOM, genomics and clinical
tables, and the ground truth that links them.

Real radiogenomic cohorts cannot ship with the project, so this generator makes
one whose signal is known by construction: response depends equally on an image
phenotype (lesion size, contrast, texture) and on a genomic score (twelve
driver genes on a shared driver program), so neither modality alone predicts
well and fusion does.

    from radfusion.synth import generate_cohort
    generate_cohort(Path("data/synth"), n_patients=400, seed=0, workers=2)

`simulate_patients` draws the same patients without writing any image, for
fast checks of the statistical design.
"""

from __future__ import annotations

from radfusion.synth.cohort import generate_cohort, plan_studies
from radfusion.synth.patients import PatientRecord, SimulatedCohort, simulate_patients
from radfusion.synth.tables import clinical_table, genomics_table

__all__ = [
    "PatientRecord",
    "SimulatedCohort",
    "clinical_table",
    "generate_cohort",
    "genomics_table",
    "plan_studies",
    "simulate_patients",
]
