"""The tiny synthetic cohort and model the fast tests share: cohort parameters, the
model grid that covers it, and a small seeded FusionNet."""

from __future__ import annotations

TINY_COHORT = dict(n_patients=10, seed=7, n_genes=100, n_slices=10, rows=32, cols=32, rle_fraction=0.25)
# The synthetic studies have ~5 mm slices and ~6 mm pixels: 10 x 32 x 32 voxels span
# ~50 x 192 x 192 mm, which this grid covers (8 x 6 mm, 16 x 12 mm).
TINY_TARGET_SHAPE = (8, 16, 16)
TINY_TARGET_SPACING = (6.0, 12.0, 12.0)


def tiny_net(contract, seed: int = 0):
    """A small untrained FusionNet for ``contract`` (seeded weights)."""
    import torch

    from radfusion.training.model import FusionNet, NetworkConfig

    torch.manual_seed(seed)
    return FusionNet(
        omics_sizes={b.name: len(b.features) for b in contract.omics},
        n_clinical=len(contract.clinical.features) if contract.clinical else 0,
        n_classes=len(contract.labels),
        config=NetworkConfig(
            modalities=tuple(contract.trained_modalities),
            image_encoder="resnet",
            image_widths=(4, 4, 8, 8),
            embed_dim=16,
            genomics_hidden=32,
        ),
    ).eval()


def tiny_contract_of(cohort, version: str = "0.0.1-test", cohort_hash: str = "tiny"):
    """The model contract for a tiny cohort: its genomics columns as omics blocks
    (expression, mutation; training-style mean/std), a small image grid, labels
    non-responder/responder, no clinical block."""
    from radfusion.contract import ImageGeometry, ModelContract
    from radfusion.genomics import feature_columns, load_genomics_table, split_blocks
    from radfusion.preprocess import fit_omics_block

    table = load_genomics_table(cohort / "genomics.parquet")
    blocks = [fit_omics_block(table, name, f) for name, f in split_blocks(feature_columns(table)).items()]
    return ModelContract(
        name="tiny-fusion",
        version=version,
        task="classification:response",
        labels=["non-responder", "responder"],
        positive_label="responder",
        image=ImageGeometry(
            spatial_dims=3,
            target_shape=TINY_TARGET_SHAPE,
            target_spacing=TINY_TARGET_SPACING,
            window=(-150.0, 250.0),
            modalities=("CT",),
            min_slices=4,
        ),
        omics=blocks,
        trained_modalities=["image", "genomics"],
        may_be_missing=["image", "genomics"],
        cohort_hash=cohort_hash,
    )
