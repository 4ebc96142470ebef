"""Named, independent random streams derived from one cohort seed.

Each part of the simulation (gene panel, patient draws, one patient's study)
draws from its own stream keyed by (seed, purpose, index). That is what makes
the cohort reproducible when studies are rendered in worker processes in any
order, and keeps one part's draws from shifting another's when code changes.
A site of a multi-site cohort (sites.py) adds its index to the key, so its
patients and studies are its own while the gene panel (keyed without a site)
stays the one all sites share; site 0 is the single-cohort key, as ever.
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
SITES = 8  # the sites' differences (scanner, noise, offset, thickness, outcome rate, panel)


def stream(seed: int, purpose: int, index: int = 0, site: int = 0) -> np.random.Generator:
    """A generator for one purpose (and one patient, via `index`; one site, via `site`:
    0, no site, is the key every single cohort has always used)."""
    if seed < 0 or site < 0:
        raise ValueError("seed and site must be non-negative integers")
    key = [seed, purpose, index, site] if site else [seed, purpose, index]
    return np.random.default_rng(np.random.SeedSequence(key))


def exact_share_mask(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask with exactly round(fraction * n) True entries at random.

    Exact counts (not Bernoulli draws) keep shares like "25% RLE" or "15%
    without genomics" exact in small test cohorts too.
    """
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, round(fraction * n), replace=False)] = True
    return mask
