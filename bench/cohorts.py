"""The synthetic cohort each benchmark measures on, generated once per size under its
work folder and reused by later runs."""

from __future__ import annotations

import os
from pathlib import Path


def build_cohort(work: Path, patients: int, slices: int, size: int, **options) -> Path:
    """``work/cohort-{patients}x{slices}x{size}``; ``options`` go to generate_cohort."""
    from radfusion.synth import generate_cohort

    cohort = work / f"cohort-{patients}x{slices}x{size}"
    if not (cohort / "cohort.json").exists():
        generate_cohort(
            cohort,
            n_patients=patients,
            seed=0,
            n_slices=slices,
            rows=size,
            cols=size,
            workers=os.cpu_count() or 1,
            **options,
        )
    return cohort
