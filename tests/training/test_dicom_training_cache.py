"""The training DataModule's image cache choices give the same images: "persistent"
(disk), "memory" (MONAI CacheDataset) and "none" (read every epoch)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from radfusion.training.data import RadfusionDataModule

GRID = dict(target_shape=(8, 16, 16), target_spacing=(6.0, 12.0, 12.0), window=(-150.0, 250.0))


@pytest.fixture
def cohort(tiny_cohort: Path, tmp_path: Path) -> Path:
    """A private copy: the persistent cache writes under the cohort folder."""
    return Path(shutil.copytree(tiny_cohort, tmp_path / "cohort"))


def _val_images(cohort: Path, cache: str) -> torch.Tensor:
    dm = RadfusionDataModule(str(cohort), batch_size=4, cache=cache, augment=False, **GRID)
    dm.prepare_data()
    dm.setup("fit")
    return torch.cat([batch["image"] for batch in dm.val_dataloader()])


def test_every_cache_choice_gives_the_same_images(cohort: Path) -> None:
    none = _val_images(cohort, "none")
    assert none.shape[1:] == (1, 8, 16, 16) and none.shape[0] >= 1
    assert torch.equal(_val_images(cohort, "memory"), none)
    assert torch.equal(_val_images(cohort, "persistent"), none)
    cached = list((cohort / ".radfusion").glob("images-*/*.pt"))
    assert len(cached) >= none.shape[0]  # the persistent cache was written to disk
    with pytest.raises(ValueError, match="cache must be one of"):
        RadfusionDataModule(str(cohort), cache="redis", **GRID)
