"""What a site checks before SecAgg+ masks its update."""

from __future__ import annotations

import numpy as np


def check_secagg_range(weights: list[np.ndarray], clip: float) -> None:
    """SecAgg+ clips every value to [-clip, clip] before quantising: refuse instead, so
    no update is silently changed."""
    worst = max((float(np.max(np.abs(w))) for w in weights if w.size), default=0.0)
    if worst > clip:
        raise ValueError(
            f"a model value of magnitude {worst:.3g} lies outside SecAgg+'s range [-{clip}, {clip}]; "
            "raise --secagg-clip"
        )
