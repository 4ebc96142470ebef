"""The fusion network: a plain nn.Module, kept apart from the LightningModule so it
can be exported, tested and reused on its own.

image  -> MONAI encoder -> embedding (+ tokens) --x presence[image] --+
omics block (each) -> MLP -> embedding ---------x presence[block] ----+--> fusion -> outputs
clinical -> MLP ---------> embedding -----------x presence[clinical] -+   (late | gated |
presence mask --------------------------------------------------------+  kronecker | cross_attention)
                                                              + treatment interaction (optional)
omics + clinical inputs -> linear path (optional, linear.py) -----------> added to the outputs

Masking the embeddings (not the inputs) keeps batch-norm statistics clean while a
missing modality contributes exactly nothing, so one model serves any subset.

With ``treatment_columns`` (the treatment's one-hot clinical columns, the reference
treatment first) an explicit treatment x omics term (interaction.py) is added to the
outputs and the clinical encoder no longer sees those columns: the treatment acts
through that term alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from radfusion.training.fusion.encoders import build_image_encoder, clinical_encoder, omics_encoder
from radfusion.training.fusion.interaction import TreatmentInteraction
from radfusion.training.fusion.linear import LinearPath
from radfusion.training.fusion.strategies import build_fusion


@dataclass(frozen=True)
class NetworkConfig:
    """Everything that shapes the fusion network (YAML ``model.network``): the one
    place a network option is declared. What the data decides (omics block sizes,
    clinical width, output count, treatment columns) is passed to FusionNet apart."""

    # What the model uses: "image", "genomics" (every omics block) or single block
    # names, and "clinical".
    modalities: tuple[str, ...] = ("image", "genomics")
    spatial_dims: int = 3
    # densenet | resnet | efficientnet | vit (training/fusion/encoders.py)
    image_encoder: str = "densenet"
    image_widths: tuple[int, ...] = (16, 8)
    embed_dim: int = 64
    genomics_hidden: int = 16
    genomics_dropout: float = 0.5
    dropout: float = 0.3
    # late | gated | kronecker | cross_attention (training/fusion/strategies.py)
    fusion: str = "late"
    kronecker_rank: int = 8
    # The ViT encoder's position embedding is sized by the image grid: give the data's
    # target_shape (checked against it when training starts).
    image_shape: tuple[int, int, int] | None = None
    image_patch: tuple[int, int, int] = (8, 16, 16)
    # An explicit treatment x omics term (training/fusion/interaction.py): needs
    # data.treatment; its columns are filled from the data when training starts.
    treatment_interaction: bool = False
    # Omics blocks whose features are candidate biomarkers (None: all the model uses).
    interaction_blocks: tuple[str, ...] | None = None
    # A penalised linear term over the omics and clinical inputs the model reads, added
    # to the outputs (training/fusion/linear.py; its penalty: OptimiserConfig linear_*).
    linear_path: bool = False
    # The linear path also reads each omics feature's square: U-shaped effects (linear.py).
    linear_squares: bool = False

    def __post_init__(self) -> None:
        # YAML and old checkpoints give lists: keep the config hashable and comparable.
        for name in ("modalities", "image_widths", "image_shape", "image_patch", "interaction_blocks"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))

    @classmethod
    def coerce(cls, value: NetworkConfig | Mapping[str, Any] | None) -> NetworkConfig:
        """The config from itself, a mapping (a checkpoint's or YAML's), or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        return cls(**dict(value))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


class FusionNet(nn.Module):
    """Encoders for the image, each omics block and the clinical covariates; their
    masked embeddings are combined by the ``fusion`` strategy into ``n_classes``
    outputs (class logits, label logits, a risk score or interval hazards: the
    task decides what they mean).

    ``modalities`` names what the model uses: "image", "genomics" (every omics block)
    or single block names, and "clinical"."""

    def __init__(
        self,
        omics_sizes: dict[str, int],
        n_clinical: int = 0,
        n_classes: int = 2,
        config: NetworkConfig | None = None,
        treatment_columns: Sequence[int] = (),
    ):
        super().__init__()
        config = NetworkConfig.coerce(config)
        self.config = config
        modalities, embed_dim, fusion = config.modalities, config.embed_dim, config.fusion
        self.n_outputs = n_classes
        self.omics_sizes = dict(omics_sizes)
        # Presence-mask order, as the data module and the model contract give it.
        self.modality_names = ["image", *self.omics_sizes, *(["clinical"] if n_clinical else [])]
        known = {*self.modality_names, "genomics"}
        if not modalities or set(modalities) - known:
            raise ValueError(f"modalities must be a non-empty subset of {sorted(known)}; got {list(modalities)}")
        self.modalities = tuple(modalities)
        self.embed_dim = embed_dim
        self.fusion_kind = fusion
        self.head = build_fusion(
            fusion,
            self.modality_names,
            self.used_mask(),
            list(self.omics_sizes),
            embed_dim,
            n_classes,
            config.dropout,
            kronecker_rank=config.kronecker_rank,
        )
        # Only the encoders a model uses exist: a unimodal baseline is the same
        # architecture with the other branches removed, not branches fed zeros.
        self.image_encoder = (
            build_image_encoder(
                config.image_encoder,
                config.spatial_dims,
                embed_dim,
                config.image_widths,
                with_tokens=getattr(self.head, "queries", None) not in (None, []),
                image_shape=config.image_shape,
                patch=config.image_patch,
            )
            if self.uses("image")
            else None
        )
        self.omics_encoders = nn.ModuleDict(
            {
                name: omics_encoder(size, config.genomics_hidden, embed_dim, config.genomics_dropout)
                for name, size in self.omics_sizes.items()
                if self.uses(name)
            }
        )
        self.clinical_encoder = clinical_encoder(n_clinical, embed_dim) if self.uses("clinical") else None
        # Added to the outputs: refitted in evaluation mode for each new best checkpoint
        # (training/evaluation_mode.py) and by calibration (training/evidence/calibration.py).
        self.register_buffer("output_bias", torch.zeros(n_classes))
        names = self.modality_names
        self.linear_path = (
            LinearPath(
                self.omics_sizes,
                [names.index(b) for b in self.omics_sizes],
                [self.uses(b) for b in self.omics_sizes],
                n_clinical,
                names.index("clinical") if self.uses("clinical") else None,
                n_classes,
                squares=config.linear_squares,
            )
            if config.linear_path
            else None
        )
        self.treatment_effect: TreatmentInteraction | None = None
        if treatment_columns:
            self.add_treatment_interaction(treatment_columns, config.interaction_blocks)

    def add_treatment_interaction(self, treatment_columns: Sequence[int], blocks: Sequence[str] | None = None) -> None:
        """Build the explicit treatment term over the treatment's one-hot clinical
        columns, reference (standard of care) first: one effect per other treatment.
        ``blocks``: the omics blocks whose features are candidate biomarkers (None:
        every block the model uses)."""
        if not self.uses("clinical"):
            raise ValueError("a treatment interaction needs the clinical covariates (the treatment is one)")
        unknown = set(blocks or ()) - set(self.omics_sizes)
        if unknown:
            raise ValueError(f"interaction blocks {sorted(unknown)} are not omics blocks of {list(self.omics_sizes)}")
        names = self.modality_names
        self.treatment_effect = TreatmentInteraction(
            treatment_columns,
            self.omics_sizes,
            [names.index(b) for b in self.omics_sizes],
            names.index("clinical"),
            self.n_outputs,
            used_blocks=[self.uses(b) and (blocks is None or b in blocks) for b in self.omics_sizes],
        )
        # The clinical encoder reads every column but the treatments (multiplied, not
        # indexed, so the exported graph keeps one static shape).
        keep = torch.ones(self.clinical_encoder[0].in_features)
        keep[list(treatment_columns)] = 0.0
        self.register_buffer("clinical_keep", keep, persistent=False)

    def _clinical_input(self, clinical: torch.Tensor) -> torch.Tensor:
        return clinical if self.treatment_effect is None else clinical * self.clinical_keep

    def uses(self, modality: str) -> bool:
        if modality not in self.modality_names:
            return False
        return modality in self.modalities or (modality in self.omics_sizes and "genomics" in self.modalities)

    def used_mask(self) -> list[bool]:
        return [self.uses(m) for m in self.modality_names]

    def group_masks(self) -> list[list[bool]]:
        """Membership of the modality groups a hospital has or lacks as a whole — the
        image, all omics blocks, the clinical covariates — over ``modality_names``."""
        names = self.modality_names
        return [[n == "image" for n in names], [n in self.omics_sizes for n in names], [n == "clinical" for n in names]]

    def encode(self, image, genomics, clinical, presence) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Per-modality embeddings (zero where absent or unused) and the image tokens
        (None unless the fusion strategy reads them)."""
        zeros = presence.new_zeros(presence.shape[0], self.embed_dim)
        blocks = dict(zip(self.omics_sizes, torch.split(genomics, list(self.omics_sizes.values()), dim=1), strict=True))
        out, tokens = [], None
        for i, name in enumerate(self.modality_names):
            mask = presence[:, i : i + 1]
            if name == "image":
                if self.image_encoder is None:
                    out.append(zeros)
                    continue
                embedding, tokens = self.image_encoder(image)
                out.append(embedding * mask)
                continue
            if name == "clinical":
                encoder, x = self.clinical_encoder, self._clinical_input(clinical)
            else:
                encoder, x = self.omics_encoders[name] if name in self.omics_encoders else None, blocks[name]  # noqa: SIM401 - nn.ModuleDict has no .get()
            out.append(encoder(x) * mask if encoder is not None else zeros)
        return out, tokens

    def embeddings(self, image, genomics, clinical, presence) -> list[torch.Tensor]:
        """One (batch, embed_dim) embedding per modality, zero where absent or unused."""
        return self.encode(image, genomics, clinical, presence)[0]

    def forward(self, image, genomics, clinical, presence) -> torch.Tensor:
        embeddings, tokens = self.encode(image, genomics, clinical, presence)
        return self.fuse(embeddings, tokens, genomics, clinical, presence)

    def fuse(self, embeddings, tokens, genomics, clinical, presence) -> torch.Tensor:
        """The outputs from ``encode``'s embeddings (masked by ``presence`` or by a
        presence with fewer modalities: training hides some after encoding)."""
        out = self.head(embeddings, presence, tokens) + self.output_bias
        if self.linear_path is not None:
            out = out + self.linear_path(genomics, self._clinical_input(clinical), presence)
        if self.treatment_effect is not None:
            out = out + self.treatment_effect(genomics, clinical, presence)
        return out


class LogitModel(nn.Module):
    """What is exported: the raw outputs ("logits"); the runtime turns them into
    probabilities (temperature + softmax/sigmoid) or survival figures by the
    contract's task, so calibration can change without re-exporting."""

    def __init__(self, net: FusionNet):
        super().__init__()
        self.net = net

    def forward(self, image, genomics, clinical, presence) -> torch.Tensor:
        return self.net(image, genomics, clinical, presence)
