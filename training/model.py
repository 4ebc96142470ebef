"""The fusion network: a plain nn.Module, kept apart from the LightningModule so it
can be exported, tested and reused on its own.

image  -> MONAI encoder -> embedding --x presence[image]   --+
genomics -> MLP --------> embedding --x presence[genomics] --+--> head -> logits
presence mask ------------------------------------------------+

Masking the embeddings (not the inputs) keeps batch-norm statistics clean while a
missing modality contributes exactly nothing, so one model serves any subset."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks import nets
from torch import nn

IMAGE_ENCODERS = ("densenet", "resnet")


def build_image_encoder(
    kind: str, spatial_dims: int, out_features: int, widths: Sequence[int] = (16, 8)
) -> nn.Module:
    """MONAI networks whose output layer is resized to the embedding width.

    ``widths`` for densenet: (init_features, growth_rate); resnet: block_inplanes.
    Small widths for CPU, full widths for GPU, chosen in the config."""
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
    else:
        raise ValueError(f"unknown image encoder {kind!r}; choose from {IMAGE_ENCODERS}")
    return PooledEncoder(features, channels, out_features, spatial_dims)


class PooledEncoder(nn.Module):
    """Feature maps -> [global average, global max] -> embedding.

    A lesion occupies a small share of the volume: average pooling alone dilutes
    it, max pooling keeps the strongest local response (its size and contrast)."""

    def __init__(self, features: nn.Module, channels: int, out_features: int, spatial_dims: int):
        super().__init__()
        self.features = features
        self.spatial_dims = spatial_dims
        self.out = nn.Linear(2 * channels, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.relu(self.features(x))
        dims = tuple(range(2, 2 + self.spatial_dims))
        pooled = torch.cat([maps.mean(dim=dims), maps.amax(dim=dims)], dim=1)
        return self.out(pooled)


class FusionNet(nn.Module):
    def __init__(
        self,
        n_genes: int,
        n_classes: int = 2,
        modalities: Sequence[str] = ("image", "genomics"),
        spatial_dims: int = 3,
        image_encoder: str = "densenet",
        image_widths: Sequence[int] = (16, 8),
        embed_dim: int = 64,
        genomics_hidden: int = 16,
        genomics_dropout: float = 0.5,
        dropout: float = 0.3,
    ):
        super().__init__()
        unknown = set(modalities) - {"image", "genomics"}
        if unknown or not modalities:
            raise ValueError(f"modalities must be a non-empty subset of image, genomics; got {list(modalities)}")
        self.modalities = tuple(modalities)
        self.embed_dim = embed_dim
        # Only the encoders a model uses exist: a unimodal baseline is the same
        # architecture with one branch removed, not a branch fed zeros.
        self.image_encoder = (
            build_image_encoder(image_encoder, spatial_dims, embed_dim, image_widths) if "image" in modalities else None
        )
        # Narrow and heavily dropped-out: a few hundred patients and hundreds of
        # genes overfit any wide layer (seen: val AUROC falls from the first epoch).
        self.genomics_encoder = (
            nn.Sequential(
                nn.Dropout(genomics_dropout),
                nn.Linear(n_genes, genomics_hidden),
                nn.GELU(),
                nn.Dropout(genomics_dropout),
                nn.Linear(genomics_hidden, embed_dim),
            )
            if "genomics" in modalities
            else None
        )
        self.head = nn.Sequential(
            nn.LayerNorm(2 * embed_dim + 2),
            nn.Linear(2 * embed_dim + 2, embed_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(embed_dim, n_classes),
        )

    def forward(self, image: torch.Tensor, genomics: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        batch = presence.shape[0]
        zeros = presence.new_zeros(batch, self.embed_dim)
        z_image = self.image_encoder(image) * presence[:, 0:1] if self.image_encoder is not None else zeros
        z_genes = self.genomics_encoder(genomics) * presence[:, 1:2] if self.genomics_encoder is not None else zeros
        return self.head(torch.cat([z_image, z_genes, presence], dim=1))


class ProbabilityModel(nn.Module):
    """What is exported: softmax probabilities, the quantity serving returns."""

    def __init__(self, net: FusionNet):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, genomics: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(image, genomics, presence), dim=-1)
