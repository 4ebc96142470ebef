"""One (repeat 0, fold) result as training/cv/fold.py returns it, for tests of the
cross-validation table and report: a survival task whose 4 test patients every model
ranks perfectly, each model with the given metric and seconds."""

from __future__ import annotations


def fake_fold(fold: int, metrics: dict[str, float], seconds: dict[str, float] | None = None, n_train: int = 8) -> dict:
    rows = [
        {
            "repeat": 0,
            "fold": fold,
            "model": m,
            "patient_id": f"p{fold}{i}",
            "risk": float(-i),
            "time": i + 1.0,
            "event": 1,
        }
        for m in metrics
        for i in range(4)
    ]
    seconds = seconds or dict.fromkeys(metrics, 1.0)
    return {
        "repeat": 0,
        "fold": fold,
        "survival": True,
        "task": "survival_cox",
        "labels": ["censored", "event"],
        "modalities": ["genomics", "clinical"],
        "fusion": "late",
        "n_train": n_train,
        "n_val": 2,
        "n_test": 4,
        "models": {m: {"metric": v, "seconds": seconds[m], "evaluate": {}, "chosen": {}} for m, v in metrics.items()},
        "predictions": rows,
    }
