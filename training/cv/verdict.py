"""What a paired difference (deep model minus a classical baseline, on the same
patients) says, in the words the tables and the report use: where the deep model
loses to a baseline on a cohort, the reader is told so and pointed to the baseline."""

from __future__ import annotations

import math

BETTER = "better"  # the deep model: the whole interval above zero
WORSE = "worse"  # the baseline: the whole interval below zero
WORSE_WITHIN_NOISE = "worse on average"  # below zero on average, the interval includes zero
SIMILAR = "no clear difference"
UNDEFINED = "undefined"


def judge(difference: float | None, low: float | None, high: float | None) -> str:
    """One of the words above for ``difference`` (deep − baseline) and its 95% interval."""
    if difference is None or not math.isfinite(difference):
        return UNDEFINED
    bounded = low is not None and high is not None and math.isfinite(low) and math.isfinite(high)
    if bounded and high < 0:
        return WORSE
    if bounded and low > 0:
        return BETTER
    return WORSE_WITHIN_NOISE if difference < 0 else SIMILAR


def sentence(model: str, baseline: str, difference: float, low: float, high: float, metric: str, where: str) -> str:
    """The plain-words reading of one comparison (``difference``, ``low``, ``high``:
    model − baseline and its 95% interval); ``where``: "this test split", "these folds"."""
    word = judge(difference, low, high)
    low, high = (v if v is not None and math.isfinite(v) else math.nan for v in (low, high))
    if word == WORSE:
        return (
            f"{baseline} is better than {model} on {where} by {-difference:.3f} {metric} "
            f"(95% CI {-high:.3f} to {-low:.3f}): use {baseline} for this cohort instead of {model}."
        )
    if word == WORSE_WITHIN_NOISE:
        return (
            f"{baseline} did better than {model} on {where} by {-difference:.3f} {metric} on average "
            f"(95% CI {_signed(-high)} to {_signed(-low)}, which includes no difference): {model} has not "
            f"shown that it beats {baseline}; consider {baseline} for this cohort."
        )
    interval = f"95% CI {_signed(low)} to {_signed(high)}"
    if word == BETTER:
        return f"{model} is better than {baseline} on {where} by {difference:.3f} {metric} ({interval})."
    if word == SIMILAR:
        return (
            f"{model} and {baseline} are not clearly different on {where}: {_signed(difference)} {metric} ({interval})."
        )
    return f"{model} against {baseline}: undefined on {where} (no comparable pair, or a single class)."


def loses(difference: float | None, low: float | None, high: float | None) -> bool:
    """The deep model did worse than the baseline, clearly or on average."""
    return judge(difference, low, high) in (WORSE, WORSE_WITHIN_NOISE)


def model_summary(model: str, comparisons: dict[str, dict], metric: str, where: str) -> str | None:
    """One sentence for a deep model that loses to one or more baselines (its
    comparisons: baseline -> {"difference", "ci95"}): the baseline ahead by the most,
    and the others ahead of it; None when it loses to none."""
    losing = {b: c for b, c in comparisons.items() if loses(c["difference"], *c["ci95"])}
    if not losing:
        return None
    worst = min(losing, key=lambda b: losing[b]["difference"])
    text = sentence(model, worst, losing[worst]["difference"], *losing[worst]["ci95"], metric, where)
    others = [b for b in losing if b != worst]
    return text + (f" Also ahead of {model}: {', '.join(others)}." if others else "")


def _signed(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:+.3f}"
