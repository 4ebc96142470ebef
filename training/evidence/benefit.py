"""How sure the model is of a treatment's benefit: bootstrap draws of the explicit
treatment term (training/fusion/interaction.py), so a recommendation switches a patient
only when the benefit's lower bound clears the margin, and a benefit the training
patients cannot establish is said to be one ("no confident benefit").

The term gives each non-reference treatment t a benefit over the reference on the
log-odds of response that is linear in its parameters theta_t:

    benefit_t(x) = phi(x) . theta_t,  phi(x) = [1, block presence bits, (x - r) on the
    candidate features, zero where their block is absent]

(the network hides the treatment from every other path, so this is the whole predicted
difference between treatments). With the rest of the network fixed, the term is a
logistic regression with an offset: the log-odds the rest predicts for each training
patient. That regression is refitted on bootstrap resamples of the training patients
(ridge-penalised: a subgroup that responds to one arm almost always makes the
unpenalised fit diverge); the spread of the refits around their full-data fit, added
to the trained term's own estimate, gives the draws. They cover the treatment term's
sampling noise given the rest of the network, not the rest's own: an interval that is
if anything too narrow, which the margin on the lower bound absorbs.

The draws go into the model contract (radfusion.treatment applies them: the one rule
for serving and the evidence), on the log-odds scale before the temperature."""

from __future__ import annotations

import numpy as np
import torch

from radfusion.benefit import BenefitDraws
from radfusion.training.evidence.cases import Cases

DRAWS = 200
# Ridge penalty on every column but the main effect: a N(0, 1) prior on each log-odds
# coefficient, which keeps a subgroup's effect finite when it responds to one arm almost
# always and barely moves one that a few hundred patients establish.
RIDGE = 1.0
NEWTON_STEPS = 25


def has_benefit(net) -> bool:
    """Whether ``net`` has a treatment term whose benefit draws can be fitted (a binary
    response model with model.network.treatment_interaction)."""
    return getattr(net, "treatment_effect", None) is not None and net.n_outputs == 2


def _columns(term) -> tuple[list[int], list[int]]:
    """Indices of the used omics blocks (presence-mask columns) and of the used features
    (genomics-input columns): the term's non-zero design columns."""
    blocks = [int(b) for b, used in zip(term.block_presence, term.block_used, strict=True) if used > 0]
    features = [i for i, used in enumerate(term.feature_used.tolist()) if used > 0]
    return blocks, features


def benefit_draws(net, train: Cases, draws: int = DRAWS, seed: int = 0) -> BenefitDraws:
    """Draws of every non-reference treatment's benefit parameters, from the training cases."""
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
    estimate = _trained_parameters(term, blocks, features)
    with torch.no_grad():
        net.eval()
        logits = net(train.image, train.genomics, train.clinical, train.presence).double()
        own = term(train.genomics, train.clinical, train.presence).double()
    log_odds = (logits[:, 1] - logits[:, 0]).numpy()
    own_log_odds = (own[:, 1] - own[:, 0]).numpy()
    design = spec.design(train.genomics.numpy(), train.presence.numpy())  # (n, P)
    given = spec.given(train.clinical.numpy(), train.presence.numpy())  # (n, T)
    x = (given[:, :, None] * design[:, None, :]).reshape(len(design), -1)  # (n, T*P)
    offset = log_odds - own_log_odds
    y = train.label.numpy().astype(np.float64)
    deviations = bootstrap_deviations(x, y, offset, spec.n_parameters, draws, seed)
    # Centred on the trained estimate: the interval is around the benefit the ranking states.
    spec.draws = (estimate.reshape(1, -1) + deviations).reshape(draws, term.n_treatments, spec.n_parameters)
    return spec


def bootstrap_deviations(
    x: np.ndarray, y: np.ndarray, offset: np.ndarray, n_parameters: int, draws: int = DRAWS, seed: int = 0
) -> np.ndarray:
    """(draws, columns): the ridge logistic regression with ``offset`` refitted on
    ``draws`` bootstrap resamples of the rows, each minus the refits' mean."""
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


def _ridge_logistic(x, y, offset, weight, n_parameters: int) -> np.ndarray:
    """Newton's method for the weighted, ridge-penalised logistic regression with offset;
    the main effects (column 0 of each treatment's block) are not penalised."""
    penalty = np.full(x.shape[1], RIDGE)
    penalty[::n_parameters] = 0.0
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
