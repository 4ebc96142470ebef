"""The unimodal losses: a head per image and omics embedding, trained on the cases
that have that modality, outside the exported network; off, training is unchanged."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from radfusion.training.model import NetworkConfig
from radfusion.training.module import FusionModule

OMICS = {"expression": 3, "mutation": 2}


def _module(unimodal_loss: float, modality_dropout: float = 0.0) -> FusionModule:
    return FusionModule(
        omics_sizes=OMICS,
        n_clinical=2,
        modality_dropout=modality_dropout,
        unimodal_loss=unimodal_loss,
        network=NetworkConfig(
            modalities=("image", "genomics", "clinical"), image_encoder="resnet", image_widths=(4, 4, 8, 8), embed_dim=8
        ),
    )


def _batch(n: int = 6) -> dict:
    torch.manual_seed(1)
    presence = torch.ones(n, 4)
    presence[:2, 0] = 0.0  # two cases without an image
    presence[2, 1:3] = 0.0  # one without omics
    return {
        "image": torch.randn(n, 1, 16, 16, 16),
        "genomics": torch.randn(n, 5),
        "clinical": torch.randn(n, 2),
        "presence": presence,
        "label": torch.tensor([0, 1, 0, 1, 1, 0]),
    }


def test_heads_for_the_image_and_each_omics_block_only_and_none_when_off() -> None:
    assert set(_module(0.5).unimodal_heads) == {"image", "expression", "mutation"}
    assert len(_module(0.0).unimodal_heads) == 0
    # Not part of the network that is exported.
    assert not any("unimodal" in k for k in _module(0.5).net.state_dict())


def test_each_head_is_scored_on_the_cases_that_have_its_modality() -> None:
    module, batch = _module(0.5).eval(), _batch()
    presence = module._presence(batch)
    embeddings, _ = module.net.encode(batch["image"], batch["genomics"], batch["clinical"], presence)
    expected = []
    for i, name in enumerate(module.net.modality_names[:3]):
        has = presence[:, i] > 0
        expected.append(F.cross_entropy(module.unimodal_heads[name](embeddings[i][has]), batch["label"][has]))
    got = module._unimodal_loss(embeddings, presence, batch)
    assert torch.allclose(got, torch.stack(expected).mean())


def test_off_the_training_loss_is_the_fused_loss_and_on_it_adds_the_weighted_unimodal_loss() -> None:
    batch = _batch()
    torch.manual_seed(0)
    off = _module(0.0).eval()
    fused = F.cross_entropy(
        off(batch["image"], batch["genomics"], batch["clinical"], off._presence(batch)), batch["label"]
    )
    off.log = lambda *a, **k: None  # type: ignore[method-assign]
    assert torch.allclose(off.training_step(batch, 0), fused)

    torch.manual_seed(0)
    on = _module(2.0).eval()
    on.log = lambda *a, **k: None  # type: ignore[method-assign]
    presence = on._presence(batch)
    embeddings, _ = on.net.encode(batch["image"], batch["genomics"], batch["clinical"], presence)
    unimodal = on._unimodal_loss(embeddings, presence, batch)
    fused = F.cross_entropy(on(batch["image"], batch["genomics"], batch["clinical"], presence), batch["label"])
    assert torch.allclose(on.training_step(batch, 0), fused + 2.0 * unimodal)


def _image_encoder_gradient(unimodal_loss: float) -> float:
    torch.manual_seed(0)
    module = _module(unimodal_loss)
    module.log = lambda *a, **k: None  # type: ignore[method-assign]
    # Modality dropout hides every image from the fused output.
    module._modality_dropout = lambda presence: presence * torch.tensor([0.0, 1.0, 1.0, 1.0])  # type: ignore[method-assign]
    module.training_step(_batch(), 0).backward()
    return sum(float(p.grad.abs().sum()) for p in module.net.image_encoder.parameters() if p.grad is not None)


def test_a_hidden_image_still_trains_the_image_encoder_through_its_own_head() -> None:
    assert _image_encoder_gradient(0.0) == 0.0
    assert _image_encoder_gradient(1.0) > 0.0


def test_every_head_has_a_gradient_even_when_no_case_has_its_modality() -> None:
    """DDP without find_unused_parameters needs a gradient for every parameter on every
    rank: a batch without images still reaches the image head (with a zero gradient)."""
    torch.manual_seed(0)
    module = _module(1.0)
    module.log = lambda *a, **k: None  # type: ignore[method-assign]
    batch = _batch()
    batch["presence"][:, 0] = 0.0
    module.training_step(batch, 0).backward()
    head = module.unimodal_heads["image"]
    assert head.weight.grad is not None and float(head.weight.grad.abs().sum()) == 0.0
    assert float(module.unimodal_heads["expression"].weight.grad.abs().sum()) > 0.0
