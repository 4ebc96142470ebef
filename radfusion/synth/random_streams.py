"""Named, independent random streams derived from one cohort seed.

Each part of the simulation (gene panel, patient draws, one patient's study)
draws from its own stream keyed by (seed, purpose, index). That is what makes
the cohort reproducible when studies are rendered in worker processes in any
order, and keeps one part's draws from shifting another's when code changes.
"""

from __future__ import annotations

import numpy as np

# Stream purposes. Values are part of the cohort's identity: do not renumber.
PANEL = 1
PATIENTS = 2
STUDY_SPEC = 3
PHANTOM = 4
STORAGE = 5
COMPRESSION = 6  # which studies are JPEG 2000 or JPEG-LS (drawn only when a cohort asks for them)
SLICE_COUNTS = 7  # per-patient slice counts (drawn only when a cohort asks for a range)


def stream(seed: int, purpose: int, index: int = 0) -> np.random.Generator:
    """A generator for one purpose (and one patient, via `index`)."""
    if seed < 0:
        raise ValueError("seed must be a non-negative integer")
    return np.random.default_rng(np.random.SeedSequence([seed, purpose, index]))


def exact_share_mask(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask with exactly round(fraction * n) True entries at random.

    Exact counts (not Bernoulli draws) keep shares like "25% RLE" or "15%
    without genomics" exact in small test cohorts too.
    """
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, round(fraction * n), replace=False)] = True
    return mask
