"""Calibration: do predicted probabilities match observed frequencies?

Temperature scaling (Guo et al. 2017) divides the logits by one scalar fitted on the
validation split by minimising the negative log-likelihood; it cannot change the
ranking (AUROC) of any prediction, only how confident they are. The fitted value is
stored in the model contract's ``temperature`` at export, where the serving runtime
applies it. ECE is torchmetrics' binned expected calibration error."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.calibration import calibration_curve
from torchmetrics.functional.classification import binary_calibration_error

from training.evidence.cases import collect_cases, predict_logits

N_BINS = 10
TEMPERATURE_BOUNDS = (0.05, 20.0)


def positive_probability(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64) / temperature, dim=1)[:, -1].numpy()


def ece(probability: np.ndarray, label: np.ndarray, n_bins: int = N_BINS) -> float:
    return float(binary_calibration_error(torch.as_tensor(probability), torch.as_tensor(label).long(), n_bins=n_bins))


def fit_temperature(logits: np.ndarray, label: np.ndarray) -> float:
    """The temperature minimising the NLL of ``label`` under softmax(logits / T)."""
    logits_t = torch.as_tensor(logits, dtype=torch.float64)
    label_t = torch.as_tensor(label).long()
    if len(label_t) < 2 or label_t.unique().numel() < 2:
        raise ValueError("temperature scaling needs validation cases of every class")

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits_t / np.exp(log_t), label_t))

    low, high = np.log(TEMPERATURE_BOUNDS)
    return float(np.exp(minimize_scalar(nll, bounds=(low, high), method="bounded").x))


def fit_temperature_on_split(net, dm, part: str = "val") -> float:
    """The temperature fitted on a split's cases (validation by default)."""
    cases = collect_cases(dm, part)
    return fit_temperature(predict_logits(net, cases).numpy(), cases.label.numpy())


def reliability(probability: np.ndarray, label: np.ndarray, n_bins: int = N_BINS) -> dict:
    """Reliability diagram points: observed frequency vs mean predicted probability per bin."""
    observed, predicted = calibration_curve(label, probability, n_bins=n_bins, strategy="uniform")
    return {"observed": observed.tolist(), "predicted": predicted.tolist()}


def calibration_summary(test_logits: np.ndarray, test_label: np.ndarray, temperature: float) -> dict:
    """ECE and reliability before and after temperature scaling, on held-out cases."""
    before = positive_probability(test_logits)
    after = positive_probability(test_logits, temperature)
    return {
        "temperature": temperature,
        "n": int(len(test_label)),
        "n_bins": N_BINS,
        "ece_before": ece(before, test_label),
        "ece_after": ece(after, test_label),
        "reliability_before": reliability(before, test_label),
        "reliability_after": reliability(after, test_label),
    }
