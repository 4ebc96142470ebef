"""Tables as they come, on a real `bentoml serve` on loopback: a partial gene panel is
imputed (the answer counts what was imputed, and equals radfusion.predictor.Predictor's
on the same input), a block with more missing than its cap is treated as absent (200
with the reason when the model may miss it, 422 naming why when it may not), an unseen
clinical level is the "other" level, GET /contract carries the missing-data policy and
the features that matter most, and the README's /predict example works as written.

The model: the tiny fusion network with omics (expression, mutation) and clinical
blocks, its contract's feature importance computed by radfusion.training.importance as
export does; served twice, as exported (any modality may be missing) and under a
contract that requires the omics blocks."""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from radfusion.contract import ModelContract, read_contract_from_onnx, write_contract_to_onnx
from radfusion.dicom import find_studies
from radfusion.genomics import load_genomics_table, row_as_mapping
from radfusion.predictor import Predictor
from radfusion.preprocess import build_inputs, fit_clinical_spec, preprocess_clinical, preprocess_omics
from radfusion.serving.http.launch import running_server
from tests.support.clinical_models import COVARIATES, read_clinical_csv
from tests.support.paths import PROJECT_ROOT
from tests.support.study_zip import zip_study

pytestmark = pytest.mark.slow

TOKEN = "test-token-partial-panel"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOL = 1e-5
KEPT = 60  # of the 100 expression genes: 40 imputed, under the cap of 50


# ---------------------------------------------------------------- fixtures and helpers


def _cases(contract: ModelContract, cohort: Path):
    """The tiny cohort's table rows as model inputs (no image), for the attribution."""
    from radfusion.training.evidence.cases import Cases

    genomics = load_genomics_table(cohort / "genomics.parquet")
    clinical = read_clinical_csv(cohort / "clinical.csv")
    ids, inputs = [], []
    for patient in clinical.index:
        genes = row_as_mapping(genomics, patient)
        omics = preprocess_omics(genes, contract.omics) if genes is not None else None
        covariates = preprocess_clinical(clinical.loc[patient].to_dict(), contract.clinical)
        ids.append(patient)
        inputs.append(build_inputs(contract, None, omics, covariates))

    def stacked(name: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([getattr(i, name) for i in inputs]))

    n = len(ids)
    return Cases(
        ids, stacked("image"), stacked("genomics"), stacked("clinical"), stacked("presence"), torch.zeros(n), [[]] * n
    )


@pytest.fixture(scope="module")
def models(tiny_cohort: Path, tiny_contract: ModelContract, tmp_path_factory) -> tuple[Path, Path]:
    """(lenient, strict): the same network, exported with the feature importance in its
    contract; ``strict`` requires the omics blocks."""
    from radfusion.training.export import export_onnx
    from radfusion.training.importance import feature_importance
    from tests.support.tiny import tiny_net

    folder = tmp_path_factory.mktemp("partial_panel_models")
    spec = fit_clinical_spec(read_clinical_csv(tiny_cohort / "clinical.csv"), **COVARIATES)
    every = ["image", "genomics", "clinical"]
    contract = ModelContract(
        **{
            **tiny_contract.__dict__,
            "name": "tiny-partial",
            "clinical": spec,
            "trained_modalities": every,
            "may_be_missing": every,
        }
    )
    net = tiny_net(contract, seed=5)
    contract.feature_importance = feature_importance(
        net, "classification", _cases(contract, tiny_cohort), contract.omics, contract.clinical
    )
    lenient, strict = folder / "lenient.onnx", folder / "strict.onnx"
    export_onnx(net, contract, lenient)
    shutil.copyfile(lenient, strict)
    write_contract_to_onnx(strict, ModelContract(**{**contract.__dict__, "may_be_missing": ["image", "clinical"]}))
    return lenient, strict


def _serve(model: Path, bentoml_home: Path, log_folder: Path):
    env = {"BENTOML_HOME": str(bentoml_home), "RADFUSION_API_TOKENS": TOKEN}
    return running_server(model, timeout=120, env=env, log_file=log_folder / "serve.log")


@pytest.fixture(scope="module")
def lenient(models, bentoml_home: Path, tmp_path_factory):
    with (
        _serve(models[0], bentoml_home, tmp_path_factory.mktemp("lenient_server")) as url,
        httpx.Client(base_url=url, timeout=60, headers=AUTH) as client,
    ):
        yield client, Predictor.load(models[0], device="cpu")


@pytest.fixture(scope="module")
def strict(models, bentoml_home: Path, tmp_path_factory):
    with (
        _serve(models[1], bentoml_home, tmp_path_factory.mktemp("strict_server")) as url,
        httpx.Client(base_url=url, timeout=60, headers=AUTH) as client,
    ):
        yield client, Predictor.load(models[1], device="cpu")


@pytest.fixture(scope="module")
def patient(tiny_cohort: Path):
    """(study files, genes, clinical values) of a patient with genomics."""
    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    studies = {s.patient_id: s for s in find_studies(tiny_cohort / "dicom").studies.values()}
    chosen = sorted(p for p in studies if p in table.index)[0]
    genes = {k: float(v) for k, v in row_as_mapping(table, chosen).items() if not math.isnan(float(v))}
    clinical = read_clinical_csv(tiny_cohort / "clinical.csv").loc[chosen]
    covariates = {"age": float(clinical["age"]), "sex": str(clinical["sex"]), "treatment": str(clinical["treatment"])}
    return [h.path for h in studies[chosen].instances], genes, covariates


def panel(contract: ModelContract, block: str) -> list[str]:
    return next(b.features for b in contract.omics if b.name == block)


def without(genes: dict[str, float], dropped: list[str]) -> dict[str, float]:
    return {k: v for k, v in genes.items() if k not in set(dropped)}


def local(predictor: Predictor, study, genes, clinical) -> dict:
    return predictor.predict([predictor.prepare(study, genes, clinical)])[0]


def assert_same(body: dict, want: dict) -> None:
    assert body["modalities_used"] == want["modalities_used"]
    assert body["imputation"] == want["imputation"]
    assert body["probabilities"] == pytest.approx(want["probabilities"], abs=TOL)


# ---------------------------------------------------------------------- partial panels


def test_partial_panel_is_imputed_and_answered_as_locally(lenient, patient) -> None:
    client, predictor = lenient
    _, genes, clinical = patient
    expression = panel(predictor.contract, "expression")
    partial = without(genes, expression[KEPT:])
    response = client.post("/predict", json={"genomics": partial, "clinical": clinical})
    assert response.status_code == 200, response.text
    body = response.json()
    imputation = body["imputation"]
    assert imputation["blocks"]["expression"] == {"imputed": 100 - KEPT, "of": 100, "treated_as_absent": False}
    assert imputation["blocks"]["mutation"] == {"imputed": 0, "of": 5, "treated_as_absent": False}
    assert imputation["blocks"]["clinical"] == {"imputed": 0, "of": 3, "treated_as_absent": False}
    assert (imputation["imputed_features"], imputation["absent_blocks"]) == (100 - KEPT, [])
    assert body["modalities_used"] == ["expression", "mutation", "clinical"]
    assert_same(body, local(predictor, None, partial, clinical))
    # The imputed genes took training values, not the patient's: the answer moved.
    full = client.post("/predict", json={"genomics": genes, "clinical": clinical}).json()
    assert full["imputation"]["imputed_features"] == 0
    assert full["probabilities"] != pytest.approx(body["probabilities"], abs=1e-6)


def test_a_block_past_its_cap_is_absent_when_the_model_may_miss_it(lenient, patient) -> None:
    client, predictor = lenient
    _, genes, clinical = patient
    expression = panel(predictor.contract, "expression")
    two_genes = without(genes, expression[2:])  # 98 of 100 missing
    response = client.post("/predict", json={"genomics": two_genes, "clinical": clinical})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["imputation"]["blocks"]["expression"] == {"imputed": 98, "of": 100, "treated_as_absent": True}
    assert body["imputation"]["absent_blocks"] == ["expression"]
    assert body["imputation"]["imputed_features"] == 0  # an absent block's features fed nothing
    assert body["modalities_used"] == ["mutation", "clinical"]
    assert_same(body, local(predictor, None, two_genes, clinical))


def test_a_block_past_its_cap_is_refused_with_why_when_the_model_needs_it(strict, patient) -> None:
    client, _ = strict
    _, genes, clinical = patient
    two_genes = without(genes, panel(client_contract(client), "expression")[2:])
    response = client.post("/predict", json={"genomics": two_genes, "clinical": clinical})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "no_modality"
    assert response.json()["detail"] == (
        "model requires expression; expression was given with 98 of 100 missing, more than the model imputes"
    )
    # Under the cap the same model answers.
    partial = without(genes, panel(client_contract(client), "expression")[KEPT:])
    assert client.post("/predict", json={"genomics": partial, "clinical": clinical}).status_code == 200


def client_contract(client: httpx.Client) -> ModelContract:
    return ModelContract.from_dict(client.get("/contract").json())


def test_the_cap_is_a_share_of_the_block(lenient, patient) -> None:
    """50 of 100 missing is at the cap (imputed); 51 is past it (absent). In one batch,
    with one case's own error beside them."""
    client, predictor = lenient
    _, genes, clinical = patient
    expression = panel(predictor.contract, "expression")
    at_cap, past_cap = without(genes, expression[:50]), without(genes, expression[:51])
    cases = [
        {"genomics": at_cap, "clinical": clinical},
        {"genomics": past_cap, "clinical": clinical},
        {"genomics": past_cap, "clinical": {**clinical, "treatment": None}},
    ]
    response = client.post("/predict/batch", json={"cases": cases})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["imputation"]["blocks"]["expression"]["imputed"] == 50
    assert results[0]["imputation"]["absent_blocks"] == []
    assert results[1]["imputation"]["blocks"]["expression"]["treated_as_absent"] is True
    assert results[1]["imputation"]["absent_blocks"] == ["expression"]
    for result, case in zip(results[:2], cases[:2], strict=True):
        assert_same(result, local(predictor, None, case["genomics"], case["clinical"]))
    # The treatment is never imputed: the case says which covariate it lacks.
    assert (results[2]["status"], results[2]["error"]) == (422, "clinical_invalid")
    assert "treatment" in results[2]["detail"]


def test_unseen_and_missing_clinical_values(lenient, patient) -> None:
    client, predictor = lenient
    _, genes, clinical = patient
    unusual = {**clinical, "sex": "X", "age": None}
    response = client.post("/predict", json={"genomics": genes, "clinical": unusual})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["imputation"]["blocks"]["clinical"] == {
        "imputed": 1,
        "of": 3,
        "treated_as_absent": False,
        "unseen_levels": ["sex"],
    }
    assert "clinical" in body["modalities_used"]
    assert_same(body, local(predictor, None, genes, unusual))


# ------------------------------------------------------------------------ the contract


def test_contract_carries_the_policy_and_the_features_that_matter(lenient, models) -> None:
    client, _ = lenient
    body = client.get("/contract").json()
    assert body == json.loads(read_contract_from_onnx(models[0]).to_json())
    for block in body["omics"]:
        assert len(block["fill"]) == len(block["features"]) and block["max_imputed"] == 0.5
    assert set(body["clinical"]["fill"]) == {"age"} and body["clinical"]["max_imputed"] == 0.5
    assert "other" in body["clinical"]["categorical"]["sex"]
    assert "other" not in body["clinical"]["categorical"]["treatment"]
    ranking = body["feature_importance"]
    assert 10 <= len(ranking) <= 30
    known = {b["name"]: set(b["features"]) for b in body["omics"]}
    known["clinical"] = set(body["clinical"]["numeric"]) | set(body["clinical"]["categorical"])
    for row in ranking:
        assert set(row) == {"feature", "block", "importance"}
        assert row["feature"] in known[row["block"]], row
    importances = [row["importance"] for row in ranking]
    assert importances == sorted(importances, reverse=True) and importances[-1] >= 0 and importances[0] > 0


# ---------------------------------------------------------------------- README example


def readme_predict_example() -> list[str]:
    """The README's first /predict call with a study and genomics, as the shell splits it."""
    text = (PROJECT_ROOT / "README.md").read_text()
    for line in text.splitlines():
        if line.startswith("curl ") and "/predict" in line and "genomics=" in line and "study=@" in line:
            return shlex.split(line.split(" #")[0])
    raise AssertionError("README.md has no curl example for /predict with a study and genomics")


def test_readme_predict_example_works_as_written(lenient, patient) -> None:
    """curl's -F fields of the README line, sent as curl sends them: the study file
    (here a tiny cohort study) and the genomics field's text, verbatim."""
    client, predictor = lenient
    study, _, _ = patient
    words = readme_predict_example()
    fields = [words[i + 1] for i, word in enumerate(words) if word == "-F"]
    assert re.fullmatch(r"http://127\.0\.0\.1:3000/predict", words[-1])
    files, data = [], {}
    for field in fields:
        name, value = field.split("=", 1)
        if value.startswith("@"):
            files.append((name, (value[1:], zip_study(study), "application/zip")))
        else:
            data[name] = value
    assert "genomics" in data and files
    genes = json.loads(data["genomics"])  # valid JSON as written
    response = client.post("/predict", files=files, data=data)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "image" in body["modalities_used"]
    for block in predictor.contract.omics:
        given = [f for f in block.features if f in genes]
        if not given:
            assert block.name not in body["imputation"]["blocks"]
            continue
        fill = body["imputation"]["blocks"][block.name]
        assert fill["imputed"] == len(block.features) - len(given)
        assert fill["treated_as_absent"] == (fill["imputed"] / len(block.features) > block.max_imputed)
    assert_same(body, local(predictor, study, genes, None))
