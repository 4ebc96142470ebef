"""The one missing-data policy (radfusion.preprocess): fitted on training rows, kept in
the contract, applied alike to every case, and reported per case."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from radfusion.contract import ClinicalSpec, ImageGeometry, ModelContract
from radfusion.errors import ClinicalInputError, GenePanelError, InvalidValueError, NoModalityError
from radfusion.preprocess import (
    build_inputs,
    fit_clinical_spec,
    fit_omics_block,
    preprocess_clinical,
    preprocess_omics,
)

GENES = ["A", "B", "C", "D"]


def _training_genomics() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "A": [1.0, 2.0, 10.0, np.nan, np.nan],
            "B": [0.0, 0.0, 4.0, 1.0, np.nan],
            "C": [np.nan, np.nan, np.nan, np.nan, np.nan],
            "D": [5.0, 5.0, 5.0, 5.0, np.nan],
        },
        index=["p1", "p2", "p3", "p4", "p5"],  # p5 has no genomics at all
    )


def test_omics_fill_is_the_training_median_of_the_rows_that_have_the_block() -> None:
    block = fit_omics_block(_training_genomics(), "expression", GENES)
    assert block.fill == pytest.approx([2.0, 0.5, 0.0, 5.0])  # medians; C never seen: its mean 0
    assert block.mean == pytest.approx([13 / 3, 1.25, 0.0, 5.0])
    assert block.std[2:] == [1.0, 1.0]  # never seen and constant: std 1, passed through centred
    assert block.max_imputed == 0.5


def test_a_block_is_imputed_up_to_its_cap_and_absent_beyond_it() -> None:
    block = fit_omics_block(_training_genomics(), "expression", GENES)
    half = preprocess_omics({"A": 2.0, "B": float("nan"), "D": 5.0}, [block])  # B and C missing: 2 of 4
    assert half.present == ["expression"]
    assert half.filled["expression"].answer() == {"imputed": 2, "of": 4, "treated_as_absent": False}
    mean, std = np.array(block.mean), np.array(block.std)
    expected = (np.array([2.0, 0.5, 0.0, 5.0]) - mean) / std
    assert half.values == pytest.approx(expected.astype(np.float32))
    over = preprocess_omics({"A": 2.0}, [block])  # 3 of 4 missing
    assert over.present == [] and not over.values.any()
    assert over.filled["expression"].answer() == {"imputed": 3, "of": 4, "treated_as_absent": True}


def test_a_value_that_is_there_must_still_be_a_finite_number() -> None:
    block = fit_omics_block(_training_genomics(), "expression", GENES)
    for bad in (float("inf"), "high", 10**400):
        with pytest.raises(InvalidValueError, match="expression block: 1 genes have values that are not finite"):
            preprocess_omics({"A": bad, "B": 1.0, "C": 0.0, "D": 5.0}, [block])


def _training_clinical() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [50.0, 60.0, np.nan, 70.0, 80.0, 40.0],
            "size": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "grade": ["1", "1", "2", "2", "2", "unkown"],
            "stage": [1.0, 1.0, 2.0, np.nan, 2.0, 2.0],  # a coded level read as float (a gap)
            "arm": ["chemo", "chemo", "chemo", "targeted", "targeted", "targeted"],
        }
    )


def _spec() -> ClinicalSpec:
    return fit_clinical_spec(
        _training_clinical(), ["age", "size"], ["grade", "stage", "arm"], treatment="arm", min_level_count=2
    )


def test_clinical_policy_is_fitted_on_the_training_rows() -> None:
    spec = _spec()
    assert spec.fill == {"age": 60.0, "size": 3.5}
    assert spec.indicators == ["age"]  # only a covariate missing in training gets one
    assert spec.merged == {"grade": ["unkown"]}  # seen once, fewer than min_level_count
    assert spec.categorical == {
        "arm": ["chemo", "targeted"],  # the treatment keeps exactly its levels
        "grade": ["1", "2", "other"],
        "stage": ["1", "2", "other"],  # 1.0 and "1" are one level
    }
    assert spec.features == [
        "age",
        "size",
        "age=missing",
        "arm=chemo",
        "arm=targeted",
        "grade=1",
        "grade=2",
        "grade=other",
        "stage=1",
        "stage=2",
        "stage=other",
    ]


def test_missing_unseen_and_merged_values_are_imputed_and_reported() -> None:
    spec = _spec()
    case = preprocess_clinical({"age": None, "size": 3.5, "grade": "unkown", "stage": 3, "arm": "targeted"}, spec)
    assert case.values is not None
    encoded = dict(zip(spec.features, case.values.tolist(), strict=True))
    assert encoded["age"] == pytest.approx(0.0)  # the median 60 is the training mean here
    assert encoded["age=missing"] == 1.0
    assert encoded["grade=other"] == 1.0  # merged level
    assert encoded["stage=other"] == 1.0  # unseen level
    assert case.filled.answer() == {"imputed": 1, "of": 5, "treated_as_absent": False, "unseen_levels": ["stage"]}


def test_the_treatment_is_never_imputed_and_too_many_gaps_make_the_block_absent() -> None:
    spec = _spec()
    with pytest.raises(ClinicalInputError, match="clinical covariates missing: arm"):
        preprocess_clinical({"age": 60.0, "size": 1.0, "grade": "1", "stage": 1}, spec)
    with pytest.raises(ClinicalInputError, match="clinical covariate arm='surgery' is not one of"):
        preprocess_clinical({"age": 60.0, "size": 1.0, "grade": "1", "stage": 1, "arm": "surgery"}, spec)
    absent = preprocess_clinical({"size": 1.0, "arm": "chemo"}, spec)  # 3 of 5 missing > 0.5
    assert absent.values is None and absent.filled.absent


def test_an_older_contract_without_a_policy_still_requires_every_covariate() -> None:
    spec = ClinicalSpec(numeric={"age": [60.0, 10.0]}, categorical={"sex": ["F", "M"]})
    with pytest.raises(ClinicalInputError, match="clinical covariates missing: age"):
        preprocess_clinical({"sex": "F"}, spec)
    with pytest.raises(ClinicalInputError, match="sex='X' is not one of"):
        preprocess_clinical({"age": 60, "sex": "X"}, spec)


def test_a_covariate_without_any_training_value_is_an_error() -> None:
    rows = _training_clinical().assign(age=np.nan)
    with pytest.raises(ClinicalInputError, match="clinical covariate age has no value in the training rows"):
        fit_clinical_spec(rows, ["age"], [])


def _contract(**changes) -> ModelContract:
    block = fit_omics_block(_training_genomics(), "expression", GENES)
    base = ModelContract(
        name="t",
        version="1",
        task="classification:response",
        labels=["no", "yes"],
        image=ImageGeometry(target_shape=(4, 6, 6)),
        omics=[block],
        clinical=_spec(),
        trained_modalities=["image", "genomics", "clinical"],
        may_be_missing=["image", "genomics", "clinical"],
    )
    return dataclasses.replace(base, **changes)


def test_the_case_reports_what_was_imputed_and_which_block_fell_back() -> None:
    contract = _contract()
    assert contract.clinical is not None
    omics = preprocess_omics({"A": 2.0}, contract.omics)  # over the cap
    clinical = preprocess_clinical(
        {"age": np.nan, "size": 2, "grade": "1", "stage": 1, "arm": "chemo"}, contract.clinical
    )
    inputs = build_inputs(contract, None, omics, clinical)
    assert inputs.modalities_used == ["clinical"]
    assert inputs.imputation() == {
        "blocks": {
            "expression": {"imputed": 3, "of": 4, "treated_as_absent": True},
            "clinical": {"imputed": 1, "of": 5, "treated_as_absent": False},
        },
        "imputed_features": 1,
        "absent_blocks": ["expression"],
    }


def test_a_required_block_over_its_cap_is_refused_with_the_reason() -> None:
    contract = _contract(may_be_missing=["image", "clinical"])
    omics = preprocess_omics({"A": 2.0}, contract.omics)
    clinical = preprocess_clinical({"age": 50, "size": 2, "grade": "1", "stage": 1, "arm": "chemo"}, contract.clinical)
    with pytest.raises(NoModalityError, match="model requires expression; expression was given with 3 of 4 missing"):
        build_inputs(contract, None, omics, clinical)


def test_the_policy_travels_in_the_contract_and_older_blocks_still_read() -> None:
    contract = _contract()
    again = ModelContract.from_json(contract.to_json())
    assert again == contract
    old = contract.to_dict()
    for block in old["omics"]:
        del block["fill"], block["max_imputed"]
        block["impute_missing"] = False
    assert ModelContract.from_dict(old).omics[0].max_imputed == 0.0  # "none may be imputed"


def test_an_empty_profile_means_no_omics_and_a_foreign_one_is_a_naming_error() -> None:
    block = fit_omics_block(_training_genomics(), "expression", GENES)
    empty = preprocess_omics({"A": None, "Z": float("nan")}, [block])
    assert empty.present == [] and empty.filled == {}
    with pytest.raises(GenePanelError, match="none of the model's 4 omics features given"):
        preprocess_omics({"ENSG00000141510": 1.0}, [block])


def test_a_mistyped_training_value_is_an_error_that_quotes_nothing() -> None:
    rows = _training_clinical().astype({"age": object})
    rows.loc[1, "age"] = "<5"
    rows.loc[2, "age"] = "inf"
    with pytest.raises(ClinicalInputError) as info:
        fit_clinical_spec(rows, ["age"], [])
    assert info.value.message == (
        "clinical covariate age: 2 training value(s) are not finite numbers; "
        "leave a cell empty when the value is unknown"
    )
