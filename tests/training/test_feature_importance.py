"""The contract's feature importance (radfusion.training.importance). On a linear model
Integrated Gradients is exact (attribution = weight x value), so the importance of
each gene and covariate is known in closed form for every task's score; on the model
trained on the synthetic cohort (conftest ``evidence_run``), export writes a ranking
led by the planted driver genes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radfusion.contract import ClinicalSpec, OmicsBlock
from radfusion.training.evidence.cases import Cases
from radfusion.training.importance import feature_importance

GENES = ["A", "B", "C", "D"]
DRIVERS_IN_TOP_20 = 8
W = torch.tensor([2.0, -1.0, 0.5, 0.0])  # gene weights
# Clinical columns: age, age=missing, sex=F, sex=M, sex=other.
V = torch.tensor([0.3, 0.8, 1.5, -0.5, 0.0])


class LinearNet(torch.nn.Module):
    """score = W . genomics + V . clinical, shaped as each task's outputs."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.omics_sizes = {"expression": len(GENES)}
        self.modality_names = ["image", "expression", "clinical"]
        self.n_outputs = {"classification": 2, "multilabel": 2, "survival_cox": 1, "survival_discrete": 3}[kind]

    def uses(self, modality: str) -> bool:
        return modality in ("expression", "clinical")

    def used_mask(self) -> list[bool]:
        return [self.uses(m) for m in self.modality_names]

    def forward(self, image, genomics, clinical, presence):
        score = genomics @ W + clinical @ V
        if self.kind == "classification":  # log-odds of the second label = score
            return torch.stack([torch.zeros_like(score), score], dim=1)
        if self.kind == "multilabel":  # two labels' logits: score and 3 x score
            return torch.stack([score, 3 * score], dim=1)
        if self.kind == "survival_discrete":  # three intervals' hazard logits
            return torch.stack([score - 1, score, score + 1], dim=1)
        return score[:, None]


def _spec() -> tuple[OmicsBlock, ClinicalSpec]:
    block = OmicsBlock(features=GENES, mean=[0.0] * 4, std=[1.0] * 4, name="expression")
    spec = ClinicalSpec(numeric={"age": [60.0, 10.0]}, categorical={"sex": ["F", "M", "other"]}, indicators=["age"])
    assert spec.features == ["age", "age=missing", "sex=F", "sex=M", "sex=other"]
    return block, spec


def _cases(rng: np.random.Generator) -> Cases:
    n = 6
    genomics = torch.tensor(rng.normal(size=(n, len(GENES))), dtype=torch.float32)
    genomics[5] = 100.0  # the case without the block: its values must not count
    clinical = torch.zeros(n, 5)
    clinical[:, 0] = torch.tensor(rng.normal(size=n), dtype=torch.float32)
    clinical[[1, 4], 0], clinical[[1, 4], 1] = 0.0, 1.0  # age missing: median (z = 0) + indicator
    for case, column in enumerate([2, 3, 2, 4, 3, 2]):
        clinical[case, column] = 1.0
    presence = torch.tensor([[0.0, 1.0, 1.0]] * n)
    presence[5, 1] = 0.0
    return Cases(
        [f"p{i}" for i in range(n)], torch.zeros(n, 1, 2, 2, 2), genomics, clinical, presence, torch.zeros(n), [[]] * n
    )


@pytest.mark.parametrize(("kind", "scale"), [("classification", 1.0), ("survival_cox", 1.0), ("multilabel", 4.0)])
def test_importance_is_the_mean_absolute_attribution(kind: str, scale: float) -> None:
    cases = _cases(np.random.default_rng(0))
    block, spec = _spec()
    ranking = feature_importance(LinearNet(kind), kind, cases, [block], spec, top=10)
    found = {(row["block"], row["feature"]): row["importance"] for row in ranking}
    has_genes = cases.presence[:, 1] > 0
    expected = {
        ("expression", g): scale * float((W[i] * cases.genomics[has_genes, i]).abs().mean())
        for i, g in enumerate(GENES)
    }
    # A covariate sums its columns (age and its missingness indicator, sex's one-hot
    # levels), each attributed from its baseline: z = 0, not missing, every level at 1/3.
    per_column = V * (cases.clinical - torch.tensor([0.0, 0.0, 1 / 3, 1 / 3, 1 / 3]))
    expected[("clinical", "age")] = scale * float(per_column[:, :2].sum(dim=1).abs().mean())
    expected[("clinical", "sex")] = scale * float(per_column[:, 2:].sum(dim=1).abs().mean())
    assert set(found) == set(expected)
    for key, value in expected.items():
        assert found[key] == pytest.approx(value, rel=1e-3, abs=1e-6), key
    assert found[("expression", "D")] == 0.0  # weight 0
    importances = [row["importance"] for row in ranking]
    assert importances == sorted(importances, reverse=True)
    assert [row["feature"] for row in feature_importance(LinearNet(kind), kind, cases, [block], spec, top=2)] == [
        row["feature"] for row in ranking[:2]
    ]


def test_a_nonlinear_score_shares_each_case_change_in_proportion() -> None:
    """Discrete-time survival: the risk, sum_k softplus(score + c_k), is a function of one
    linear score, so each input's attribution is its share of the score's change times
    the case's risk change over score change (Integrated Gradients' completeness)."""
    from radfusion.training.tasks import discrete_risk

    cases = _cases(np.random.default_rng(2))
    block, spec = _spec()
    net = LinearNet("survival_discrete")
    ranking = feature_importance(net, "survival_discrete", cases, [block], spec, top=10)
    found = {row["feature"]: row["importance"] for row in ranking}
    # The path starts at z = 0 and at the levels' frequencies among the cases.
    baseline = torch.cat([torch.zeros(2), cases.clinical[:, 2:].mean(dim=0)])
    with torch.no_grad():
        score = cases.genomics @ W + cases.clinical @ V
        start = torch.zeros(1, len(GENES)) @ W + baseline @ V
        risk = discrete_risk(net(None, cases.genomics, cases.clinical, None))
        risk_start = discrete_risk(net(None, torch.zeros(1, len(GENES)), baseline[None], None))
    ratio = (risk - risk_start) / (score - start)
    has_genes = cases.presence[:, 1] > 0
    for i, gene in enumerate(GENES):
        want = float((W[i] * cases.genomics[:, i] * ratio)[has_genes].abs().mean())
        assert found[gene] == pytest.approx(want, rel=1e-3, abs=1e-6), gene
    sex = ((V * (cases.clinical - baseline))[:, 2:].sum(dim=1) * ratio).abs().mean()
    assert found["sex"] == pytest.approx(float(sex), rel=1e-3)


def test_a_model_without_table_inputs_has_no_importance() -> None:
    cases = _cases(np.random.default_rng(1))
    block, spec = _spec()
    net = LinearNet("classification")
    net.uses = lambda modality: modality == "image"  # type: ignore[method-assign]
    assert feature_importance(net, "classification", cases, [block], spec) == []


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first test to use evidence_run trains it (about 4 minutes on 2 cores)
def test_export_writes_a_ranking_led_by_the_planted_drivers(evidence_run, tmp_path) -> None:
    from radfusion.contract import read_contract_from_onnx
    from radfusion.training.evidence import truth
    from radfusion.training.export import export

    checkpoint, _, dm, _ = evidence_run
    report = export(checkpoint, tmp_path / "model.onnx")
    assert report["feature_importance"]["split"] == "val"
    assert report["feature_importance"]["cases"] == 48
    ranking = read_contract_from_onnx(tmp_path / "model.onnx").feature_importance
    assert len(ranking) == 30 and report["feature_importance"]["features"] == 30
    panel = {b.name: set(b.features) for b in dm.omics}
    panel["clinical"] = set(dm.clinical.covariates)
    assert all(row["feature"] in panel[row["block"]] for row in ranking)
    drivers = set(truth.load_truth(dm.cohort_dir)["driver_genes"])
    genes = [row["feature"] for row in ranking if row["block"] != "clinical"]
    found = len(set(genes[:20]) & drivers)
    assert found >= DRIVERS_IN_TOP_20, f"{found} of {len(drivers)} drivers in the top 20 genes: {genes[:20]}"


def test_a_covariate_every_case_shares_moves_nothing() -> None:
    cases = _cases(np.random.default_rng(3))
    block, spec = _spec()
    cases.clinical[:, 2:] = torch.tensor([0.0, 1.0, 0.0])  # every case has the same sex level
    found = {
        row["feature"]: row["importance"]
        for row in feature_importance(LinearNet("classification"), "classification", cases, [block], spec, top=10)
    }
    assert found.get("sex", 0.0) == pytest.approx(0.0, abs=1e-6)
    assert found["age"] > 1e-3 and sum(found[g] > 1e-3 for g in GENES) >= 3
