"""Real public cohorts, untouched, through train -> export -> serve -> score.

Two survival datasets bundled with scikit-survival and lifelines (no download),
written as cohort folders by tests/support/real_cohorts.py with their values as they
come: breast_cancer (198 patients, 76 expression probes + age, size, grade, ER; grade
has a 2-patient level spelled "unkown"; no dicom/ folder) and lung (228 patients,
clinical only, 66 missing values over 60 patients and a 1-patient ECOG level), all
rows. Each trains a small Cox model (configs/experiment/survival_cox.yaml, 3 epochs), is
exported with `radfusion export --no-register`, served by the ONNX Predictor (the code
path of the HTTP service) and scored from its tables by `score_table`.

Checked: every patient gets a finite risk, those with gaps too; each row's imputation
count equals the gaps in that patient's table rows; a rare level (merged into "other"
when the training part has it, unseen when not) answers exactly as "other" and as a
level never seen; and the exported model ranks held-out patients better than chance by
a margin."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines.utils import concordance_index

from radfusion.contract import OTHER_LEVEL, ModelContract
from radfusion.predictor import Predictor
from tests.support.paths import CONFIGS
from tests.support.real_cohorts import RealCohort, write_cohort

pytestmark = pytest.mark.slow

TOL = 1e-6
EPOCHS = 3
# 40% of the patients held out for the test: with the usual 20% (40 patients, 10 events
# in breast_cancer) one split's c-index moves by about 0.08 from split to split.
SPLIT = "[0.5, 0.1, 0.4]"
# Held-out c-index the exported model must beat (chance: 0.5). On split seeds 0, 1, 2
# this configuration gave breast_cancer 0.629, 0.693, 0.601 and lung 0.639, 0.637, 0.604
# (CPU, deterministic): the margin is what every one of those clears by 0.04.
MIN_HELD_OUT_CINDEX = 0.56
# The rare level of each dataset (fewer than data.min_level_count = 5 patients).
RARE_LEVEL = {"breast_cancer": ("grade", "unkown"), "lung": ("ph.ecog", "3")}


@dataclass
class Trained:
    cohort: RealCohort
    model: Path
    contract: ModelContract
    rows: pd.DataFrame  # the scored table, by patient_id
    summary: dict
    clinical: pd.DataFrame  # clinical.csv as written, by patient_id
    genomics: pd.DataFrame | None
    train_ids: list[str]
    test_ids: list[str]


def _train(cohort: RealCohort, run: Path) -> Path:
    from radfusion.training.cli import main

    configs = ["trainer/cpu.yaml", "data/synthetic.yaml", "model/fusion_cpu.yaml", "experiment/survival_cox.yaml"]
    main(
        [
            "fit",
            *[a for c in configs for a in ("--config", str(CONFIGS / c))],
            *cohort.cli_args(),
            "--trainer.default_root_dir",
            str(run),
            "--trainer.max_epochs",
            str(EPOCHS),
            "--data.batch_size",
            "32",
            "--data.split",
            SPLIT,
        ]
    )
    return run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module", params=sorted(RARE_LEVEL))
def trained(request, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from radfusion.cli import main as radfusion
    from radfusion.genomics import load_genomics_table
    from radfusion.serving.scoring.table import score_table
    from radfusion.training.checkpoints import load_datamodule

    root = tmp_path_factory.mktemp(request.param)
    cohort = write_cohort(request.param, root / "cohort")
    checkpoint = _train(cohort, root / "run")
    model = root / "model.onnx"
    radfusion(["export", "--checkpoint", str(checkpoint), "--out", str(model), "--no-register"])
    genomics = cohort.path / "genomics.parquet" if cohort.omics else None
    out = root / "scores.parquet"
    summary = score_table(model, out, genomics=genomics, clinical=cohort.path / "clinical.csv", progress=False)
    dm = load_datamodule(checkpoint)
    return Trained(
        cohort=cohort,
        model=model,
        contract=Predictor.load(model, device="cpu").contract,
        rows=pd.read_parquet(out).set_index("patient_id"),
        summary=summary,
        clinical=pd.read_csv(cohort.path / "clinical.csv", dtype={"patient_id": str}).set_index("patient_id"),
        genomics=load_genomics_table(genomics) if genomics else None,
        train_ids=[r["patient_id"] for r in dm.records["train"]],
        test_ids=[r["patient_id"] for r in dm.records["test"]],
    )


def _covariates(trained: Trained) -> list[str]:
    return [*trained.cohort.numeric, *trained.cohort.categorical]


def test_every_patient_gets_a_finite_risk(trained: Trained) -> None:
    rows, n = trained.rows, trained.cohort.n_patients
    assert len(rows) == n == trained.summary["patients"] and trained.summary["failed"] == 0
    assert rows["error"].isna().all() and np.isfinite(rows["risk_score"]).all()
    expected = "+".join([*trained.contract.omics_names, "clinical"])
    assert set(rows["modalities_used"]) == {expected}


def test_imputed_counts_equal_the_gaps_in_each_patients_rows(trained: Trained) -> None:
    rows = trained.rows
    gaps = trained.clinical[_covariates(trained)].isna().sum(axis=1)
    if trained.genomics is not None:
        gaps = gaps.add(trained.genomics.isna().sum(axis=1), fill_value=0)
    assert (rows["imputed_features"] == gaps.reindex(rows.index)).all()
    assert (rows["absent_blocks"] == "").all()  # no patient lacks more than a block's cap
    assert trained.summary["imputed_features"] == int(gaps.sum())
    if trained.cohort.name == "lung":  # its gaps, untouched: scored like everyone else
        assert int(gaps.sum()) == 66 and (gaps > 0).sum() == 60
        assert np.isfinite(rows.loc[gaps.index[gaps > 0], "risk_score"]).all()
        detail = json.loads(rows.loc[gaps.idxmax(), "imputation"])["clinical"]
        assert detail == {"imputed": 3, "of": 7, "treated_as_absent": False}


def test_a_rare_level_is_other_and_answers_as_an_unseen_one(trained: Trained) -> None:
    """The rare level's patients answer exactly as "other" and as a level never seen.
    Seen in the training part, the level is merged (the contract records it); not seen
    there, it is an unseen level (the answer says so). Which one depends on the split:
    with split seed 0, lung's ECOG 3 patient trains (merged) and neither of
    breast_cancer's "unkown" grades does (unseen)."""
    covariate, rare = RARE_LEVEL[trained.cohort.name]
    spec = trained.contract.clinical
    assert spec is not None and OTHER_LEVEL in spec.categorical[covariate]
    assert rare not in spec.categorical[covariate]

    predictor = Predictor.load(trained.model, device="cpu")
    values = trained.clinical[_covariates(trained)]
    level = values[covariate].map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
    patients = list(level.index[level == rare])
    assert 1 <= len(patients) < 5
    trained_on = bool(set(patients) & set(trained.train_ids))
    assert spec.merged.get(covariate, []) == ([rare] if trained_on else [])
    assert trained_on == (trained.cohort.name == "lung")  # both paths are taken
    common = level.value_counts().index[0]
    for patient in patients:
        genes = trained.genomics.loc[patient].to_dict() if trained.genomics is not None else None
        covariates = values.loc[patient].to_dict()

        def answer(value: object, genes=genes, covariates=covariates) -> dict:
            case = predictor.prepare(None, genes, {**covariates, covariate: value})
            return predictor.predict([case])[0]

        as_is = answer(covariates[covariate])
        assert as_is["risk_score"] == pytest.approx(trained.rows.loc[patient, "risk_score"], abs=TOL)
        assert answer(OTHER_LEVEL)["risk_score"] == pytest.approx(as_is["risk_score"], abs=TOL)
        never_seen = answer("a level never seen")
        assert never_seen["risk_score"] == pytest.approx(as_is["risk_score"], abs=TOL)
        assert never_seen["imputation"]["blocks"]["clinical"]["unseen_levels"] == [covariate]
        unseen = as_is["imputation"]["blocks"]["clinical"].get("unseen_levels", [])
        assert unseen == ([] if trained_on else [covariate])
        assert json.loads(trained.rows.loc[patient, "imputation"])["clinical"].get("unseen_levels", []) == unseen
        assert abs(answer(common)["risk_score"] - as_is["risk_score"]) > 1e-4  # the covariate is fed


def test_held_out_patients_are_ranked_better_than_chance(trained: Trained) -> None:
    held_out = trained.rows.loc[trained.test_ids]
    outcome = trained.clinical.loc[trained.test_ids]
    assert len(held_out) >= 0.35 * trained.cohort.n_patients and outcome["event"].sum() >= 20
    cindex = concordance_index(outcome["time"], -held_out["risk_score"], outcome["event"])
    assert cindex > MIN_HELD_OUT_CINDEX, cindex


def _json_value(value: object) -> object:
    """A table value as JSON carries it: a gap is null (JSON has no NaN)."""
    if pd.isna(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def test_the_service_answers_a_partial_case_as_the_scorer_does(
    trained: Trained, bentoml_home: Path, tmp_path: Path
) -> None:
    """One request to a real BentoML server: the patient with the most gaps (nulls in
    the JSON), and for the omics cohort a gene panel 10 probes short. 200, the
    imputation counted, the risk equal to the Predictor's on the same values (and to the
    scored row where the values are the table's)."""
    import httpx

    from radfusion.serving.http.launch import running_server

    gaps = trained.clinical[_covariates(trained)].isna().sum(axis=1)
    patient = gaps.idxmax()
    covariates = {k: _json_value(v) for k, v in trained.clinical.loc[patient, _covariates(trained)].items()}
    body: dict = {"clinical": covariates}
    short = 0
    if trained.genomics is not None:
        genes = trained.genomics.loc[patient]
        short = 10
        body["genomics"] = {k: _json_value(v) for k, v in genes.iloc[short:].items()}
    env = {"BENTOML_HOME": str(bentoml_home), "RADFUSION_API_TOKENS": "test-token-real"}
    with (
        running_server(trained.model, timeout=120, env=env, log_file=tmp_path / "serve.log") as url,
        httpx.Client(base_url=url, timeout=60, headers={"Authorization": "Bearer test-token-real"}) as client,
    ):
        response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["imputation"]["imputed_features"] == int(gaps[patient]) + short
    assert answer["imputation"]["absent_blocks"] == []
    predictor = Predictor.load(trained.model, device="cpu")
    expected = predictor.predict([predictor.prepare(None, body.get("genomics"), covariates)])[0]
    assert answer["risk_score"] == pytest.approx(expected["risk_score"], abs=1e-5)
    if not short:
        assert answer["risk_score"] == pytest.approx(trained.rows.loc[patient, "risk_score"], abs=1e-5)
