"""The evidence checked against the synthetic cohort's truth.json: each check says
what was measured, on how many patients, the threshold and whether it passed. A
real cohort has no truth file; the analyses run the same, without these lines."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.training.evidence.saliency import Saliency, inside_ellipsoid

TOP_GENES = 20
MIN_DRIVERS_IN_TOP = 8
MIN_SALIENCY_HITS = 0.80
MAX_LOGRANK_P = 0.01
MIN_TREATMENT_AGREEMENT = 0.80
MAX_ECE = 0.05


@dataclass
class Check:
    name: str
    measured: float
    threshold: str
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def load_truth(cohort_dir: Path) -> dict | None:
    path = Path(cohort_dir) / "truth.json"
    return json.loads(path.read_text()) if path.exists() else None


def patients_by_id(truth: dict) -> dict[str, dict]:
    return {p["patient_id"]: p for p in truth["patients"]}


def check_drivers(truth: dict, ranking: pd.DataFrame, top: int = TOP_GENES) -> Check:
    drivers = set(truth["driver_genes"])
    found = sorted(drivers & set(ranking.index[:top]))
    return Check(
        "driver genes in the top 20",
        len(found),
        f">= {MIN_DRIVERS_IN_TOP} of {len(drivers)}",
        len(found) >= MIN_DRIVERS_IN_TOP,
        f"found {', '.join(found) or 'none'}",
    )


def check_saliency(truth: dict, saliencies: list[Saliency]) -> Check:
    patients = patients_by_id(truth)
    hits = [
        inside_ellipsoid(
            s.peak_mm, patients[s.patient_id]["lesion_centre_mm"], patients[s.patient_id]["lesion_semi_axes_mm"]
        )
        for s in saliencies
    ]
    share = float(np.mean(hits)) if hits else float("nan")
    return Check(
        "saliency peak inside the planted lesion",
        share,
        f">= {MIN_SALIENCY_HITS:.0%}",
        bool(hits) and share >= MIN_SALIENCY_HITS,
        f"{sum(hits)} of {len(hits)} held-out patients",
    )


def check_logrank(result: dict) -> Check:
    p = result["p_value"]
    return Check(
        "risk groups separate survival (log-rank)",
        p,
        f"p < {MAX_LOGRANK_P}",
        p < MAX_LOGRANK_P,
        f"{result['n']} held-out patients, groups {result['n_per_group']}",
    )


def check_treatment(truth: dict, ranking: pd.DataFrame) -> Check:
    patients = patients_by_id(truth)
    agree = [ranking.loc[pid, "recommended"] == patients[pid]["best_treatment"] for pid in ranking.index]
    share = float(np.mean(agree))
    switched = int((ranking["recommended"] != ranking.attrs.get("reference", ranking["recommended"].iloc[0])).sum())
    return Check(
        "top-ranked treatment equals the true best",
        share,
        f">= {MIN_TREATMENT_AGREEMENT:.0%}",
        share >= MIN_TREATMENT_AGREEMENT,
        f"{sum(agree)} of {len(agree)} held-out patients; {switched} switched from the reference "
        f"(margin {ranking.attrs.get('margin')} log-odds)",
    )


def check_calibration(summary: dict) -> Check:
    value = summary["ece_after"]
    return Check(
        "ECE after temperature scaling",
        value,
        f"<= {MAX_ECE}",
        value <= MAX_ECE,
        f"{summary['n']} held-out patients, {summary['n_bins']} bins, T = {summary['temperature']:.3f} "
        f"(ECE before {summary['ece_before']:.3f}){_calibration_floor(summary)}",
    )


def _calibration_floor(summary: dict) -> str:
    """What sampling noise alone gives at this n (see calibration.perfect_calibration_ece)."""
    text = ""
    if "ece_perfect_p95" in summary:
        text += (
            f"; perfectly calibrated, these probabilities would show ECE {summary['ece_perfect_mean']:.3f} "
            f"on average, 95% of draws <= {summary['ece_perfect_p95']:.3f}"
        )
    if "cross_fitted" in summary:
        c = summary["cross_fitted"]
        text += (
            f"; validation + test with {c['folds']}-fold cross-fitted T: ECE {c['ece']:.3f} on {c['n']} "
            f"(perfect-calibration 95%: {c['ece_perfect_p95']:.3f})"
        )
    return text
