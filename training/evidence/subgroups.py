"""Performance and calibration per subgroup (sex, age band, site), with bootstrap
confidence intervals: a model that works on average can still fail one group, and
small groups need their uncertainty shown next to their number."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from radfusion.training.evidence.calibration import ece

AGE_BANDS = (0, 55, 65, 75, 200)
AGE_LABELS = ("<55", "55-64", "65-74", ">=75")
N_BOOTSTRAP = 500


def age_band(age: pd.Series) -> pd.Series:
    return pd.cut(age, bins=list(AGE_BANDS), labels=list(AGE_LABELS), right=False).astype(str)


def _bootstrap(
    metric, probability: np.ndarray, label: np.ndarray, rng: np.random.Generator, n_boot: int
) -> tuple[float, float]:
    values = []
    n = len(label)
    for _ in range(n_boot):
        pick = rng.integers(0, n, n)
        if metric is roc_auc_score and len(np.unique(label[pick])) < 2:
            continue
        values.append(
            metric(label[pick], probability[pick])
            if metric is roc_auc_score
            else metric(probability[pick], label[pick])
        )
    if not values:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [0.025, 0.975])
    return float(low), float(high)


def subgroup_table(
    probability: np.ndarray, label: np.ndarray, clinical: pd.DataFrame, n_boot: int = N_BOOTSTRAP, seed: int = 0
) -> pd.DataFrame:
    """One row per (variable, group): n, prevalence, AUROC and ECE with 95% bootstrap CIs."""
    rng = np.random.default_rng(seed)
    variables = {
        "sex": clinical["sex"].astype(str),
        "age band": age_band(clinical["age"]),
        "site": clinical["site"].astype(str),
    }
    rows = []
    for variable, values in variables.items():
        for group in sorted(values.unique()):
            mask = (values == group).to_numpy()
            p, y = probability[mask], label[mask]
            two_classes = len(np.unique(y)) == 2
            auroc = roc_auc_score(y, p) if two_classes else float("nan")
            auc_ci = _bootstrap(roc_auc_score, p, y, rng, n_boot) if two_classes else (float("nan"),) * 2
            rows.append(
                {
                    "variable": variable,
                    "group": group,
                    "n": int(mask.sum()),
                    "prevalence": float(y.mean()),
                    "auroc": float(auroc),
                    "auroc_low": auc_ci[0],
                    "auroc_high": auc_ci[1],
                    "ece": ece(p, y),
                    **dict(zip(("ece_low", "ece_high"), _bootstrap(ece, p, y, rng, n_boot), strict=True)),
                }
            )
    return pd.DataFrame(rows)
