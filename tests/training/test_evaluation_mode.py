"""The evaluation-mode network (training/evaluation_mode.py): BatchNorm's moving
averages are replaced by the plain average over the given batches, with the rest of
the network in evaluation mode; the output shift is the task loss's own maximum
likelihood intercept."""

from __future__ import annotations

import torch
from torch import nn

from radfusion.training.evaluation_mode import (
    batchnorm_layers,
    fit_output_shift,
    recompute_batchnorm_statistics,
)
from radfusion.training.tasks import build_task


class ModeRecorder(nn.Module):
    """Identity that remembers whether it ran in training mode (as dropout would)."""

    def __init__(self):
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), ModeRecorder())
    net[1].running_mean.fill_(5.0)  # stale statistics
    net[1].running_var.fill_(9.0)
    return net


def test_statistics_become_the_average_over_the_batches():
    net = _net().train()
    batches = [torch.randn(16, 3) * 2 + 1 for _ in range(4)]
    used = recompute_batchnorm_statistics(net, batches, net, max_batches=10)
    assert used == 4
    with torch.no_grad():
        hidden = [net[0](b) for b in batches]
    expected_mean = torch.stack([h.mean(0) for h in hidden]).mean(0)
    expected_var = torch.stack([h.var(0, unbiased=True) for h in hidden]).mean(0)
    bn = net[1]
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert int(bn.num_batches_tracked) == 4
    # Dropout-like layers stayed in evaluation mode; the caller's mode and momentum are back.
    assert net[2].seen == [False] * 4
    assert net.training and net[1].training and bn.momentum == 0.1


def test_max_batches_caps_the_pass():
    net = _net()
    assert recompute_batchnorm_statistics(net, (torch.randn(8, 3) for _ in range(100)), net, max_batches=3) == 3
    assert int(net[1].num_batches_tracked) == 3


def test_no_batch_leaves_the_statistics_as_they_were():
    net = _net().eval()
    assert recompute_batchnorm_statistics(net, [], net, max_batches=5) == 0
    assert torch.all(net[1].running_mean == 5.0) and torch.all(net[1].running_var == 9.0)
    assert not net.training and not net[1].training


def test_a_network_without_batchnorm_is_untouched():
    net = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    assert batchnorm_layers(net) == []
    assert recompute_batchnorm_statistics(net, [torch.randn(4, 3)], net, max_batches=5) == 0


def test_output_shift_makes_the_mean_prediction_the_class_frequency():
    torch.manual_seed(0)
    label = (torch.rand(300) < 0.3).long()
    # Informative logits, but every one 1.0 too high for the positive class.
    logits = torch.stack([torch.zeros(300), 2.0 * (label.float() - 0.5) + torch.randn(300) + 1.0], dim=1)
    task = build_task("classification", 2, 8, (12.0,))
    shift = fit_output_shift(logits, {"label": label}, task.loss)
    probability = torch.softmax(logits + shift, dim=1)[:, 1]
    assert abs(float(probability.mean()) - float(label.float().mean())) < 1e-3
    assert float(shift[1] - shift[0]) < -0.5  # it lowered the positive class
    assert task.loss(logits + shift, {"label": label}) < task.loss(logits, {"label": label})


def test_a_cox_risk_score_gets_no_shift():
    # The partial likelihood is unchanged by adding a constant to every risk.
    torch.manual_seed(0)
    risk = torch.randn(50, 1)
    targets = {"time": torch.rand(50) * 60, "event": (torch.rand(50) < 0.6).long()}
    shift = fit_output_shift(risk, targets, build_task("survival_cox", 2, 8, (12.0,)).loss)
    assert torch.allclose(shift, torch.zeros(1))
