"""Client-side differential privacy for a site's update (DP-FedAvg, McMahan et al.
2018): the update is clipped to an L2 norm and Gaussian noise of std noise * clip is
added before it leaves the site, so each round is a Gaussian mechanism over the
site's whole contribution. The budget (epsilon at delta) over the rounds comes from
Google's dp-accounting (Renyi DP), as Flower's DP tooling uses it."""

from __future__ import annotations

import numpy as np


def privatise(new: list[np.ndarray], old: list[np.ndarray], clip: float, noise: float, rng: np.random.Generator):
    """global + clip(update) + N(0, (noise * clip)^2), per value; and the update's norm."""
    update = [n.astype(np.float64) - o for n, o in zip(new, old, strict=True)]
    norm = float(np.sqrt(sum(float(np.sum(u * u)) for u in update)))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    sigma = noise * clip
    out = [
        (o + u * scale + rng.normal(0.0, sigma, size=u.shape)).astype(n.dtype)
        for n, o, u in zip(new, old, update, strict=True)
    ]
    return out, norm


def epsilon(noise: float, rounds: int, delta: float) -> float:
    """The (epsilon, delta) budget each site spends over ``rounds`` noised updates
    (inf without noise)."""
    if noise <= 0:
        return float("inf")
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant

    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(dp_event.GaussianDpEvent(noise), count=rounds)
    return float(accountant.get_epsilon(delta))
