"""The missing-data policy pooled across sites, for federated training.

radfusion.preprocess fits the policy (omics panels, statistics and fill values; the
clinical spec) on one table of training rows. In federated training no hospital may
share rows, so each site reports aggregated moments of its own training rows
(``site_moments``: counts, means and sums of squared deviations, level and label
counts; nothing per patient) and the sites agree, in a first round, on the one
policy pooled from them (``pool_policy``). Pooling the moments of any split of a table
gives the statistics fit_omics_block and fit_clinical_spec give on the whole table,
except the fill values, which are the pooled means rather than medians (a median needs
the rows).

Moments are (n, mean, M2) per feature, pooled with Chan et al.'s parallel update: a
sum/sum-of-squares pair loses the variance to cancellation when values sit far from
zero (1e6 with a spread of 1e-3), the (n, mean, M2) form does not.

Everything here is plain numpy/pandas: training/federated calls it, serving need not."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from radfusion.contract import DEFAULT_MAX_IMPUTED, OTHER_LEVEL, ClinicalSpec, OmicsBlock
from radfusion.errors import ClinicalInputError
from radfusion.preprocess import DEFAULT_MIN_LEVEL_COUNT, _level_text, _numeric_column

MOMENTS_VERSION = 1
POLICY_DOCUMENT_VERSION = 1
_STD_FLOOR = 1e-8  # as preprocess._nan_statistics: a constant feature gets std 1


@dataclass
class PooledPolicy:
    """The missing-data policy the sites agreed on, and what it was pooled from."""

    omics: list[OmicsBlock] = field(default_factory=list)
    clinical: ClinicalSpec | None = None
    label_counts: dict[str, int] = field(default_factory=dict)
    sites: int = 0
    # Block name -> how many sites have the block (at least one training row with it).
    block_sites: dict[str, int] = field(default_factory=dict)


# --- one site -----------------------------------------------------------------------


def site_moments(
    rows: pd.DataFrame,
    block_features: dict[str, list[str]],
    numeric: list[str],
    categorical: list[str],
    target: str | None,
    min_count: int = 1,
) -> dict:
    """JSON-ready moments of one site's training rows: per omics block the features the
    site has (a block with none of them is left out), the rows that have the block and
    per feature (n, mean, M2) of its finite values; per numeric covariate (n, mean, M2,
    missing); per categorical covariate its level counts; the label counts of ``target``
    and the number of rows. A level or label seen fewer than ``min_count`` times is
    left out (small-cell suppression; its rows then count as not having that value)."""
    omics = {}
    for name, wanted in block_features.items():
        features = [f for f in wanted if f in rows.columns]
        if not features:
            continue
        # The rows that have the block: not all NaN, fit_omics_block's rule.
        present = rows[features].notna().any(axis=1)
        matrix = np.asarray(rows.loc[present, features], dtype=np.float64)
        stats = [_moments(matrix[:, j]) for j in range(len(features))]
        omics[name] = {
            "features": features,
            "rows": int(present.sum()),
            "n": [n for n, _, _ in stats],
            "mean": [mean for _, mean, _ in stats],
            "m2": [m2 for _, _, m2 in stats],
        }
    numeric_moments = {}
    for name in numeric:
        # A covariate the site does not record is missing in every row.
        values = _numeric_column(rows[name], name) if name in rows.columns else np.full(len(rows), np.nan)
        count, mean, m2 = _moments(values)
        numeric_moments[name] = {"n": count, "mean": mean, "m2": m2, "missing": len(rows) - count}
    level_counts = {name: _counts(rows[name], min_count) if name in rows.columns else {} for name in categorical}
    labels = _counts(rows[target], min_count) if target is not None and target in rows.columns else {}
    return {
        "version": MOMENTS_VERSION,
        "n_rows": len(rows),
        "omics": omics,
        "clinical": {"numeric": numeric_moments, "categorical": level_counts},
        "labels": labels,
    }


def _moments(values: np.ndarray) -> tuple[int, float, float]:
    """(n, mean, M2) of the finite values, M2 by two passes (no cancellation)."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return 0, 0.0, 0.0
    mean = float(finite.mean())
    return len(finite), mean, float(((finite - mean) ** 2).sum())


def _counts(column: pd.Series, min_count: int) -> dict[str, int]:
    """Value text (preprocess._level_text: 2 and 2.0 are one level) -> count."""
    counts = column.dropna().map(_level_text).value_counts()
    return {str(level): int(n) for level, n in sorted(counts.items()) if n >= min_count}


# --- pooling ------------------------------------------------------------------------


def pool_policy(
    moments: list[dict],
    max_imputed: float = DEFAULT_MAX_IMPUTED,
    min_level_count: int = DEFAULT_MIN_LEVEL_COUNT,
    treatment: str | None = None,
) -> PooledPolicy:
    """The policy pooled from the sites' ``site_moments`` (sites in the given order):
    blocks and features are the union over sites in first-appearance order, mean and
    std (ddof 0) pooled over every site's finite values, fill the pooled mean; the
    clinical spec follows fit_clinical_spec's rules on the pooled counts. ValueError
    for moments of another version or malformed; ClinicalInputError for a covariate
    no site has a value of."""
    if not moments:
        raise ValueError("no site moments to pool")
    for i, site in enumerate(moments):
        _check_moments(site, f"site {i}")
    omics, block_sites = _pool_omics(moments, max_imputed)
    labels: dict[str, int] = {}
    for site in moments:
        for label, n in site["labels"].items():
            labels[label] = labels.get(label, 0) + n
    return PooledPolicy(
        omics=omics,
        clinical=_pool_clinical(moments, max_imputed, min_level_count, treatment),
        label_counts=dict(sorted(labels.items())),
        sites=len(moments),
        block_sites=block_sites,
    )


def _pool_omics(moments: list[dict], max_imputed: float) -> tuple[list[OmicsBlock], dict[str, int]]:
    # name -> feature -> pooled (n, mean, M2); dicts keep first-appearance order.
    pooled: dict[str, dict[str, tuple[int, float, float]]] = {}
    block_sites: dict[str, int] = {}
    for site in moments:
        for name, block in site["omics"].items():
            features = pooled.setdefault(name, {})
            block_sites[name] = block_sites.get(name, 0) + (block["rows"] > 0)
            for f, n, mean, m2 in zip(block["features"], block["n"], block["mean"], block["m2"], strict=True):
                features[f] = _combine(features.get(f, (0, 0.0, 0.0)), (n, mean, m2))
    blocks = []
    for name, features in pooled.items():
        mean, std = zip(*(_mean_std(stats) for stats in features.values()), strict=True)
        blocks.append(
            OmicsBlock(
                features=list(features),
                mean=list(mean),
                std=list(std),
                name=name,
                # The pooled mean, not fit_omics_block's median: a median needs the rows.
                fill=list(mean),
                max_imputed=max_imputed,
            )
        )
    return blocks, block_sites


def _pool_clinical(
    moments: list[dict], max_imputed: float, min_level_count: int, treatment: str | None
) -> ClinicalSpec | None:
    numeric: dict[str, tuple[int, float, float]] = {}
    missing: dict[str, int] = {}
    counts: dict[str, dict[str, int]] = {}
    for site in moments:
        for name, stats in site["clinical"]["numeric"].items():
            numeric[name] = _combine(numeric.get(name, (0, 0.0, 0.0)), (stats["n"], stats["mean"], stats["m2"]))
            missing[name] = missing.get(name, 0) + stats["missing"]
        for name, levels in site["clinical"]["categorical"].items():
            pooled = counts.setdefault(name, {})
            for level, n in levels.items():
                pooled[level] = pooled.get(level, 0) + n
    if both := set(numeric) & set(counts):
        raise ValueError(f"covariates reported as numeric by one site and categorical by another: {sorted(both)}")
    if not numeric and not counts:
        if treatment is not None:
            raise ValueError(f"treatment covariate {treatment!r} is not a categorical covariate at any site")
        return None
    # fit_clinical_spec's rules, on the pooled moments.
    for name in [*numeric, *counts]:
        if (numeric[name][0] if name in numeric else sum(counts[name].values())) == 0:
            raise ClinicalInputError(f"clinical covariate {name} has no value in the training rows")
    stats = {name: list(_mean_std(moments_)) for name, moments_ in numeric.items()}
    levels, merged = {}, {}
    for name, pooled in counts.items():
        seen = {level: n for level, n in pooled.items() if n > 0}
        if name == treatment:
            levels[name] = sorted(seen)  # every arm keeps its own level, however rare
            continue
        rare = sorted(level for level, n in seen.items() if n < min_level_count and level != OTHER_LEVEL)
        if rare:
            merged[name] = rare
        levels[name] = sorted({*(level for level in seen if level not in rare), OTHER_LEVEL})
    return ClinicalSpec(
        numeric=stats,
        categorical=levels,
        treatment=treatment,
        fill={name: mean for name, (mean, _) in stats.items()},  # pooled mean: a median needs the rows
        indicators=[name for name, n in missing.items() if n > 0],  # missing at any site
        merged=merged,
        max_imputed=max_imputed,
    )


def _combine(a: tuple[int, float, float], b: tuple[int, float, float]) -> tuple[int, float, float]:
    """Chan et al.'s parallel update of (n, mean, M2)."""
    (na, mean_a, m2_a), (nb, mean_b, m2_b) = a, b
    n = na + nb
    if n == 0:
        return 0, 0.0, 0.0
    delta = mean_b - mean_a
    return n, mean_a + delta * nb / n, m2_a + m2_b + delta * delta * na * nb / n


def _mean_std(stats: tuple[int, float, float]) -> tuple[float, float]:
    """Population mean and std as preprocess._nan_statistics: (0, 1) for a feature with
    no value, std 1 for a constant one."""
    n, mean, m2 = stats
    if n == 0:
        return 0.0, 1.0
    std = math.sqrt(m2 / n)
    return float(mean), std if std > _STD_FLOOR else 1.0


# --- checking what a site sent --------------------------------------------------------


def _check_moments(site: object, where: str) -> None:
    """ValueError naming what is wrong with one site's moments (another version, a
    missing key, a wrong type, lists of different lengths)."""
    _require(isinstance(site, dict), f"{where}: moments must be a dict, not {type(site).__name__}")
    assert isinstance(site, dict)  # for mypy
    version = site.get("version")
    _require(version == MOMENTS_VERSION, f"{where}: moments version {version!r}, expected {MOMENTS_VERSION}")
    for key, kind in (("n_rows", int), ("omics", dict), ("clinical", dict), ("labels", dict)):
        _require(isinstance(site.get(key), kind), f"{where}: {key!r} missing or not {kind.__name__}")
    _require(_is_count(site["n_rows"]), f"{where}: n_rows must be a count")
    for name, block in site["omics"].items():
        at = f"{where}: omics block {name!r}"
        _require(isinstance(block, dict), f"{at} must be a dict")
        for key in ("features", "n", "mean", "m2"):
            _require(isinstance(block.get(key), list), f"{at}: {key!r} missing or not a list")
        _require(_is_count(block.get("rows")), f"{at}: 'rows' must be a count")
        _require(
            len(block["features"]) == len(block["n"]) == len(block["mean"]) == len(block["m2"]),
            f"{at}: features, n, mean and m2 differ in length",
        )
        _require(all(isinstance(f, str) for f in block["features"]), f"{at}: feature names must be text")
        _require(len(set(block["features"])) == len(block["features"]), f"{at}: duplicate features")
        for n, mean, m2 in zip(block["n"], block["mean"], block["m2"], strict=True):
            _require(_is_count(n) and n <= block["rows"], f"{at}: a feature count is not a count up to 'rows'")
            _require(_is_number(mean) and _is_number(m2) and m2 >= 0, f"{at}: a mean or M2 is not a finite number")
    clinical = site["clinical"]
    for key in ("numeric", "categorical"):
        _require(isinstance(clinical.get(key), dict), f"{where}: clinical {key!r} missing or not a dict")
    for name, stats in clinical["numeric"].items():
        at = f"{where}: numeric covariate {name!r}"
        _require(isinstance(stats, dict), f"{at} must be a dict")
        _require(_is_count(stats.get("n")) and _is_count(stats.get("missing")), f"{at}: n and missing must be counts")
        _require(_is_number(stats.get("mean")) and _is_number(stats.get("m2")), f"{at}: mean and m2 must be numbers")
    for name, levels in clinical["categorical"].items():
        _require(isinstance(levels, dict), f"{where}: categorical covariate {name!r} must map level -> count")
        _require(all(_is_count(n) for n in levels.values()), f"{where}: categorical covariate {name!r}: bad count")
    _require(all(_is_count(n) for n in site["labels"].values()), f"{where}: label counts must be counts")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --- the agreed policy as a document ----------------------------------------------------


def policy_document(policy: PooledPolicy) -> dict:
    """The policy as JSON-ready data (the blocks and clinical spec as dataclasses.asdict)."""
    return {
        "version": POLICY_DOCUMENT_VERSION,
        "omics": [dataclasses.asdict(block) for block in policy.omics],
        "clinical": dataclasses.asdict(policy.clinical) if policy.clinical is not None else None,
        "label_counts": dict(policy.label_counts),
        "sites": policy.sites,
        "block_sites": dict(policy.block_sites),
    }


def policy_from_document(doc: dict) -> PooledPolicy:
    """A policy_document read back. ValueError for another version or a missing key."""
    version = doc.get("version") if isinstance(doc, dict) else None
    _require(version == POLICY_DOCUMENT_VERSION, f"policy document version {version!r}, expected 1")
    try:
        return PooledPolicy(
            omics=[OmicsBlock.from_dict(block) for block in doc["omics"]],
            clinical=ClinicalSpec(**doc["clinical"]) if doc["clinical"] is not None else None,
            label_counts={str(k): int(v) for k, v in doc["label_counts"].items()},
            sites=int(doc["sites"]),
            block_sites={str(k): int(v) for k, v in doc["block_sites"].items()},
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed policy document: {exc!r}") from exc
