"""Fusion strategies: every presence pattern predicts, an absent modality contributes
nothing, the strategy-specific mechanics (gates, the Kronecker constant, masked
cross-attention), and ONNX export with parity for each strategy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from training.fusion import FUSIONS, FusionNet
from training.fusion.strategies import CrossAttentionFusion, GatedFusion, KroneckerFusion, LateFusion

OMICS = {"expression": 12, "mutation": 5}
SHAPE = (8, 16, 16)


def make_net(fusion: str, modalities=("image", "genomics", "clinical"), n_clinical: int = 3, seed: int = 0) -> FusionNet:
    torch.manual_seed(seed)
    return FusionNet(
        OMICS, n_clinical=n_clinical, n_classes=2, modalities=modalities, image_encoder="resnet",
        image_widths=(4, 4, 8, 8), embed_dim=16, fusion=fusion,
    ).eval()


def inputs(batch: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, *SHAPE, generator=g), torch.randn(batch, 17, generator=g), torch.randn(batch, 3, generator=g)


def all_patterns(n: int) -> list[list[float]]:
    return [list(map(float, bits)) for bits in itertools.product((0, 1), repeat=n)]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_presence_pattern_gives_a_finite_prediction(fusion):
    net = make_net(fusion)
    image, genomics, clinical = inputs()
    outputs = []
    with torch.no_grad():
        for pattern in all_patterns(4):  # image, expression, mutation, clinical
            out = net(image, genomics, clinical, torch.tensor([pattern] * 3))
            assert out.shape == (3, 2) and torch.isfinite(out).all(), pattern
            outputs.append(out)
    # The patterns are not all answered alike: the model reads what is present.
    assert len({tuple(np.round(o[0].numpy(), 5)) for o in outputs}) > 8


@pytest.mark.parametrize("fusion", FUSIONS)
def test_an_absent_modality_contributes_nothing(fusion):
    net = make_net(fusion)
    image, genomics, clinical = inputs()
    other_image, other_genomics, _ = inputs(seed=2)
    with torch.no_grad():
        no_image = torch.tensor([[0.0, 1, 1, 1]] * 3)
        assert torch.allclose(net(image, genomics, clinical, no_image), net(other_image, genomics, clinical, no_image))
        no_omics = torch.tensor([[1.0, 0, 0, 1]] * 3)
        assert torch.allclose(net(image, genomics, clinical, no_omics), net(image, other_genomics, clinical, no_omics))
        # ...while a present one does change the answer.
        every = torch.ones(3, 4)
        assert not torch.allclose(net(image, genomics, clinical, every), net(other_image, genomics, clinical, every))


def test_the_switch_builds_the_named_strategy_on_the_same_encoders():
    kinds = {"late": LateFusion, "gated": GatedFusion, "kronecker": KroneckerFusion, "cross_attention": CrossAttentionFusion}
    encoder_keys = None
    for name, cls in kinds.items():
        net = make_net(name)
        assert isinstance(net.head, cls) and net.fusion_kind == name
        keys = {k for k in net.state_dict() if not k.startswith("head.") and ".tokens." not in k}
        encoder_keys = encoder_keys or keys
        assert keys == encoder_keys
    # Only cross-attention reads image tokens, so only it builds the token layer.
    assert make_net("cross_attention").image_encoder.tokens is not None
    assert make_net("late").image_encoder.tokens is None
    with pytest.raises(ValueError, match="unknown fusion"):
        make_net("concat")


def test_gates_are_a_distribution_over_present_modalities():
    net = make_net("gated")
    image, genomics, clinical = inputs()
    presence = torch.tensor([[1.0, 1, 1, 1], [1.0, 0, 0, 1], [0.0, 0, 1, 0]])
    with torch.no_grad():
        gates = net.head.gates(net.embeddings(image, genomics, clinical, presence), presence)
    assert torch.allclose(gates.sum(dim=1), torch.ones(3), atol=1e-5)
    assert torch.all(gates[presence == 0] == 0)
    assert gates[2, 2] == pytest.approx(1.0, abs=1e-5)  # the only present modality takes all weight


def test_kronecker_keeps_unimodal_terms_and_uses_pairs():
    net = make_net("kronecker")
    used = [0, 1, 2, 3]
    assert net.head.pairs == list(itertools.combinations(used, 2))  # 4 modalities: 6 pairwise products
    head = net.head
    embeddings = [torch.randn(2, 16) for _ in range(4)]
    # Only the image present: its reduced embedding survives in the product with the
    # constant of each absent partner, so the fused features still depend on it.
    presence = torch.tensor([[1.0, 0, 0, 0]] * 2)
    captured = {}
    hook = head.head[0].register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    with torch.no_grad():
        head(embeddings, presence)
    hook.remove()
    rank = head.reduce[0].out_features
    block = captured["x"][:, : (rank + 1) ** 2].reshape(2, rank + 1, rank + 1)  # image x expression
    reduced = torch.tanh(head.reduce[0](embeddings[0]))
    assert torch.allclose(block[:, :rank, rank], reduced)  # h_image x 1
    assert torch.all(block[:, :, :rank] == 0)  # absent expression: no bilinear terms
    assert torch.all(block[:, rank, rank] == 1)  # the constant


def test_cross_attention_attends_to_image_tokens_only_when_the_image_is_there():
    net = make_net("cross_attention")
    head = net.head
    assert [net.modality_names[i] for i in head.queries] == ["expression", "mutation"]
    image, genomics, clinical = inputs()
    with torch.no_grad():
        embeddings, tokens = net.encode(image, genomics, clinical, torch.ones(3, 4))
        weights = head.attention(embeddings[1], head.norm(tokens), torch.ones(3))
    assert tokens.shape[0] == 3 and tokens.shape[2] == 16
    assert weights.shape == (3, head.heads, tokens.shape[1])
    assert torch.allclose(weights.sum(dim=-1), torch.ones(3, head.heads), atol=1e-5)
    # A model without an image has no queries (nothing to attend to) and no tokens.
    genomics_only = make_net("cross_attention", modalities=("genomics",))
    assert genomics_only.head.queries == [] and genomics_only.image_encoder is None


# The dynamo exporter takes 10-50 s per model on 2 shared cores.
@pytest.mark.slow
@pytest.mark.parametrize("fusion", FUSIONS)
def test_onnx_export_matches_pytorch_for_every_group_pattern(fusion, tiny_contract, tmp_path):
    from radfusion.runtime import OnnxModel
    from training.export import export_onnx, group_patterns

    torch.manual_seed(0)
    net = FusionNet(
        {b.name: len(b.features) for b in tiny_contract.omics}, n_classes=2, modalities=("image", "genomics"),
        image_encoder="resnet", image_widths=(4, 4, 8, 8), embed_dim=16, fusion=fusion,
    ).eval()
    path = tmp_path / f"{fusion}.onnx"
    export_onnx(net, tiny_contract, path)
    model = OnnxModel(path, device="cpu")
    g = torch.Generator().manual_seed(5)
    image = torch.rand(5, 1, *tiny_contract.image.target_shape, generator=g)
    genomics = torch.randn(5, len(tiny_contract.genomics.features), generator=g)
    clinical = torch.zeros(5, 1)
    patterns = group_patterns(net)
    assert len(patterns) == 3  # image, omics, both
    with torch.no_grad():
        for pattern in patterns:
            presence = pattern.expand(5, -1).clone()
            expected = net(image, genomics, clinical, presence).numpy()
            got = model.logits(image.numpy(), genomics.numpy(), clinical.numpy(), presence.numpy())
            assert np.max(np.abs(expected - got)) < 1e-4, pattern
