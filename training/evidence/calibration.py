"""Calibration: do predicted probabilities match observed frequencies?

Temperature scaling (Guo et al. 2017) divides the logits by one scalar fitted on the
validation split by minimising the negative log-likelihood; it cannot change the
ranking (AUROC) of any prediction, only how confident they are. The fitted value is
stored in the model contract's ``temperature`` at export, where the serving runtime
applies it. ECE is torchmetrics' binned expected calibration error.

A temperature also moves the mean prediction when the logits are not symmetric about
zero, and 150 validation patients measure that level no better than +-0.04. So
``calibrate`` fits the temperature with the level held by the training split: for
each candidate temperature the network's output shift (training/evaluation_mode.py)
is refitted so that the calibrated probabilities' mean per class on the training
split (evaluation mode) is the class frequency, and the temperature is the one that
then minimises the validation NLL plus a normal prior on log T (the posterior mode).
On the evidence tests' model a temperature from validation with the level set on the
training split calibrated better than the temperature alone (bench/results/evidence.json
has the figures over draws).

Binned ECE is biased upwards on small samples: even a perfectly calibrated model shows
an ECE of several hundredths on ~200 patients, more the less extreme its probabilities
(labels are Bernoulli draws). ``perfect_calibration_ece`` measures that floor for the
probabilities at hand (consistency resampling, Broecker & Smith 2007), so a figure can
be read against it; ``cross_fitted_probability`` gives out-of-fold temperature-scaled
probabilities over all held-out cases, for an ECE on more patients than one split."""

from __future__ import annotations

import logging

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.calibration import calibration_curve
from sklearn.model_selection import StratifiedKFold
from torchmetrics.functional.classification import binary_calibration_error

from radfusion.training.evaluation_mode import fit_output_shift
from radfusion.training.evidence.cases import collect_cases, predict_logits

log = logging.getLogger(__name__)

N_BINS = 10
TEMPERATURE_BOUNDS = (0.05, 20.0)
# The prior on log T (normal, mean 0: T = 1): a temperature within a factor of about 1.8
# either way (95%). A hundred or two validation patients pin log T down loosely and the
# value they give moves with the draw of them (bench/results/evidence.json, per draw);
# many patients, or a clear miscalibration, outweigh the prior.
TEMPERATURE_PRIOR_SD = 0.3
# |log T - log bound| below which a fitted temperature counts as on the bound.
BOUND_TOLERANCE = 0.01
# Label draws for the perfect-calibration floor: at 1000 its 95th percentile varies by
# about 0.0015 (standard deviation over seeds) on ~200 cases.
FLOOR_DRAWS = 1000


def positive_probability(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64) / temperature, dim=1)[:, -1].numpy()


def ece(probability: np.ndarray, label: np.ndarray, n_bins: int = N_BINS) -> float:
    return float(binary_calibration_error(torch.as_tensor(probability), torch.as_tensor(label).long(), n_bins=n_bins))


def fit_temperature(logits: np.ndarray, label: np.ndarray) -> float:
    """The temperature maximising the posterior of ``label`` under softmax(logits / T)
    (the NLL plus the prior on log T, ``TEMPERATURE_PRIOR_SD``)."""
    logits_t = torch.as_tensor(logits, dtype=torch.float64)
    label_t = torch.as_tensor(label).long()
    if len(label_t) < 2 or label_t.unique().numel() < 2:
        raise ValueError("temperature scaling needs validation cases of every class")

    def nll(log_t: float) -> float:
        value = float(torch.nn.functional.cross_entropy(logits_t / np.exp(log_t), label_t, reduction="sum"))
        return value + _prior(log_t)

    return _search_temperature(nll)


def _prior(log_t: float) -> float:
    """Negative log prior density of log T (up to a constant): N(0, TEMPERATURE_PRIOR_SD^2)."""
    return log_t**2 / (2 * TEMPERATURE_PRIOR_SD**2)


def _search_temperature(nll) -> float:
    """The temperature minimising ``nll`` (a function of log T) within TEMPERATURE_BOUNDS;
    a warning when it lands on a bound, where the minimum may lie beyond it."""
    low, high = np.log(TEMPERATURE_BOUNDS)
    t = float(np.exp(minimize_scalar(nll, bounds=(low, high), method="bounded").x))
    if min(abs(np.log(t) - low), abs(np.log(t) - high)) < BOUND_TOLERANCE:
        log.warning(
            "temperature %.3g is at the search bound %s: the validation split is separable or too small "
            "for temperature scaling, and the probabilities' confidence is not fitted",
            t,
            TEMPERATURE_BOUNDS,
        )
    return t


def fit_temperature_and_level(
    train_logits: np.ndarray, train_label: np.ndarray, val_logits: np.ndarray, val_label: np.ndarray
) -> tuple[float, np.ndarray]:
    """(T, shift): softmax((logits + shift) / T) has the training split's class
    frequencies as its mean there, and T minimises the validation NLL given that (plus
    the prior on log T)."""
    train_t, val_t = (
        torch.as_tensor(train_logits, dtype=torch.float64),
        torch.as_tensor(val_logits, dtype=torch.float64),
    )
    train_y, val_y = torch.as_tensor(train_label).long(), torch.as_tensor(val_label).long()
    if len(val_y) < 2 or val_y.unique().numel() < 2:
        raise ValueError("temperature scaling needs validation cases of every class")
    ce = torch.nn.functional.cross_entropy

    def level(t: float) -> torch.Tensor:  # the shift on the scaled logits
        return fit_output_shift(train_t / t, {"label": train_y}, lambda z, b: ce(z, b["label"]))

    def nll(log_t: float) -> float:
        t = np.exp(log_t)
        return float(ce(val_t / t + level(t), val_y, reduction="sum")) + _prior(log_t)

    t = _search_temperature(nll)
    return t, (level(t) * t).float().numpy()


def calibrate(net, dm) -> float:
    """Fit the temperature (returned) and the level (written into ``net.output_bias``,
    so the exported model carries it) as ``fit_temperature_and_level`` describes."""
    train, val = collect_cases(dm, "train"), collect_cases(dm, "val")
    t, shift = fit_temperature_and_level(
        predict_logits(net, train).numpy(), train.label.numpy(), predict_logits(net, val).numpy(), val.label.numpy()
    )
    net.output_bias += torch.as_tensor(shift, device=net.output_bias.device)
    return t


def calibrate_labels(net, dm) -> list[float]:
    """Multi-label: each label calibrated as its own binary classifier
    (``fit_label_temperatures``). Returns the temperatures; the levels go into
    ``net.output_bias``."""
    train, val = collect_cases(dm, "train"), collect_cases(dm, "val")
    temperatures, shifts = fit_label_temperatures(
        predict_logits(net, train).numpy(), train.label.numpy(), predict_logits(net, val).numpy(), val.label.numpy()
    )
    net.output_bias += torch.as_tensor(shifts, dtype=net.output_bias.dtype, device=net.output_bias.device)
    return temperatures


def fit_label_temperatures(
    train_logits: np.ndarray, train_label: np.ndarray, val_logits: np.ndarray, val_label: np.ndarray
) -> tuple[list[float], np.ndarray]:
    """(temperature per label, shift per label): each label's temperature from the
    validation split and level from the training split, as ``fit_temperature_and_level``
    does for one classifier. Labels differ in prevalence and in how well the network
    learned them: one temperature for all over-sharpens some and blunts others."""
    temperatures, shifts = [], []
    for j in range(train_logits.shape[1]):
        # A label's sigmoid is the softmax over (0, logit): the two-class case.
        pair = [np.stack([np.zeros_like(z[:, j]), z[:, j]], axis=1) for z in (train_logits, val_logits)]
        try:
            t, shift = fit_temperature_and_level(pair[0], train_label[:, j], pair[1], val_label[:, j])
        except ValueError:
            # A rare label can miss a class among the validation patients: nothing to fit it on.
            log.warning("label %d has one class only among the validation cases: left uncalibrated (T = 1)", j)
            t, shift = 1.0, np.zeros(2)
        temperatures.append(t)
        shifts.append(float(shift[1] - shift[0]))
    return temperatures, np.asarray(shifts)


def perfect_calibration_ece(
    probability: np.ndarray, n_bins: int = N_BINS, draws: int = FLOOR_DRAWS, seed: int = 0
) -> dict:
    """The ECE a perfectly calibrated model with these probabilities would show on this
    many cases: labels drawn as Bernoulli(probability) ``draws`` times, the mean and
    95th percentile of their ECE. An observed ECE above the 95th percentile is
    miscalibration this sample can detect; one below it is indistinguishable from noise."""
    probability = np.asarray(probability, dtype=np.float64)
    rng = np.random.default_rng(seed)
    values = np.array(
        [ece(probability, (rng.random(len(probability)) < probability).astype(int), n_bins) for _ in range(draws)]
    )
    return {"mean": float(values.mean()), "p95": float(np.quantile(values, 0.95))}


def cross_fitted_probability(
    logits: np.ndarray, label: np.ndarray, folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, list[float]]:
    """Positive-class probabilities, each scaled by a temperature fitted on the other
    folds (stratified), and the fold temperatures: an honest calibration estimate for
    "temperature scaling fitted on (folds-1)/folds of these cases", on all of them.
    Fewer folds when a class has fewer cases than ``folds`` (each fold needs one)."""
    label = np.asarray(label).astype(int)
    folds = min(folds, int(np.bincount(label, minlength=2).min()))
    if folds < 2:
        raise ValueError("cross-fitting needs at least two cases of each class")
    probability = np.empty(len(label))
    temperatures = []
    for fit, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(logits, label):
        temperatures.append(fit_temperature(logits[fit], label[fit]))
        probability[held] = positive_probability(logits[held], temperatures[-1])
    return probability, temperatures


def reliability(probability: np.ndarray, label: np.ndarray, n_bins: int = N_BINS) -> dict:
    """Reliability diagram points: observed frequency vs mean predicted probability per bin."""
    observed, predicted = calibration_curve(label, probability, n_bins=n_bins, strategy="uniform")
    return {"observed": observed.tolist(), "predicted": predicted.tolist()}


def _smaller_class(*labels: np.ndarray) -> int:
    return int(np.bincount(np.concatenate(labels).astype(int), minlength=2).min())


def calibration_summary(
    test_logits: np.ndarray,
    test_label: np.ndarray,
    temperature: float,
    val_logits: np.ndarray | None = None,
    val_label: np.ndarray | None = None,
) -> dict:
    """ECE and reliability before and after temperature scaling, on held-out cases, with
    the perfect-calibration floor at this many cases. Given the validation cases too,
    ``cross_fitted`` adds the ECE over validation + test with out-of-fold temperatures."""
    before = positive_probability(test_logits)
    after = positive_probability(test_logits, temperature)
    floor = perfect_calibration_ece(after)
    summary = {
        "temperature": temperature,
        "n": len(test_label),
        "n_bins": N_BINS,
        "ece_before": ece(before, test_label),
        "ece_after": ece(after, test_label),
        "ece_perfect_mean": floor["mean"],
        "ece_perfect_p95": floor["p95"],
        "reliability_before": reliability(before, test_label),
        "reliability_after": reliability(after, test_label),
    }
    if val_logits is not None and val_label is not None and _smaller_class(val_label, test_label) >= 2:
        logits = np.concatenate([val_logits, test_logits])
        label = np.concatenate([val_label, test_label])
        probability, temperatures = cross_fitted_probability(logits, label)
        pooled_floor = perfect_calibration_ece(probability)
        summary["cross_fitted"] = {
            "n": len(label),
            "folds": len(temperatures),
            "temperatures": temperatures,
            "ece": ece(probability, label),
            "ece_perfect_mean": pooled_floor["mean"],
            "ece_perfect_p95": pooled_floor["p95"],
        }
    return summary
