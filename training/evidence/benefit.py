"""How sure the model is of a treatment's benefit: the explicit treatment term
(training/fusion/interaction.py) refitted with the rest of the network fixed, and
bootstrap draws of it, so a recommendation switches a patient only when the benefit's
lower bound clears the margin, and a benefit the patients cannot establish is said to
be one ("no confident benefit").

The term gives each non-reference treatment t a benefit over the reference on the
log-odds of response that is linear in its parameters theta_t:

    benefit_t(x) = phi(x) . theta_t,  phi(x) = [1, block presence bits, (x - r) on the
    candidate features, zero where their block is absent]

(the network hides the treatment from every other path, so this is the whole predicted
difference between treatments). With the rest of the network fixed, the term is a
logistic regression with an offset: the log-odds the rest predicts for each patient.

Why refit (``fit_benefit``, at export and before the evidence): training leaves the
term where twenty epochs of L1-penalised SGD from zero got it, and its unpenalised
offsets barely move from their zero start in that time, so the benefit a wild-type
patient was predicted carried part of the mutated patients' (one training: +0.6
log-odds for a drug with none). The regression is solved to convergence instead, on
the training and validation patients: the validation patients' offsets are out of
sample, where the training patients' are the network's own fit of their outcomes,
which absorbs part of any treatment effect. The refit is written back into the
network, so its predictions, the ranking and the intervals are one estimate.

The draws refit the same regression on bootstrap resamples (ridge-penalised: a
subgroup that responds to one arm almost always makes the unpenalised fit diverge),
centred on the full fit. They cover the term's sampling noise given the rest of the
network, not the rest's own: an interval that is if anything too narrow.

The draws go into the model contract (radfusion.treatment applies them: the one rule
for serving and the evidence), on the log-odds scale before the temperature."""

from __future__ import annotations

import numpy as np
import torch

from radfusion.benefit import BenefitDraws
from radfusion.training.evidence.cases import Cases, collect_cases

DRAWS = 200
# Ridge penalty on every column but the main effect: a N(0, 1) prior on each log-odds
# coefficient, which keeps a subgroup's effect finite when it responds to one arm almost
# always and barely moves one that a few hundred patients establish.
RIDGE = 1.0
NEWTON_STEPS = 25


def has_benefit(module) -> bool:
    """Whether ``module``'s network has a treatment term whose benefit draws can be
    fitted: a binary response classifier trained with model.network.treatment_interaction."""
    net = module.net
    return (
        module.task.kind == "classification"
        and getattr(net, "treatment_effect", None) is not None
        and net.n_outputs == 2
    )


def _columns(term) -> tuple[list[int], list[int]]:
    """Indices of the used omics blocks (presence-mask columns) and of the used features
    (genomics-input columns): the term's non-zero design columns."""
    blocks = [int(b) for b, used in zip(term.block_presence, term.block_used, strict=True) if used > 0]
    features = [i for i, used in enumerate(term.feature_used.tolist()) if used > 0]
    return blocks, features


def fitting_cases(dm) -> list[Cases]:
    """The patients the term is refitted on, and the causal-ML peers fitted on beside it:
    the training split and, when there is one, the validation split."""
    return [collect_cases(dm, part) for part in ("train", "val") if dm.records.get(part)]


def fit_benefit(net, cases: list[Cases], draws: int = DRAWS, seed: int = 0) -> BenefitDraws:
    """Refit ``net``'s treatment term in place on ``cases`` (``fitting_cases``) and return
    the bootstrap draws of every non-reference treatment's benefit parameters, centred on
    the refit (see the module docstring)."""
    term = net.treatment_effect
    if term is None:
        raise ValueError("the model has no treatment term (model.network.treatment_interaction)")
    if term.n_outputs != 2:
        raise ValueError("benefit intervals are computed for binary response models")
    blocks, features = _columns(term)
    spec = BenefitDraws(
        draws=np.zeros((0, term.n_treatments, 1 + len(blocks) + len(features))),
        block_presence=blocks,
        feature_columns=features,
        feature_blocks=[int(term.feature_block[i]) for i in features],
        reference=[float(term.reference[i]) for i in features],
        clinical_presence=int(term.clinical_presence),
        treatment_columns=[int(c) for c in term.treatment_columns],
    )
    x, y, offset = _regression(net, spec, cases)
    theta = _ridge_logistic(x, y, offset, np.ones(len(y)), spec.n_parameters)
    _set_parameters(term, blocks, features, theta[:-1])
    estimate = _trained_parameters(term, blocks, features)
    deviations = bootstrap_deviations(x, y, offset, spec.n_parameters, draws, seed)[:, :-1]
    # Centred on the term as written back: the interval is around the benefit the ranking states.
    spec.draws = (estimate.reshape(1, -1) + deviations).reshape(draws, term.n_treatments, spec.n_parameters)
    return spec


def _regression(net, spec: BenefitDraws, cases: list[Cases]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The term as a logistic regression: design (n, T*P + 1), labels and the offset
    (what the rest of the network predicts), over all ``cases``. The last column is an
    intercept, fitted and not kept: the rest of the network's level is not exact (out of
    sample least of all), and with unequal arms a level error would otherwise pass into
    the treatments' main effects."""
    term = net.treatment_effect
    xs, ys, offsets = [], [], []
    with torch.no_grad():
        net.eval()
        for part in cases:
            logits = net(part.image, part.genomics, part.clinical, part.presence).double()
            own = term(part.genomics, part.clinical, part.presence).double()
            design = spec.design(part.genomics.numpy(), part.presence.numpy())  # (n, P)
            given = spec.given(part.clinical.numpy(), part.presence.numpy())  # (n, T)
            xs.append((given[:, :, None] * design[:, None, :]).reshape(len(design), -1))
            offsets.append(((logits[:, 1] - logits[:, 0]) - (own[:, 1] - own[:, 0])).numpy())
            ys.append(part.label.numpy().astype(np.float64))
    x = np.vstack(xs)
    return np.hstack([x, np.ones((len(x), 1))]), np.concatenate(ys), np.concatenate(offsets)


def bootstrap_deviations(
    x: np.ndarray, y: np.ndarray, offset: np.ndarray, n_parameters: int, draws: int = DRAWS, seed: int = 0
) -> np.ndarray:
    """(draws, columns): the ridge logistic regression with ``offset`` (``x``'s last
    column the unpenalised intercept, see ``_regression``) refitted on ``draws``
    bootstrap resamples of the rows, each minus the refits' mean."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(y), np.full(len(y), 1 / len(y)), size=draws).astype(float)
    refits = np.stack([_ridge_logistic(x, y, offset, weight, n_parameters) for weight in counts])
    return refits - refits.mean(axis=0)


def _trained_parameters(term, blocks: list[int], features: list[int]) -> np.ndarray:
    """The trained term's theta on the log-odds scale (output 1 minus output 0), (T*P,)."""
    t, k = term.n_treatments, term.n_outputs
    bias = term.blocks.bias.detach().double().reshape(t, k)
    block_index = [list(term.block_presence.tolist()).index(b) for b in blocks]
    block_w = term.blocks.weight.detach().double().reshape(t, k, -1)[:, :, block_index]
    feature_w = term.features.weight.detach().double().reshape(t, k, -1)[:, :, features]
    theta = torch.cat([bias[:, :, None], block_w, feature_w], dim=2)
    return (theta[:, 1] - theta[:, 0]).reshape(-1).numpy()


def _set_parameters(term, blocks: list[int], features: list[int], theta: np.ndarray) -> None:
    """Write theta (T*P,) into the term: output 1 gets it, output 0 zero, so the log-odds
    difference is theta and the rest of the term (unused columns) is zero."""
    t, k = term.n_treatments, term.n_outputs
    theta = torch.as_tensor(theta.reshape(t, -1), dtype=term.features.weight.dtype)
    block_index = [list(term.block_presence.tolist()).index(b) for b in blocks]
    n_blocks = len(blocks)
    with torch.no_grad():
        bias = torch.zeros(t, k, dtype=theta.dtype)
        block_w = torch.zeros(t, k, term.blocks.weight.shape[1], dtype=theta.dtype)
        feature_w = torch.zeros(t, k, term.n_features, dtype=theta.dtype)
        bias[:, 1] = theta[:, 0]
        block_w[:, 1, block_index] = theta[:, 1 : 1 + n_blocks]
        feature_w[:, 1, features] = theta[:, 1 + n_blocks :]
        term.blocks.bias.copy_(bias.reshape(-1))
        term.blocks.weight.copy_(block_w.reshape(t * k, -1))
        term.features.weight.copy_(feature_w.reshape(t * k, -1))


def _ridge_logistic(x, y, offset, weight, n_parameters: int) -> np.ndarray:
    """Newton's method for the weighted, ridge-penalised logistic regression with offset;
    the main effects (column 0 of each treatment's block) and the intercept (the last
    column) are not penalised."""
    penalty = np.full(x.shape[1], RIDGE)
    penalty[:-1:n_parameters] = 0.0
    penalty[-1] = 0.0
    theta = np.zeros(x.shape[1])
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(offset + x @ theta)))
        gradient = x.T @ (weight * (p - y)) + penalty * theta
        hessian = (x * (weight * p * (1 - p))[:, None]).T @ x + np.diag(penalty) + 1e-9 * np.eye(len(theta))
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return theta
