"""The weights that travel: the module's floating-point state (parameters and
BatchNorm statistics) in state_dict order. Integer buffers (BatchNorm's batch count)
stay at each site: they do not average."""

from __future__ import annotations

import numpy as np
import torch


def exchanged_keys(module: torch.nn.Module) -> list[str]:
    return [k for k, v in module.state_dict().items() if v.is_floating_point()]


def get_weights(module: torch.nn.Module) -> list[np.ndarray]:
    state = module.state_dict()
    return [state[k].detach().cpu().numpy().copy() for k in exchanged_keys(module)]


def set_weights(module: torch.nn.Module, weights: list[np.ndarray]) -> None:
    """Load what the server sent; a different architecture is an error naming the first
    difference (the site runs other configs or another radfusion version)."""
    keys = exchanged_keys(module)
    state = module.state_dict()
    if len(keys) != len(weights):
        raise ValueError(f"the server sent {len(weights)} arrays, this site's model has {len(keys)}")
    for key, array in zip(keys, weights, strict=True):
        if tuple(state[key].shape) != tuple(array.shape):
            raise ValueError(
                f"{key}: the server sent shape {array.shape}, this site's model has {tuple(state[key].shape)}"
            )
        state[key].copy_(torch.as_tensor(array, dtype=state[key].dtype))


def update_norm(new: list[np.ndarray], old: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum((n.astype(np.float64) - o) ** 2)) for n, o in zip(new, old, strict=True))))
