"""Treatment ranking (radfusion.treatment) on a real ONNX model with a known treatment
effect, and /predict's explain and rank_treatments options on a real BentoML server.

The model (test_explain.KnownSignalNet) adds, under "targeted" only,
GAIN x z(G1_mut) + SHIFT to the response logit: targeted helps mutated patients and
harms the others, as in the synthetic cohort's outcome model (EGFR_mut x treatment).
The recommendation compares log-odds gains with the switch margin, the rule the
evidence check (radfusion.training.evidence.treatment) applies too."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from radfusion.contract import ModelContract, read_contract_from_onnx
from radfusion.explain import ExplainSettings
from radfusion.predictor import Predictor, prepare_case
from radfusion.treatment import (
    DEFAULT_SWITCH_MARGIN,
    candidate_inputs,
    rank_treatments,
    ranking_from_probabilities,
)
from tests.support.dicom_series import AXIAL_REVERSED, write_series
from tests.support.known_signal import (
    GENE_WEIGHTS,
    GEOMETRY,
    TEMPERATURE,
    known_signal_contract,
    lesion_centre_mm,
    lesion_volume,
    raw_genes,
)
from tests.support.known_treatment import (
    GAIN,
    SHIFT,
    SWITCH_MARGIN,
    clinical_contract,
    clinical_values,
    export_treatment_model,
    genes_with_mutation,
    with_known_benefit,
)
from tests.support.study_zip import zip_study

TOKEN = "test-token-treatment"


def expected_logit(contract: ModelContract, genes: dict[str, float], treatment: str) -> float:
    """Calibrated log-odds of response (the logit over the temperature)."""
    panel = contract.genomics
    z = {f: (genes[f] - m) / s for f, m, s in zip(panel.features, panel.mean, panel.std, strict=True)}
    logit = sum(w * z[f] for f, w in GENE_WEIGHTS.items())  # no image in these cases
    if treatment == "targeted":
        logit += GAIN * z["G1_mut"] + SHIFT
    return logit / TEMPERATURE


def expected_response(contract: ModelContract, genes: dict[str, float], treatment: str) -> float:
    return float(1 / (1 + np.exp(-expected_logit(contract, genes, treatment))))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_treatment_model(tmp_path_factory.mktemp("treatment") / "model.onnx", clinical_contract())


@pytest.fixture(scope="module")
def predictor(model_path: Path) -> Predictor:
    return Predictor.load(model_path, device="cpu")


# ------------------------------------------------------------------ ranking (core)


@pytest.mark.parametrize(
    "g1_mut, best, recommended",
    [(1.0, "targeted", "targeted"), (0.0, "chemo", "chemo"), (0.4, "targeted", "chemo")],
    ids=["mutated-switches", "wild-type-stays", "small-gain-stays-with-reference"],
)
def test_ranking_follows_the_known_treatment_effect(predictor: Predictor, g1_mut, best, recommended) -> None:
    genes = genes_with_mutation(g1_mut)
    answer = predictor.rank_treatments(predictor.prepare(None, genes, clinical_values("chemo")))
    contract = predictor.contract
    assert answer["available"] and answer["covariate"] == "treatment" and answer["response_label"] == "responder"
    assert answer["ranking"][0]["treatment"] == best
    assert answer["recommended"] == recommended
    assert (answer["reference"], answer["switch_margin"], answer["given"]) == ("chemo", SWITCH_MARGIN, "chemo")
    for entry in answer["ranking"]:
        want = expected_response(contract, genes, entry["treatment"])
        assert entry["response_probability"] == pytest.approx(want, abs=1e-5)
    by_name = {e["treatment"]: e for e in answer["ranking"]}
    gain = by_name["targeted"]["response_probability"] - by_name["chemo"]["response_probability"]
    assert by_name["targeted"]["gain_vs_reference"] == pytest.approx(gain, abs=1e-6)
    # The log-odds gain is the model's: (GAIN z(G1_mut) + SHIFT) / temperature.
    want_gain = expected_logit(contract, genes, "targeted") - expected_logit(contract, genes, "chemo")
    assert by_name["targeted"]["log_odds_gain_vs_reference"] == pytest.approx(want_gain, abs=1e-4)
    assert by_name["chemo"]["log_odds_gain_vs_reference"] == 0.0
    # The recommendation switches exactly when the log-odds gain beats the contract's margin.
    assert (recommended == "targeted") == (want_gain > SWITCH_MARGIN)


@pytest.mark.parametrize("spread, recommended", [(0.05, "targeted"), (3.0, "chemo")], ids=["sure", "unsure"])
def test_a_switch_needs_the_benefits_lower_bound_to_clear_the_margin(
    tmp_path: Path, spread: float, recommended: str
) -> None:
    """The contract's benefit draws (radfusion.benefit) around the model's own effect,
    SHIFT + GAIN z(G1_mut) under targeted: narrow, a mutated patient is switched as
    before; wide, the same point gain is "no confident benefit" and the patient stays."""
    contract = with_known_benefit(clinical_contract(), spread)
    model = export_treatment_model(tmp_path / "model.onnx", contract)
    predictor = Predictor.load(model, device="cpu")
    genes = genes_with_mutation(1.0)
    answer = predictor.rank_treatments(predictor.prepare(None, genes, clinical_values("chemo")))
    targeted = next(e for e in answer["ranking"] if e["treatment"] == "targeted")
    low, high = targeted["benefit_interval"]
    gain = targeted["log_odds_gain_vs_reference"]
    assert low < gain < high and gain > SWITCH_MARGIN  # the point gain alone would switch
    assert answer["recommended"] == recommended
    assert (low > SWITCH_MARGIN) == (recommended == "targeted")
    assert answer["reason"].startswith("switch to targeted" if recommended == "targeted" else "no confident benefit")


def test_the_given_treatment_does_not_change_the_ranking(predictor: Predictor) -> None:
    genes = genes_with_mutation(1.0)
    as_chemo = predictor.prepare(None, genes, clinical_values("chemo"))
    as_targeted = predictor.prepare(None, genes, clinical_values("targeted"))
    a, b = predictor.rank_treatments(as_chemo), predictor.rank_treatments(as_targeted)
    assert (a["given"], b["given"]) == ("chemo", "targeted")
    assert a["ranking"] == b["ranking"] and a["recommended"] == b["recommended"]
    # Only the treatment's one-hot columns differ between candidates and the case.
    spec = predictor.contract.clinical
    columns = [spec.features.index(f"treatment={level}") for level in spec.treatments]
    for level, candidate in zip(spec.treatments, candidate_inputs(predictor.contract, as_chemo.inputs), strict=True):
        changed = np.flatnonzero(candidate.clinical != as_chemo.inputs.clinical)
        assert set(changed) <= set(columns)
        assert candidate.clinical[columns].tolist() == [float(level == known) for known in spec.treatments]
        assert np.array_equal(candidate.genomics, as_chemo.inputs.genomics)
        assert np.array_equal(candidate.presence, as_chemo.inputs.presence)


def test_margin_comes_from_the_contract_or_the_default(model_path: Path) -> None:
    contract = read_contract_from_onnx(model_path)
    assert contract.clinical.switch_margin == SWITCH_MARGIN  # survives the ONNX round trip
    # So does the clinical column order the model was exported with (the contract's
    # JSON sorts keys; covariates declared treatment-first must still line up).
    assert contract.clinical.features == clinical_contract().clinical.features
    probabilities = np.array([[0.6, 0.4], [0.4, 0.6]])  # targeted: +0.81 log-odds over chemo
    assert ranking_from_probabilities(contract, probabilities)["recommended"] == "targeted"  # 0.81 > 0.5
    default = dataclasses.replace(contract, clinical=dataclasses.replace(contract.clinical, switch_margin=None))
    answer = ranking_from_probabilities(default, probabilities)
    assert answer["switch_margin"] == DEFAULT_SWITCH_MARGIN == 1.0 and answer["recommended"] == "chemo"  # not > 1.0


def test_the_margin_is_an_odds_ratio_not_a_probability_gain(predictor: Predictor) -> None:
    """The same odds ratio counts the same near 0 as in the middle: 1% -> 3% response
    (odds ratio 3.1, +0.02 in probability) switches under a 1.0 log-odds margin,
    50% -> 60% (odds ratio 1.5, +0.10) does not."""
    default = dataclasses.replace(
        predictor.contract, clinical=dataclasses.replace(predictor.contract.clinical, switch_margin=None)
    )
    rare = ranking_from_probabilities(default, np.array([[0.99, 0.01], [0.97, 0.03]]))
    common = ranking_from_probabilities(default, np.array([[0.5, 0.5], [0.4, 0.6]]))
    assert rare["recommended"] == "targeted" and common["recommended"] == "chemo"
    gain = {a["treatment"]: a["log_odds_gain_vs_reference"] for a in rare["ranking"]}["targeted"]
    assert gain == pytest.approx(np.log(0.03 / 0.97) - np.log(0.01 / 0.99), abs=1e-9)
    # Saturated probabilities give finite log-odds, not infinities.
    saturated = ranking_from_probabilities(default, np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert all(np.isfinite(a["log_odds_gain_vs_reference"]) for a in saturated["ranking"])


def test_evidence_and_serving_recommend_alike() -> None:
    """The evidence check ranks from the model's log-odds with the same rule and margin
    that serving applies to the calibrated probabilities."""
    import pandas as pd

    from radfusion.training.evidence.treatment import DEFAULT_MARGIN
    from radfusion.training.evidence.treatment import (
        rank_treatments as evidence_ranking,
    )

    assert DEFAULT_MARGIN == DEFAULT_SWITCH_MARGIN
    contract = dataclasses.replace(clinical_contract(), temperature=1.0)
    contract = dataclasses.replace(contract, clinical=dataclasses.replace(contract.clinical, switch_margin=None))
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"chemo": rng.normal(0, 2, 200), "targeted": rng.normal(0, 2, 200)})
    table["targeted"] = table["chemo"] + rng.uniform(-3, 3, 200)
    evidence = evidence_ranking(table)["recommended"].tolist()
    served = []
    for chemo, targeted in table.to_numpy():
        p = 1 / (1 + np.exp(-np.array([chemo, targeted])))
        served.append(ranking_from_probabilities(contract, np.stack([1 - p, p], axis=1))["recommended"])
    assert evidence == served
    assert 20 < evidence.count("targeted") < 180  # both outcomes are exercised


def test_cases_that_cannot_be_ranked_say_why(predictor: Predictor) -> None:
    no_clinical = predictor.prepare(None, genes_with_mutation(1.0), None)
    assert predictor.rank_treatments(no_clinical) == {
        "available": False,
        "reason": "no clinical covariates in this case (the treatment is one of them)",
    }
    untreated = known_signal_contract()  # no clinical block at all
    case = prepare_case(untreated, None, raw_genes())
    answer = rank_treatments(lambda *batch: pytest.fail("no model call expected"), untreated, case.inputs)
    assert answer == {"available": False, "reason": "the model has no treatment covariate with at least two treatments"}


# ------------------------------------------------------------------ HTTP API


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    paths, _ = write_series(tmp_path_factory.mktemp("lesion_study"), lesion_volume(), AXIAL_REVERSED)
    return paths


@pytest.fixture(scope="module")
def server(model_path: Path, bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory):
    from radfusion.serving.http.launch import running_server

    log_file = tmp_path_factory.mktemp("treatment_server") / "serve.log"
    env = {"BENTOML_HOME": str(bentoml_home), "RADFUSION_API_TOKENS": TOKEN}
    with (
        running_server(model_path, timeout=120, env=env, log_file=log_file) as url,
        httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}) as client,
    ):
        yield client


def assert_close(got, want, tol: float) -> None:
    """Equal JSON-like values, numbers within ``tol``."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), (got, want)
        for key in want:
            assert_close(got[key], want[key], tol)
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), (got, want)
        for g, w in zip(got, want, strict=True):
            assert_close(g, w, tol)
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=tol)
    else:
        assert got == want


def post_case(client: httpx.Client, study: list[Path] | None, genes: dict | None, clinical: dict | None, **options):
    fields = {"genomics": genes, "clinical": clinical, **options}
    if study is None:
        return client.post("/predict", json={k: v for k, v in fields.items() if v is not None})
    data = {k: json.dumps(v) for k, v in fields.items() if v is not None}
    return client.post("/predict", files={"study": ("study.zip", zip_study(study), "application/zip")}, data=data)


@pytest.mark.slow
def test_predict_with_explain_and_ranking_and_without(server, predictor: Predictor, study: list[Path]) -> None:
    genes, clinical = genes_with_mutation(1.0), clinical_values("chemo")
    plain = post_case(server, study, genes, clinical)
    full = post_case(server, study, genes, clinical, explain=True, rank_treatments=True)
    assert plain.status_code == full.status_code == 200, (plain.text, full.text)
    plain, full = plain.json(), full.json()

    # Without the options the answer is the plain prediction, as before.
    case = predictor.prepare(study, genes, clinical)
    expected = predictor.predict([case])[0]
    assert set(plain) == set(expected)
    assert plain["modalities_used"] == ["image", "expression", "mutation", "clinical"]
    for label, p in expected["probabilities"].items():
        assert plain["probabilities"][label] == pytest.approx(p, abs=1e-5)
    # With them: the same prediction plus the evidence, equal to the core's answer.
    assert {k: v for k, v in full.items() if k not in ("explanation", "treatment_ranking")} == plain
    assert_close(full["treatment_ranking"], predictor.rank_treatments(case), 1e-5)
    assert full["treatment_ranking"]["recommended"] == "targeted"
    explanation = full["explanation"]
    local = predictor.explain(case)
    assert {g["feature"] for g in explanation["genes"]["top"][:3]} == set(GENE_WEIGHTS)
    assert_close(explanation["genes"], local["genes"], 1e-5)
    saliency = explanation["saliency"]
    assert saliency["peak_mm"] == pytest.approx(local["saliency"]["peak_mm"], abs=0.02)
    error = np.abs(np.array(saliency["peak_mm"]) - lesion_centre_mm())
    assert np.all(error <= np.array(GEOMETRY.target_spacing)[::-1])
    assert explanation["model_rows"] <= ExplainSettings().max_rows


@pytest.mark.slow
def test_missing_modalities_get_reasons_not_errors(server) -> None:
    genes = genes_with_mutation(1.0)
    response = post_case(server, None, genes, None, explain=True, rank_treatments=True)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["modalities_used"] == ["expression", "mutation"]
    assert body["explanation"]["saliency"] == {"available": False, "reason": "no image in this case"}
    assert body["explanation"]["genes"]["available"]
    assert body["treatment_ranking"] == {
        "available": False,
        "reason": "no clinical covariates in this case (the treatment is one of them)",
    }


@pytest.mark.slow
def test_plain_requests_keep_being_served_while_explaining(server, study: list[Path]) -> None:
    """An explanation's rows run beside the batcher: concurrent plain requests all
    succeed with the same answer as alone."""
    genes, clinical = genes_with_mutation(0.0), clinical_values("targeted")
    alone = post_case(server, None, genes, clinical).json()

    def plain(_: int) -> dict:
        response = post_case(server, None, genes, clinical)
        assert response.status_code == 200, response.text
        return response.json()

    with concurrent.futures.ThreadPoolExecutor(max_workers=5) as pool:
        explaining = pool.submit(post_case, server, study, genes, clinical, explain=True)
        answers = list(pool.map(plain, range(8)))
        explained = explaining.result()
    assert explained.status_code == 200 and explained.json()["explanation"]["saliency"]["available"]
    for answer in answers:
        assert answer["probabilities"] == pytest.approx(alone["probabilities"], abs=1e-6)
