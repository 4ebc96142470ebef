"""Modality dropout hides one group (image, all omics blocks, clinical) of some cases,
and never leaves a case with covariates only."""

from __future__ import annotations

import torch

from radfusion.training.model import NetworkConfig
from radfusion.training.module import FusionModule


def _module(modalities: tuple[str, ...]) -> FusionModule:
    return FusionModule(
        omics_sizes={"expression": 3, "mutation": 2},
        n_clinical=2,
        modality_dropout=1.0,
        network=NetworkConfig(modalities=modalities, image_encoder="resnet", image_widths=(4, 4, 8, 8), embed_dim=8),
    )


def test_every_case_keeps_an_image_or_omics_group_and_loses_at_most_one() -> None:
    torch.manual_seed(0)
    module = _module(("image", "genomics", "clinical"))  # names: image, expression, mutation, clinical
    full = torch.ones(400, 4)
    image_and_covariates = torch.tensor([[1.0, 0.0, 0.0, 1.0]]).repeat(400, 1)
    out = module._modality_dropout(full)
    hidden = full - out
    # Exactly one group hidden per case (dropout probability 1); omics blocks go together.
    assert torch.equal(hidden[:, 1], hidden[:, 2])
    groups_hidden = hidden[:, 0] + hidden[:, 1] + hidden[:, 3]
    assert torch.all(groups_hidden == 1)
    assert {int(i) for i in hidden.argmax(dim=1)} == {0, 1, 3}
    # Image + covariates only: the image is never the one hidden.
    out = module._modality_dropout(image_and_covariates)
    assert torch.all(out[:, 0] == 1) and torch.all(out[:, 3] == 0)


def test_an_image_plus_covariates_baseline_never_loses_its_image() -> None:
    module = _module(("image", "clinical"))
    presence = module._presence({"presence": torch.ones(200, 4)})
    out = module._modality_dropout(presence)
    assert torch.all(out[:, 0] == 1) and torch.all(out[:, 1:3] == 0)
