"""An explicit treatment-interaction term: the form predictive biomarkers take in
trial analyses (treatment x biomarker interaction, as in a lasso with treatment
interactions).

For each non-reference treatment t it has an effect versus the reference treatment
(standard of care),

    e_t = b_t + sum over omics blocks k present:  c_tk + w_tk . (x_k - r_k)

a main effect, an offset per omics block (so a patient without genomics gets the
treatment's average effect, not a wild guess) and a linear effect of the block's
(z-scored) features x measured from a reference patient r: the training split's
median of each feature, which for a mutation call is the wild type. So b + c is the
effect for a typical patient and the L1 penalty shrinks a biomarker's extra effect
towards it. Measured from the mean instead (r = 0 for z-scores), b + c is the
population-average effect, and shrinkage spreads a mutated minority's benefit over
everyone (one training on the evidence tests' cohort, EGFR mutated in 25%: wild-type
patients were predicted a benefit of about 0.7 log-odds from the targeted drug, which
has none for them). The estimates stay as noisy as a few hundred training patients
make them: see docs/evidence.md, "Checked against the truth".

The weights read directly as "effect of t versus the reference"; the feature weights
w are L1-penalised (``penalty``), and only the candidate blocks' features take part
(``used_blocks``; configs/experiment/treatment.yaml names the mutation calls): a
treatment interaction is seen only in patients whose response is not already settled
by the strong prognostic signals, too few to pick a biomarker out of a hundred or more
candidates by chance alone.

The treatment enters centred (contrast coding, as in the modified covariate method,
Tian et al. 2014): a patient given treatment g gets e_g - mean over all K treatments
of e (e_reference = 0), not e_g alone. Differences between treatments are e_t either
way, but with 0/1 coding the term is extra capacity for the treated arm only, and it
spent it on the prognostic genes the rest of the network under-fitted (measured: a
lasso refit on a trained model put the driver genes TSC1 and RB1 first and EGFR_mut
nowhere); centred, a prognostic effect cannot be fitted through it.

Why not leave treatment effects to the fusion head: a head that sees the treatment
one-hot fits them (or fails to) inside a nonlinear network, from the few patients
whose response is not already settled by the strong prognostic signals; the evidence
then cannot say what drives a recommendation. With this term on, FusionNet hides the
treatment columns from the clinical encoder, so the predicted treatment effect is
this term and nothing else, and its weights are the evidence (``effects``).

Absent omics (presence bit 0) contribute nothing; an absent clinical block (the
treatment is unknown) switches the whole term off."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn


class TreatmentInteraction(nn.Module):
    def __init__(
        self,
        treatment_columns: Sequence[int],
        omics_sizes: dict[str, int],
        omics_presence: Sequence[int],
        clinical_presence: int,
        n_outputs: int,
        used_blocks: Sequence[bool] | None = None,
    ):
        """``treatment_columns``: clinical-input columns of the treatment's one-hots,
        the reference first; ``omics_presence``: each block's presence-mask index;
        ``used_blocks``: which blocks the model reads (unused ones are ignored)."""
        super().__init__()
        if len(treatment_columns) < 2:
            raise ValueError("a treatment interaction needs a reference and at least one other treatment column")
        self.n_treatments = len(treatment_columns) - 1  # one effect per non-reference treatment
        self.n_outputs = n_outputs
        self.n_features = sum(omics_sizes.values())
        used = list(used_blocks) if used_blocks is not None else [True] * len(omics_sizes)
        self.register_buffer(
            "treatment_columns", torch.tensor(list(treatment_columns), dtype=torch.long), persistent=False
        )
        # Presence-mask column of every omics feature, and whether its block is read.
        feature_block = [i for i, size in zip(omics_presence, omics_sizes.values(), strict=True) for _ in range(size)]
        feature_used = [float(u) for u, size in zip(used, omics_sizes.values(), strict=True) for _ in range(size)]
        self.register_buffer("feature_block", torch.tensor(feature_block, dtype=torch.long), persistent=False)
        self.register_buffer("feature_used", torch.tensor(feature_used), persistent=False)
        self.register_buffer("block_presence", torch.tensor(list(omics_presence), dtype=torch.long), persistent=False)
        self.register_buffer("block_used", torch.tensor([float(u) for u in used]), persistent=False)
        self.clinical_presence = clinical_presence
        # Set from the training split when training starts (set_reference); saved with the weights.
        self.register_buffer("reference", torch.zeros(self.n_features))
        width = self.n_outputs * self.n_treatments
        # Zero start: no treatment effect until the data shows one.
        self.features = nn.Linear(self.n_features, width, bias=False)
        self.blocks = nn.Linear(len(omics_sizes), width, bias=True)
        nn.init.zeros_(self.features.weight)
        nn.init.zeros_(self.blocks.weight)
        nn.init.zeros_(self.blocks.bias)

    def forward(self, genomics: torch.Tensor, clinical: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        """(batch, n_outputs) added to the logits."""
        feature_present = presence.index_select(1, self.feature_block) * self.feature_used
        block_present = presence.index_select(1, self.block_presence) * self.block_used
        effect = self.features((genomics - self.reference) * feature_present) + self.blocks(block_present)
        effect = effect.reshape(-1, self.n_treatments, self.n_outputs)
        onehot = clinical.index_select(1, self.treatment_columns)
        # Centred: an unknown treatment (no one-hot, or no clinical block) gets 0,
        # the average over treatments.
        centred = (onehot - onehot.mean(dim=1, keepdim=True))[:, 1:]
        given = centred * presence[:, self.clinical_presence : self.clinical_presence + 1]
        return (given.unsqueeze(2) * effect).sum(dim=1)

    def set_reference(self, genomics: torch.Tensor, presence: torch.Tensor) -> None:
        """The reference patient: each feature's median over the training cases whose
        block is present (``genomics``/``presence`` as the model is fed them)."""
        present = presence.index_select(1, self.feature_block) > 0
        values = torch.where(present, genomics, torch.full_like(genomics, float("nan")))
        self.reference.copy_(values.nanmedian(dim=0).values.nan_to_num(0.0))

    def penalty(self) -> torch.Tensor:
        """L1 norm of the feature weights (the candidate biomarkers); main effects and
        block offsets are not shrunk."""
        return self.features.weight.abs().sum()

    def effects(self, treatments: Sequence[str], feature_names: Sequence[str]) -> pd.DataFrame:
        """(feature, treatment) -> weight on the positive output's log-odds per unit of
        the z-scored feature (the last output minus the first for two outputs, the
        output itself for one), sorted by the largest absolute weight."""
        weight = self.features.weight.detach().reshape(self.n_treatments, self.n_outputs, self.n_features)
        per_unit = weight[:, -1] - weight[:, 0] if self.n_outputs == 2 else weight[:, -1]
        table = pd.DataFrame(per_unit.T.numpy(), index=list(feature_names), columns=list(treatments))
        return table.loc[table.abs().max(axis=1).sort_values(ascending=False).index]
