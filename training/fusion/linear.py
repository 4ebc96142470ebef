"""A linear term over the omics features and clinical covariates, added to the
network's outputs: the penalised Cox / logistic model (Coxnet's form) inside the
fusion network, so the network starts from what a classical baseline fits and the
encoders and fusion head only have to add what is not linear.

At a few hundred patients the classical penalised model is hard to beat (issue 16:
on 5 folds of a 198-patient expression cohort a ridge Cox reached c-index 0.70,
the fusion network 0.64); the nonlinear path alone has to rediscover a linear
signal through narrow, dropped-out layers. The weights start at zero (the network
as it was) and are penalised by the module (OptimiserConfig ``linear_l2`` and
``linear_l1``), not by weight decay, so the penalty is the loss's own, as in an
elastic net.

With ``squares`` the path also reads each omics feature's square (centred and scaled
to unit variance for a z-scored feature): a penalised second-order additive model.
Expression effects on risk are often U-shaped, both unusually high and unusually low
expression marking worse disease; a linear term cannot express that and a narrow MLP
over dozens of genes rarely finds it at this sample size (issue 16's cohort: ridge Cox
over genes and their squares 0.700 against 0.672-0.679 over the genes alone, over
25 folds; clipping or squashing the outliers instead lost 0.02-0.03).

Absent or unused blocks contribute nothing: each input is multiplied by its
block's presence bit (a multiplier, not indexing, so the exported graph is static)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_SQRT_HALF = 0.5**0.5


class LinearPath(nn.Module):
    def __init__(
        self,
        omics_sizes: dict[str, int],
        omics_presence: Sequence[int],
        used_blocks: Sequence[bool],
        n_clinical: int,
        clinical_presence: int | None,
        n_outputs: int,
        squares: bool = False,
    ):
        """``omics_presence``: each omics block's presence-mask index, ``used_blocks``:
        whether the model reads it; ``clinical_presence``: the clinical block's index,
        None when the model does not read the covariates (``n_clinical`` is then only
        the input's width); ``squares``: the omics features' squares are inputs too."""
        super().__init__()
        self.squares = squares
        sizes = list(omics_sizes.values())
        feature_block = [i for i, size in zip(omics_presence, sizes, strict=True) for _ in range(size)]
        feature_used = [float(u) for u, size in zip(used_blocks, sizes, strict=True) for _ in range(size)]
        if squares:  # inputs: the omics features, their squares, the covariates
            feature_block, feature_used = feature_block * 2, feature_used * 2
        width = max(1, n_clinical)  # the data gives a one-column zero block when there are no covariates
        feature_block += [clinical_presence or 0] * width
        feature_used += [float(clinical_presence is not None and n_clinical > 0)] * width
        self.register_buffer("feature_block", torch.tensor(feature_block, dtype=torch.long), persistent=False)
        self.register_buffer("feature_used", torch.tensor(feature_used), persistent=False)
        self.weights = nn.Linear(len(feature_block), n_outputs, bias=False)
        nn.init.zeros_(self.weights.weight)

    def forward(self, genomics: torch.Tensor, clinical: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        """(batch, n_outputs) added to the outputs."""
        present = presence.index_select(1, self.feature_block) * self.feature_used
        # (x^2 - 1) / sqrt(2): mean 0 and variance 1 for a standard normal x.
        squares = [(genomics * genomics - 1.0) * _SQRT_HALF] if self.squares else []
        return self.weights(torch.cat([genomics, *squares, clinical], dim=1) * present)

    def penalty(self, l2: float, l1: float) -> torch.Tensor:
        """Elastic-net penalty on the weights (of the features the model reads)."""
        weight = self.weights.weight * self.feature_used
        return l2 * weight.pow(2).sum() + l1 * weight.abs().sum()
