"""The missing-data policy pooled from sites' moments (radfusion.pooled_policy): the
same statistics as fitting on the whole table, from moments that carry nothing per
patient."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from radfusion.contract import OTHER_LEVEL
from radfusion.errors import ClinicalInputError
from radfusion.pooled_policy import policy_document, policy_from_document, pool_policy, site_moments
from radfusion.preprocess import fit_clinical_spec, fit_omics_block

BLOCKS = {"expression": ["EGFR", "KRAS", "TP53", "FLAT", "NEVER"], "mutation": ["EGFR_mut", "KRAS_mut"]}
NUMERIC = ["age", "bmi"]
CATEGORICAL = ["stage", "sex", "arm"]


def _table(seed: int = 0, n: int = 80) -> pd.DataFrame:
    """Training rows with what the policy must handle: rows without a block, scattered
    gaps, an infinite value, a constant and a never-observed feature, integer levels
    read as floats, rare levels and a rare treatment arm."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "EGFR": rng.normal(5.0, 2.0, n),
            "KRAS": rng.normal(-1.0, 0.5, n),
            "TP53": rng.normal(100.0, 10.0, n),
            "FLAT": np.full(n, 3.0),
            "NEVER": np.full(n, np.nan),
            "EGFR_mut": rng.integers(0, 2, n).astype(float),
            "KRAS_mut": rng.integers(0, 2, n).astype(float),
            "age": rng.normal(60.0, 9.0, n).round(1),
            "bmi": rng.normal(26.0, 4.0, n),
            "stage": rng.choice([1.0, 2.0, 3.0, 4.0], n, p=[0.4, 0.35, 0.2, 0.05]),
            "sex": rng.choice(["F", "M", "X"], n, p=[0.48, 0.48, 0.04]),
            "arm": rng.choice(["chemo", "immuno", "trial"], n, p=[0.5, 0.45, 0.05]),
            "response": rng.integers(0, 2, n),
        },
        index=[f"PATIENT-XYZ-{i:04d}" for i in range(n)],
    )
    expression = BLOCKS["expression"][:3]
    table.loc[rng.random(n) < 0.2, [*expression, "FLAT"]] = np.nan  # rows without the block
    table.loc[rng.random(n) < 0.3, BLOCKS["mutation"]] = np.nan
    for column in [*expression, "age", "stage", "sex"]:
        table.loc[rng.random(n) < 0.1, column] = np.nan  # scattered gaps
    table.iloc[3, table.columns.get_loc("TP53")] = np.inf  # present, but not a value
    return table


def _split(table: pd.DataFrame, parts: int, seed: int) -> list[pd.DataFrame]:
    order = np.random.default_rng(seed).permutation(len(table))
    return [table.iloc[chunk] for chunk in np.array_split(order, parts)]


def _moments(table: pd.DataFrame, **kwargs) -> dict:
    return site_moments(table, BLOCKS, NUMERIC, CATEGORICAL, "response", **kwargs)


def _via_json(moments: dict) -> dict:
    """What another site receives: the moments through JSON (plain types only)."""
    return json.loads(json.dumps(moments, allow_nan=False))


@pytest.mark.parametrize("parts", [1, 2, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooled_moments_reproduce_fitting_on_the_whole_table(parts, seed):
    table = _table(seed)
    policy = pool_policy([_via_json(_moments(part)) for part in _split(table, parts, seed)], treatment="arm")

    assert [block.name for block in policy.omics] == list(BLOCKS)
    for block in policy.omics:
        whole = fit_omics_block(table, block.name, BLOCKS[block.name])
        assert block.features == whole.features
        np.testing.assert_allclose(block.mean, whole.mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(block.std, whole.std, rtol=1e-9)
        assert block.fill == block.mean  # pooled mean, not the median
    expression = policy.omics[0]
    assert expression.mean[3:] == [3.0, 0.0] and expression.std[3:] == [1.0, 1.0]  # constant; never seen

    whole = fit_clinical_spec(table, NUMERIC, CATEGORICAL, "arm")
    clinical = policy.clinical
    assert clinical is not None
    for name in NUMERIC:
        np.testing.assert_allclose(clinical.numeric[name], whole.numeric[name], rtol=1e-9)
        assert clinical.fill[name] == clinical.numeric[name][0]
    assert clinical.categorical == whole.categorical
    assert clinical.merged == whole.merged
    assert clinical.indicators == whole.indicators == ["age"]
    assert clinical.treatment == "arm" and clinical.treatments == sorted(set(table["arm"]))
    assert policy.label_counts == {str(k): int(v) for k, v in table["response"].value_counts().items()}
    assert policy.sites == parts


def test_levels_are_texts_as_preprocess_makes_them():
    policy = pool_policy([_moments(_table())], min_level_count=1)
    assert policy.clinical is not None
    assert policy.clinical.categorical["stage"] == ["1", "2", "3", "4", OTHER_LEVEL]


def test_a_site_missing_genes_shares_the_rest():
    table = _table()
    first, second = table.iloc[:40], table.iloc[40:].drop(columns=["KRAS", "EGFR_mut"])
    policy = pool_policy([_moments(second), _moments(first)])

    expression, mutation = policy.omics
    assert expression.features == ["EGFR", "TP53", "FLAT", "NEVER", "KRAS"]  # second site's panel first
    assert mutation.features == ["KRAS_mut", "EGFR_mut"]
    kras = fit_omics_block(first, "expression", ["KRAS"])  # only the first site has it
    np.testing.assert_allclose(expression.mean[4], kras.mean[0], rtol=1e-9)
    np.testing.assert_allclose(expression.std[4], kras.std[0], rtol=1e-9)
    egfr = fit_omics_block(table, "expression", ["EGFR"])  # both sites have it
    np.testing.assert_allclose(expression.mean[0], egfr.mean[0], rtol=1e-9)


def test_a_site_without_omics_or_a_clinical_column():
    table = _table()
    no_omics = table.iloc[:30].drop(columns=[f for block in BLOCKS.values() for f in block])
    no_bmi = table.iloc[30:].drop(columns=["bmi"])
    moments = _moments(no_omics)
    assert moments["omics"] == {}
    assert _moments(no_bmi)["clinical"]["numeric"]["bmi"] == {"n": 0, "mean": 0.0, "m2": 0.0, "missing": 50}

    policy = pool_policy([moments, _moments(no_bmi)])
    assert policy.block_sites == {"expression": 1, "mutation": 1}
    expression = fit_omics_block(no_bmi, "expression", BLOCKS["expression"])
    np.testing.assert_allclose(policy.omics[0].mean, expression.mean, rtol=1e-9)
    assert policy.clinical is not None
    np.testing.assert_allclose(
        policy.clinical.numeric["bmi"], fit_clinical_spec(table.iloc[:30], ["bmi"], []).numeric["bmi"]
    )
    assert "bmi" in policy.clinical.indicators  # missing at one site


def test_a_covariate_no_site_has_is_an_error():
    sites = [_moments(part.drop(columns=["bmi"])) for part in _split(_table(), 2, 0)]
    with pytest.raises(ClinicalInputError, match="bmi"):
        pool_policy(sites)


def test_no_clinical_covariates_no_clinical_spec():
    policy = pool_policy([site_moments(_table(), BLOCKS, [], [], None)])
    assert policy.clinical is None and policy.label_counts == {}


def test_large_offsets_keep_the_spread():
    """Values of 1e6 with a spread of 1e-3: a sum of squares would lose it all."""
    rng = np.random.default_rng(7)
    table = pd.DataFrame({"G": 1e6 + rng.normal(0.0, 1e-3, 400), "age": 1e6 + rng.normal(0.0, 1e-3, 400)})
    sites = [site_moments(part, {"expression": ["G"]}, ["age"], [], None) for part in _split(table, 5, 7)]
    policy = pool_policy(sites)
    np.testing.assert_allclose(policy.omics[0].std, [np.std(table["G"])], rtol=1e-6)
    assert policy.clinical is not None
    np.testing.assert_allclose(policy.clinical.numeric["age"][1], np.std(table["age"]), rtol=1e-6)


def test_moments_carry_nothing_per_patient():
    table = _table()
    text = json.dumps(_moments(table))
    assert "PATIENT" not in text and "XYZ" not in text
    for column in ["EGFR", "KRAS", "TP53", "bmi"]:
        for value in table[column].dropna():
            assert repr(float(value)) not in text


def test_small_cells_can_be_suppressed():
    moments = _moments(_table(), min_count=10)
    assert all(n >= 10 for levels in moments["clinical"]["categorical"].values() for n in levels.values())
    assert "trial" not in moments["clinical"]["categorical"]["arm"]


def test_policy_document_round_trip():
    policy = pool_policy([_moments(part) for part in _split(_table(), 3, 0)], treatment="arm")
    doc = json.loads(json.dumps(policy_document(policy)))
    assert policy_from_document(doc) == policy
    with pytest.raises(ValueError, match="version"):
        policy_from_document({**doc, "version": 2})


def _broken(change) -> dict:
    moments = copy.deepcopy(_moments(_table()))
    change(moments)
    return moments


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(version=2), "version 2"),
        (lambda m: m.pop("version"), "version None"),
        (lambda m: m.pop("omics"), "'omics'"),
        (lambda m: m["omics"]["expression"]["mean"].pop(), "differ in length"),
        (lambda m: m["omics"]["expression"]["n"].__setitem__(0, -1), "count"),
        (lambda m: m["omics"]["expression"]["m2"].__setitem__(0, "x"), "finite number"),
        (lambda m: m["clinical"]["numeric"]["age"].pop("n"), "'age'"),
        (lambda m: m["clinical"]["categorical"]["sex"].__setitem__("F", 1.5), "'sex'"),
        (lambda m: m.update(labels=[1, 2]), "'labels'"),
    ],
)
def test_malformed_moments_are_refused(change, message):
    good = _moments(_table())
    with pytest.raises(ValueError, match=message):
        pool_policy([good, _broken(change)])


def test_numeric_at_one_site_categorical_at_another_is_refused():
    table = _table()
    one = site_moments(table, {}, ["age"], [], None)
    other = site_moments(table, {}, [], ["age"], None)
    with pytest.raises(ValueError, match="age"):
        pool_policy([one, other])
