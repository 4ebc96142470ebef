"""Tasks: the survival losses against brute-force definitions, the metrics against
known values, the task switch, the data labels for subtype / multi-label /
survival, and the serving side's answer for each task."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from radfusion.training.tasks import (
    ClassificationTask,
    CoxTask,
    DiscreteHazardTask,
    MultilabelTask,
    build_task,
    concordance,
    cox_partial_likelihood,
    discrete_hazard_nll,
    interval_index,
    survival_curve,
    time_dependent_auc,
)


def breslow_brute_force(risk, time, event) -> float:
    """-1/n_events * sum over events of [r_i - log sum_{j: t_j >= t_i} exp(r_j)]."""
    total, n = 0.0, 0
    for i in range(len(risk)):
        if event[i]:
            at_risk = [j for j in range(len(risk)) if time[j] >= time[i]]
            total += risk[i] - np.log(sum(np.exp(risk[j]) for j in at_risk))
            n += 1
    return -total / n


def test_cox_loss_is_breslow_with_ties():
    rng = np.random.default_rng(0)
    risk = rng.normal(size=12)
    time = np.array([5, 3, 3, 8, 1, 3, 5, 9, 2, 2, 7, 4], dtype=float)  # ties at 2, 3, 5
    event = np.array([1, 1, 0, 1, 1, 1, 1, 0, 1, 0, 1, 1])
    got = cox_partial_likelihood(torch.tensor(risk), torch.tensor(time), torch.tensor(event))
    assert float(got) == pytest.approx(breslow_brute_force(risk, time, event), rel=1e-9)
    # Order of the batch does not matter.
    perm = rng.permutation(12)
    again = cox_partial_likelihood(torch.tensor(risk[perm]), torch.tensor(time[perm]), torch.tensor(event[perm]))
    assert float(again) == pytest.approx(float(got), rel=1e-9)


def test_cox_loss_without_events_is_zero_with_a_gradient():
    risk = torch.randn(4, requires_grad=True)
    loss = cox_partial_likelihood(risk, torch.tensor([1.0, 2, 3, 4]), torch.zeros(4))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(risk.grad == 0)


def test_cox_loss_learns_the_true_risk_ordering():
    """A linear risk fitted by the loss ranks held-out patients as the truth does."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3))
    hazard = np.exp(x @ np.array([1.0, -0.7, 0.0]))
    t = rng.exponential(1 / hazard)
    c = rng.exponential(2.0, size=400)
    time, event = np.minimum(t, c), (t <= c).astype(int)
    weights = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([weights], lr=0.05)
    X, T, E = torch.tensor(x[:300], dtype=torch.float32), torch.tensor(time[:300]), torch.tensor(event[:300])
    for _ in range(200):
        opt.zero_grad()
        cox_partial_likelihood(X @ weights, T, E).backward()
        opt.step()
    w = weights.detach().numpy()
    assert w[0] == pytest.approx(1.0, abs=0.3) and w[1] == pytest.approx(-0.7, abs=0.3) and abs(w[2]) < 0.3
    assert concordance(x[300:] @ w, time[300:], event[300:]) > 0.7


def test_discrete_hazard_nll_matches_its_definition():
    edges = torch.tensor([2.0, 5.0, 10.0])
    logits = torch.tensor([[0.3, -1.0, 0.5], [1.2, 0.1, -0.4], [-0.2, 0.0, 2.0]])
    time = torch.tensor([4.0, 1.0, 30.0])  # intervals 1, 0, and past the end (last)
    event = torch.tensor([1, 0, 0])
    assert interval_index(time, edges).tolist() == [1, 0, 2]
    h = torch.sigmoid(logits)
    expected = (
        -(
            (torch.log(1 - h[0, 0]) + torch.log(h[0, 1]))  # survived 0, event in 1
            + torch.log(1 - h[1, 0])  # censored in 0: survived it
            + torch.log(1 - h[2]).sum()  # censored after the last edge
        )
        / 3
    )
    assert float(discrete_hazard_nll(logits, time, event, edges)) == pytest.approx(float(expected), rel=1e-6)
    curve = survival_curve(logits.numpy())
    assert np.allclose(curve[:, -1], torch.prod(1 - h, dim=1).numpy(), atol=1e-6)
    assert np.all(np.diff(curve, axis=1) <= 0)


def test_discrete_task_fits_edges_on_event_times():
    task = DiscreteHazardTask(4)
    times = np.array([1, 2, 3, 4, 5, 6, 7, 8, 100, 200.0])
    events = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    task.fit_edges(times, events)
    assert task.edges.tolist() == pytest.approx([2.75, 4.5, 6.25, 8.0], abs=1e-4)  # quartiles of the events only
    with pytest.raises(ValueError, match="cannot fill"):
        DiscreteHazardTask(20).fit_edges(times, events)


def test_concordance_and_time_dependent_auc_on_known_cases():
    time = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    event = np.ones(5)
    assert concordance(-time, time, event) == 1.0  # higher risk dies first
    assert concordance(time, time, event) == 0.0
    # At t=2.5: cases (event by then) 1, 2; controls 3, 4, 5.
    assert time_dependent_auc(np.array([5, 4, 3, 2, 1.0]), time, event, 2.5) == 1.0
    assert time_dependent_auc(np.array([5, 2.5, 3, 2, 4.0]), time, event, 2.5) == pytest.approx(4 / 6)
    # Censored before the horizon: neither case nor control.
    censored = np.array([1, 0, 1, 1, 1])
    assert time_dependent_auc(np.array([5, 9, 3, 2, 1.0]), time, censored, 2.5) == 1.0
    assert np.isnan(time_dependent_auc(np.ones(5), time, event, 10.0))  # no controls


def test_the_task_switch_sets_outputs_monitor_and_contract_names():
    assert isinstance(build_task("classification", 3), ClassificationTask)
    cox = build_task("survival_cox", 2)
    assert isinstance(cox, CoxTask) and cox.n_outputs == 1 and cox.monitor == "val/cindex"
    assert cox.contract_task("event") == "survival:cox" and cox.contract_labels(["a", "b"]) == ["risk"]
    discrete = build_task("survival_discrete", 2, n_intervals=6)
    assert discrete.n_outputs == 6 and discrete.contract_task("event") == "survival:discrete"
    multilabel = build_task("multilabel", 3)
    assert isinstance(multilabel, MultilabelTask) and multilabel.monitor == "val/auroc"
    assert build_task("classification", 2).contract_task("response") == "classification:response"
    with pytest.raises(ValueError, match="unknown task"):
        build_task("regression", 1)


def test_survival_validation_metrics_follow_the_ranking():
    task = CoxTask(horizons=(2.5,))
    time = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    batch = {"time": time, "event": torch.tensor([1, 1, 0, 1, 1, 0])}
    task.update(-time[:, None], batch)  # perfect ranking
    metrics = task.compute()
    assert float(metrics["val/cindex"]) == 1.0 and float(metrics["val/td_auc_2.5"]) == 1.0
    task.reset()
    task.update(time[:, None], batch)
    assert float(task.compute()["val/cindex"]) == 0.0


def test_multilabel_loss_and_auroc():
    task = MultilabelTask(2)
    labels = torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 0]])
    perfect = labels * 8 - 4
    assert float(task.loss(perfect, {"label": labels})) < 0.02
    task.update(perfect, {"label": labels})
    assert float(task.compute()["val/auroc"]) == 1.0


# ------------------------------------------------------------------ data labels


def _datamodule(cohort, **kwargs):
    from radfusion.training.data import RadfusionDataModule

    dm = RadfusionDataModule(
        str(cohort), target_shape=(8, 16, 16), target_spacing=(6.0, 12.0, 12.0), cache="none", **kwargs
    )
    dm.setup("fit")
    return dm


def test_records_carry_subtype_multilabel_and_survival_targets(tiny_cohort, tmp_path):
    import shutil

    clinical = pd.read_csv(tiny_cohort / "clinical.csv", dtype={"patient_id": str}).set_index("patient_id")
    dm = _datamodule(tiny_cohort, target="subtype", labels=("S1", "S2", "S3"), split=(0.6, 0.2, 0.2))
    records = [r for part in ("train", "val", "test") for r in dm.records[part]]
    for r in records:
        row = clinical.loc[r["patient_id"]]
        assert r["label"] == ["S1", "S2", "S3"].index(row["subtype"])
        assert r["time"] == pytest.approx(row["survival_months"]) and r["event"] == row["event"]
    # Multi-label: per-drug response columns (synthetic: derived from the cohort).
    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, cohort, ignore=shutil.ignore_patterns(".radfusion"))
    table = clinical.reset_index()
    table["resp_chemo"] = (table["response"] & (table["treatment"] == "chemo")).astype(int)
    table["resp_targeted"] = (table["response"] & (table["treatment"] == "targeted")).astype(int)
    table.to_csv(cohort / "clinical.csv", index=False)
    dm = _datamodule(cohort, targets=("resp_chemo", "resp_targeted"))
    assert dm.labels == ["resp_chemo", "resp_targeted"] and dm.n_classes == 2
    from radfusion.training.data import collate

    batch = collate(
        dm.records["train"][:3]
        and [dict(r, image=np.zeros((1, 8, 16, 16), np.float32)) for r in dm.records["train"][:3]]
    )
    assert batch["label"].shape == (3, 2) and batch["label"].dtype == torch.float32
    wanted = table.set_index("patient_id").loc[batch["patient_id"], ["resp_chemo", "resp_targeted"]].to_numpy()
    assert np.array_equal(batch["label"].numpy(), wanted)
    assert batch["time"].dtype == torch.float32 and batch["event"].shape == (3,)


# ------------------------------------------------------------------ serving answers


def _contract(tiny_contract, **changes):
    import dataclasses

    return dataclasses.replace(tiny_contract, **changes)


def test_serving_answers_follow_the_task(tiny_contract):
    from radfusion.contract import ModelContract
    from radfusion.predictor import task_outputs
    from radfusion.runtime import outputs_from_logits

    logits = np.array([[0.2, -1.0, 1.5]], dtype=np.float32)
    cox = _contract(tiny_contract, task="survival:cox", labels=["risk"])
    assert task_outputs(cox, outputs_from_logits(logits[:, :1], cox)[0]) == {"risk_score": pytest.approx(0.2)}
    discrete = _contract(
        tiny_contract, task="survival:discrete", labels=["h0", "h1", "h2"], time_bins=[6.0, 12.0, 24.0]
    )
    answer = task_outputs(discrete, outputs_from_logits(logits, discrete)[0])
    expected = survival_curve(logits)[0]
    assert list(answer["survival_probabilities"]) == ["6", "12", "24"]
    assert list(answer["survival_probabilities"].values()) == pytest.approx(expected.tolist(), abs=1e-6)
    assert answer["risk_score"] == pytest.approx(-np.log(expected[-1]), abs=1e-5)
    multilabel = _contract(tiny_contract, task="multilabel:drugs", labels=["a", "b", "c"])
    answer = task_outputs(multilabel, outputs_from_logits(logits, multilabel)[0])
    assert answer["predicted_labels"] == ["a", "c"]
    assert answer["probabilities"]["b"] == pytest.approx(1 / (1 + np.exp(1.0)), abs=1e-6)
    # Each label's own temperature (export's per-label calibration), through the contract's JSON.
    scaled = ModelContract.from_json(_contract(multilabel, label_temperatures=[1.0, 0.5, 3.0]).to_json())
    answer = task_outputs(scaled, outputs_from_logits(logits, scaled)[0])
    assert answer["probabilities"]["b"] == pytest.approx(1 / (1 + np.exp(2.0)), abs=1e-6)
    assert answer["probabilities"]["c"] == pytest.approx(1 / (1 + np.exp(-0.5)), abs=1e-6)
    for bad in ([1.0, 2.0], [1.0, 0.0, 1.0], [1.0, float("nan"), 1.0]):
        with pytest.raises(ValueError, match="label_temperatures"):
            _contract(multilabel, label_temperatures=bad)
    # Classification is unchanged: softmax probabilities and the arg-max label.
    answer = task_outputs(tiny_contract, outputs_from_logits(logits[:, :2], tiny_contract)[0])
    assert answer["predicted_label"] == "non-responder" and sum(answer["probabilities"].values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one time bin per output"):
        _contract(tiny_contract, task="survival:discrete", labels=["h0", "h1"], time_bins=[6.0])
