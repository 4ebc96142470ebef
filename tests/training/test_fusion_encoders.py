"""Image encoders: a shape table over MONAI networks x spatial dims (embedding and
tokens), and the errors for configurations that cannot work."""

from __future__ import annotations

import pytest
import torch

from radfusion.training.fusion.encoders import build_image_encoder

# (encoder, widths, input (D, H, W), tokens in 3D, tokens in 2D (slices x positions))
TABLE = [
    ("densenet", (8, 4), (16, 32, 32), 1 * 2 * 2, 16 * 2 * 2),
    ("resnet", (4, 4, 8, 8), (8, 16, 16), 1, 8 * 1 * 1),
    ("efficientnet", (8, 16, 24), (8, 16, 16), 1 * 2 * 2, 8 * 2 * 2),
    ("vit", (32, 1, 2), (8, 16, 16), 2 * 2 * 2, 8 * 2 * 2),
]


@pytest.mark.parametrize("spatial_dims", [3, 2])
@pytest.mark.parametrize("kind,widths,shape,tokens_3d,tokens_2d", TABLE)
def test_encoder_shapes(kind, widths, shape, tokens_3d, tokens_2d, spatial_dims):
    torch.manual_seed(0)
    encoder = build_image_encoder(
        kind, spatial_dims, 16, widths, with_tokens=True, image_shape=shape, patch=(4, 8, 8)
    ).eval()
    x = torch.rand(2, 1, *shape)
    with torch.no_grad():
        embedding, tokens = encoder(x)
    assert embedding.shape == (2, 16)
    assert tokens.shape == (2, tokens_3d if spatial_dims == 3 else tokens_2d, 16)
    assert torch.isfinite(embedding).all() and torch.isfinite(tokens).all()
    # Each case is encoded on its own: the batch does not mix cases (eval mode).
    with torch.no_grad():
        alone, _ = encoder(x[1:])
    assert torch.allclose(alone, embedding[1:], atol=1e-5)


def test_tokens_are_only_built_when_asked():
    encoder = build_image_encoder("resnet", 3, 16, (4, 4, 8, 8)).eval()
    embedding, tokens = encoder(torch.rand(1, 1, 8, 16, 16))
    assert tokens is None and encoder.tokens is None and embedding.shape == (1, 16)


def test_a_2d_encoder_reads_every_slice():
    """The 2D network runs per slice: changing one slice changes the embedding."""
    torch.manual_seed(0)
    encoder = build_image_encoder("resnet", 2, 16, (4, 4, 8, 8)).eval()
    x = torch.rand(1, 1, 8, 16, 16)
    y = x.clone()
    y[:, :, 7] = 0  # the last slice only
    with torch.no_grad():
        assert not torch.allclose(encoder(x)[0], encoder(y)[0])


def test_bad_encoder_configurations_are_refused():
    with pytest.raises(ValueError, match="unknown image encoder"):
        build_image_encoder("inception", 3, 16)
    with pytest.raises(ValueError, match="needs image_shape"):
        build_image_encoder("vit", 3, 16, (32, 1, 2))
    with pytest.raises(ValueError, match="must divide"):
        build_image_encoder("vit", 3, 16, (32, 1, 2), image_shape=(8, 16, 16), patch=(3, 8, 8))
    with pytest.raises(ValueError, match="spatial_dims"):
        build_image_encoder("resnet", 1, 16, (4, 4, 8, 8))


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind,widths,spatial_dims", [("vit", (32, 1, 2), 3), ("efficientnet", (8, 16, 24), 3), ("resnet", (4, 4, 8, 8), 2)]
)
def test_encoders_export_to_onnx_with_parity(kind, widths, spatial_dims, tiny_contract, tmp_path):
    import numpy as np

    from radfusion.runtime import OnnxModel
    from radfusion.training.export import export_onnx
    from radfusion.training.fusion import FusionNet, NetworkConfig

    torch.manual_seed(0)
    shape = tiny_contract.image.target_shape
    net = FusionNet(
        {b.name: len(b.features) for b in tiny_contract.omics},
        n_classes=2,
        config=NetworkConfig(
            image_encoder=kind,
            image_widths=widths,
            embed_dim=16,
            spatial_dims=spatial_dims,
            fusion="cross_attention",
            image_shape=shape,
            image_patch=(4, 8, 8),
        ),
    ).eval()
    export_onnx(net, tiny_contract, tmp_path / "m.onnx")
    g = torch.Generator().manual_seed(3)
    image = torch.rand(3, 1, *shape, generator=g)
    genomics = torch.randn(3, len(tiny_contract.genomics.features), generator=g)
    clinical, presence = torch.zeros(3, 1), torch.ones(3, 3)
    with torch.no_grad():
        expected = net(image, genomics, clinical, presence).numpy()
    got = OnnxModel(tmp_path / "m.onnx", device="cpu").logits(
        image.numpy(), genomics.numpy(), clinical.numpy(), presence.numpy()
    )
    assert np.max(np.abs(expected - got)) < 1e-4
