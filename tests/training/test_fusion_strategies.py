"""Fusion strategies: every presence pattern predicts, an absent modality contributes
nothing, the strategy-specific mechanics (gates, the Kronecker constant, masked
cross-attention), and ONNX export with parity for each strategy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from radfusion.training.fusion import FUSIONS, FusionNet, NetworkConfig
from radfusion.training.fusion.strategies import (
    CrossAttentionFusion,
    GatedFusion,
    KroneckerFusion,
    LateFusion,
)

OMICS = {"expression": 12, "mutation": 5}
SHAPE = (8, 16, 16)


def make_net(
    fusion: str, modalities=("image", "genomics", "clinical"), n_clinical: int = 3, seed: int = 0
) -> FusionNet:
    torch.manual_seed(seed)
    return FusionNet(
        OMICS,
        n_clinical=n_clinical,
        n_classes=2,
        config=NetworkConfig(
            modalities=modalities, image_encoder="resnet", image_widths=(4, 4, 8, 8), embed_dim=16, fusion=fusion
        ),
    ).eval()


def inputs(batch: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(batch, 1, *SHAPE, generator=g),
        torch.randn(batch, 17, generator=g),
        torch.randn(batch, 3, generator=g),
    )


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
    kinds = {
        "late": LateFusion,
        "gated": GatedFusion,
        "kronecker": KroneckerFusion,
        "cross_attention": CrossAttentionFusion,
    }
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
    from radfusion.training.export import export_onnx, group_patterns

    torch.manual_seed(0)
    net = FusionNet(
        {b.name: len(b.features) for b in tiny_contract.omics},
        n_classes=2,
        config=NetworkConfig(
            modalities=("image", "genomics"),
            image_encoder="resnet",
            image_widths=(4, 4, 8, 8),
            embed_dim=16,
            fusion=fusion,
        ),
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


# ------------------------------------------------- explicit treatment interaction
# Clinical input of make_net: 3 columns, here [age, treatment=chemo, treatment=targeted];
# chemo is the reference.
TREATMENT_COLUMNS = [1, 2]


def with_treatment(clinical: torch.Tensor, targeted: bool) -> torch.Tensor:
    clinical = clinical.clone()
    clinical[:, 1], clinical[:, 2] = float(not targeted), float(targeted)
    return clinical


def interaction_net(fusion: str, seed: int = 0) -> FusionNet:
    net = make_net(fusion, seed=seed)
    net.add_treatment_interaction(TREATMENT_COLUMNS)
    with torch.no_grad():  # trained-looking weights (they start at zero)
        for p in net.treatment_effect.parameters():
            p.normal_(generator=torch.Generator().manual_seed(seed))
    return net.eval()


def treatment_gain(net, image, genomics, clinical, presence) -> torch.Tensor:
    with torch.no_grad():
        on = net(image, genomics, with_treatment(clinical, True), presence)
        off = net(image, genomics, with_treatment(clinical, False), presence)
    return (on - off)[:, 1] - (on - off)[:, 0]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_the_treatment_acts_through_the_interaction_term_alone(fusion):
    net = interaction_net(fusion)
    image, genomics, clinical = inputs()
    other_image, _, other_clinical = inputs(seed=2)
    every = torch.ones(3, 4)
    gain = treatment_gain(net, image, genomics, clinical, every)
    # The gain is the term's: a linear function of the omics, the same whatever the
    # image or the other covariates, and it differs between patients.
    term = net.treatment_effect
    weight = term.features.weight.detach()
    blocks = term.blocks.weight.detach().sum(dim=1) + term.blocks.bias.detach()
    want = genomics @ (weight[1] - weight[0]) + (blocks[1] - blocks[0])
    assert torch.allclose(gain, want, atol=1e-5)
    assert torch.allclose(gain, treatment_gain(net, other_image, genomics, other_clinical, every), atol=1e-5)
    assert gain.std() > 0.1
    # The clinical encoder reads the age only: the treatment one-hots are hidden from it.
    assert net.clinical_keep.tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_absent_omics_or_clinical_switch_the_interaction_off(fusion):
    net = interaction_net(fusion)
    image, genomics, clinical = inputs()
    _, other_genomics, _ = inputs(seed=2)
    no_omics = torch.tensor([[1.0, 0, 0, 1]] * 3)
    # No genomics: every patient gets the treatment's main effect, whatever their omics.
    gain = treatment_gain(net, image, genomics, clinical, no_omics)
    assert torch.allclose(gain, treatment_gain(net, image, other_genomics, clinical, no_omics))
    bias = net.treatment_effect.blocks.bias.detach()
    assert torch.allclose(gain, (bias[1] - bias[0]).expand(3), atol=1e-5)
    # Only the mutation block: the expression features no longer count.
    mutation_only = torch.tensor([[1.0, 0, 1, 1]] * 3)
    mixed = torch.cat([other_genomics[:, :12], genomics[:, 12:]], dim=1)
    assert torch.allclose(
        treatment_gain(net, image, genomics, clinical, mutation_only),
        treatment_gain(net, image, mixed, clinical, mutation_only),
        atol=1e-5,
    )
    # No clinical block: the treatment is unknown and changes nothing.
    no_clinical = torch.tensor([[1.0, 1, 1, 0]] * 3)
    assert torch.all(treatment_gain(net, image, genomics, clinical, no_clinical) == 0)


def test_the_interaction_is_off_unless_asked_for_and_needs_the_clinical_block():
    assert make_net("late").treatment_effect is None
    with pytest.raises(ValueError, match="clinical"):
        make_net("late", modalities=("image", "genomics")).add_treatment_interaction(TREATMENT_COLUMNS)
    with pytest.raises(ValueError, match="methylation"):
        make_net("late").add_treatment_interaction(TREATMENT_COLUMNS, ["mutation", "methylation"])
    net = interaction_net("late")
    # Its effects table: one row per omics feature, the log-odds weight per treatment,
    # strongest first.
    names = [f"g{i}" for i in range(17)]
    table = net.treatment_effect.effects(["targeted"], names)
    weight = net.treatment_effect.features.weight.detach()
    assert sorted(table.index) == sorted(names)
    assert table.loc["g3", "targeted"] == pytest.approx(float(weight[1, 3] - weight[0, 3]))
    assert table["targeted"].abs().is_monotonic_decreasing
    assert float(net.treatment_effect.penalty()) == pytest.approx(float(weight.abs().sum()))


def test_the_l1_penalty_leaves_only_the_true_interaction(tmp_path):
    """Fitted on data whose response depends on treatment x feature 3 only, the
    L1-penalised term finds feature 3 and keeps the other 16 small."""
    torch.manual_seed(0)
    net = make_net("late", modalities=("genomics", "clinical"))
    net.add_treatment_interaction(TREATMENT_COLUMNS)
    n = 512
    genomics = torch.randn(n, 17)
    targeted = torch.rand(n) < 0.5
    clinical = with_treatment(torch.zeros(n, 3), False)
    clinical[targeted] = with_treatment(clinical[targeted], True)
    logit = 2.0 * genomics[:, 3] * (targeted.float() - 0.5)  # no main effect of feature 3
    label = (torch.rand(n) < torch.sigmoid(logit)).long()
    presence = torch.tensor([[0.0, 1, 1, 1]]).expand(n, -1)
    term = net.treatment_effect
    optimizer = torch.optim.Adam(term.parameters(), lr=0.05)
    for _ in range(300):  # the term alone: the rest of the network has nothing to fit here
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(term(genomics, clinical, presence), label) + 0.01 * term.penalty()
        loss.backward()
        optimizer.step()
    table = term.effects(["targeted"], [f"g{i}" for i in range(17)])["targeted"]
    assert table.index[0] == "g3" and table["g3"] > 1.0
    # Measured: the other 16 weights sum to 0.74 (g3: 1.67); without the penalty 2.45 (g3: 2.03).
    assert table.drop("g3").abs().sum() < 0.6 * table["g3"]


def test_candidate_blocks_limit_the_biomarkers():
    """With interaction_blocks=["mutation"] only the mutation features (and the
    mutation block's presence) move the treatment effect."""
    net = make_net("late")
    net.add_treatment_interaction(TREATMENT_COLUMNS, ["mutation"])
    with torch.no_grad():
        for p in net.treatment_effect.parameters():
            p.normal_(generator=torch.Generator().manual_seed(3))
    net.eval()
    image, genomics, clinical = inputs()
    _, other, _ = inputs(seed=2)
    every = torch.ones(3, 4)
    other_expression = torch.cat([other[:, :12], genomics[:, 12:]], dim=1)
    gain = treatment_gain(net, image, genomics, clinical, every)
    assert torch.allclose(gain, treatment_gain(net, image, other_expression, clinical, every), atol=1e-5)
    assert not torch.allclose(gain, treatment_gain(net, image, other, clinical, every), atol=1e-3)
    # Expression weights stay exactly zero under the L1 penalty: they get no gradient.
    net.treatment_effect.features.weight.data[:, :12] = 0
    net(image, genomics, with_treatment(clinical, True), every).sum().backward()
    assert torch.all(net.treatment_effect.features.weight.grad[:, :12] == 0)


def test_the_treatment_enters_centred():
    """Treated and reference patients get +-half the effect (two treatments), and a
    patient whose treatment is unknown gets none: the term cannot stand in for a
    prognostic effect of the same genes."""
    net = interaction_net("late")
    _, genomics, clinical = inputs()
    every = torch.ones(3, 4)
    term = net.treatment_effect
    present = every
    with torch.no_grad():
        on = term(genomics, with_treatment(clinical, True), present)
        off = term(genomics, with_treatment(clinical, False), present)
        unknown = clinical.clone()
        unknown[:, 1:] = 0.0
        assert torch.all(term(genomics, unknown, present) == 0)
    assert torch.allclose(on, -off, atol=1e-6) and on.abs().max() > 0.1
