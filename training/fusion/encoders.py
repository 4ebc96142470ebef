"""Encoders shared by every fusion strategy: MONAI image networks (DenseNet, ResNet,
EfficientNet, ViT; 2D or 3D), one MLP per omics block, one for clinical covariates.

Every image encoder gives a pooled embedding and, when a strategy asks for them,
feature tokens (one per position of its last feature map, or the ViT's patch tokens)
for cross-attention."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks import nets
from torch import nn

IMAGE_ENCODERS = ("densenet", "resnet", "efficientnet", "vit")


class SliceWise(nn.Module):
    """A 2D network applied to each slice of a (B, C, D, H, W) volume: feature maps
    come back as (B, C', D, h, w), so pooling and tokens span every slice. A 4D
    (B, C, H, W) input is one slice. The data path always yields volumes; a 2D
    encoder is the per-slice (2.5D) model that works with few, thick slices."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return self.features(x)
        b, c, d = x.shape[:3]
        maps = self.features(x.transpose(1, 2).reshape(b * d, c, *x.shape[3:]))
        return maps.reshape(b, d, *maps.shape[1:]).transpose(1, 2)


class PooledEncoder(nn.Module):
    """Feature maps -> [global average, global max] -> embedding; optionally the maps'
    positions as tokens of the embedding width.

    A lesion occupies a small share of the volume: average pooling alone dilutes
    it, max pooling keeps the strongest local response (its size and contrast)."""

    def __init__(self, features: nn.Module, channels: int, out_features: int, with_tokens: bool = False):
        super().__init__()
        self.features = features
        self.out = nn.Linear(2 * channels, out_features)
        # Only built when a strategy reads tokens: an unused layer would have no
        # gradient, which DDP rejects.
        self.tokens = nn.Linear(channels, out_features) if with_tokens else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        maps = torch.relu(self.features(x)).flatten(2)  # (B, C, positions)
        embedding = self.out(torch.cat([maps.mean(dim=2), maps.amax(dim=2)], dim=1))
        tokens = self.tokens(maps.transpose(1, 2)) if self.tokens is not None else None
        return embedding, tokens


class VitEncoder(nn.Module):
    """MONAI ViT patch tokens -> [mean, max] -> embedding; the tokens themselves for
    cross-attention."""

    def __init__(self, vit: nets.ViT, hidden: int, out_features: int, slice_wise: bool, with_tokens: bool):
        super().__init__()
        self.vit = vit
        self.slice_wise = slice_wise
        self.out = nn.Linear(2 * hidden, out_features)
        self.tokens = nn.Linear(hidden, out_features) if with_tokens else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.slice_wise and x.dim() == 5:
            b, c, d = x.shape[:3]
            tokens = self.vit(x.transpose(1, 2).reshape(b * d, c, *x.shape[3:]))[0]
            tokens = tokens.reshape(b, -1, tokens.shape[-1])  # every slice's patches
        else:
            tokens = self.vit(x)[0]
        embedding = self.out(torch.cat([tokens.mean(dim=1), tokens.amax(dim=1)], dim=1))
        return embedding, self.tokens(tokens) if self.tokens is not None else None


def _efficientnet(spatial_dims: int, widths: Sequence[int]) -> tuple[nn.Module, int]:
    """A small EfficientNet (MBConv + squeeze-excitation) from MONAI's generic class.

    ``widths``: stem channels, then one stride-2 stage per further entry."""
    stem, *stages = widths
    scale = stem / 32  # MONAI's stem has 32 x width_coefficient channels
    blocks, previous = [], stem
    for i, channels in enumerate(stages):
        kernel = 5 if i % 2 else 3
        blocks.append(f"r1_k{kernel}_s22_e4_i{round(previous / scale)}_o{round(channels / scale)}_se0.25")
        previous = channels
    net = nets.EfficientNet(
        blocks_args_str=blocks,
        spatial_dims=spatial_dims,
        in_channels=1,
        num_classes=1,
        width_coefficient=scale,
        depth_coefficient=1.0,
        dropout_rate=0.0,
        drop_connect_rate=0.0,
        depth_divisor=4,
    )
    features = nn.Sequential(
        net._conv_stem_padding,
        net._conv_stem,
        net._bn0,
        net._swish,
        net._blocks,
        net._conv_head_padding,
        net._conv_head,
        net._bn1,
    )
    return features, net._conv_head.out_channels


def build_image_encoder(
    kind: str,
    spatial_dims: int,
    out_features: int,
    widths: Sequence[int] = (16, 8),
    with_tokens: bool = False,
    image_shape: Sequence[int] | None = None,
    patch: Sequence[int] = (8, 16, 16),
) -> nn.Module:
    """MONAI networks whose output layer is resized to the embedding width.

    ``widths`` (small for CPU, full for GPU, chosen in the config):
    densenet (init_features, growth_rate); resnet block_inplanes; efficientnet stem
    then stage channels; vit (hidden_size, layers, heads). ``image_shape`` and
    ``patch`` (D, H, W) only for the ViT, whose position embedding is sized by them.
    With ``spatial_dims=2`` the network runs on each slice (see SliceWise)."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims}")
    if kind == "vit":
        if image_shape is None:
            raise ValueError("the vit image encoder needs image_shape (the data's target_shape)")
        hidden, layers, heads = widths
        size, patch = list(image_shape)[-spatial_dims:], list(patch)[-spatial_dims:]
        if any(s % p for s, p in zip(size, patch, strict=True)):
            raise ValueError(f"vit patch {patch} must divide the image shape {size}")
        vit = nets.ViT(
            in_channels=1,
            img_size=size,
            patch_size=patch,
            hidden_size=hidden,
            mlp_dim=2 * hidden,
            num_layers=layers,
            num_heads=heads,
            spatial_dims=spatial_dims,
            classification=False,
        )
        return VitEncoder(vit, hidden, out_features, slice_wise=spatial_dims == 2, with_tokens=with_tokens)
    if kind == "densenet":
        init_features, growth_rate = widths
        net = nets.DenseNet(
            spatial_dims=spatial_dims,
            in_channels=1,
            out_channels=out_features,
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=(2, 4, 6),
        )
        features, channels = net.features, net.class_layers.out.in_features
    elif kind == "resnet":
        net = nets.ResNet(
            block="basic",
            layers=(1, 1, 1, 1),
            block_inplanes=list(widths),
            spatial_dims=spatial_dims,
            n_input_channels=1,
            num_classes=out_features,
        )
        features = nn.Sequential(
            net.conv1, net.bn1, net.act, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
        )
        channels = net.fc.in_features
    elif kind == "efficientnet":
        features, channels = _efficientnet(spatial_dims, widths)
    else:
        raise ValueError(f"unknown image encoder {kind!r}; choose from {IMAGE_ENCODERS}")
    if spatial_dims == 2:
        features = SliceWise(features)
    return PooledEncoder(features, channels, out_features, with_tokens)


def omics_encoder(n_features: int, hidden: int, embed_dim: int, dropout: float) -> nn.Module:
    """Narrow and heavily dropped-out: a few hundred patients and hundreds of genes
    overfit any wide layer (seen: val AUROC falls from the first epoch). Input dropout
    only for wide blocks: on a handful of mutation flags it would hide the one that
    matters half the time."""
    return nn.Sequential(
        nn.Dropout(dropout if n_features > 32 else 0.0),
        nn.Linear(n_features, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, embed_dim),
    )


def clinical_encoder(n_features: int, embed_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_features, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))
