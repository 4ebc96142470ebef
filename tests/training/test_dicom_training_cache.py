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
    """A private copy, so that the cache's entries are this test's."""
    return Path(shutil.copytree(tiny_cohort, tmp_path / "cohort"))


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _val_images(cohort: Path, cache: str, cache_dir: Path | None = None) -> torch.Tensor:
    dm = RadfusionDataModule(
        str(cohort), batch_size=4, cache=cache, augment=False, cache_dir=cache_dir and str(cache_dir), **GRID
    )
    dm.prepare_data()
    dm.setup("fit")
    return torch.cat([batch["image"] for batch in dm.val_dataloader()])


def test_every_cache_choice_gives_the_same_images_and_the_cohort_folder_is_left_as_it_was(
    cohort: Path, tmp_path: Path
) -> None:
    before = _files(cohort)
    none = _val_images(cohort, "none", tmp_path / "cache")
    assert none.shape[1:] == (1, 8, 16, 16) and none.shape[0] >= 1
    assert torch.equal(_val_images(cohort, "memory", tmp_path / "cache"), none)
    assert torch.equal(_val_images(cohort, "persistent", tmp_path / "cache"), none)
    cached = list((tmp_path / "cache" / "images").glob("*/*.pt"))
    assert len(cached) >= none.shape[0]  # the persistent cache was written to disk, in the cache folder
    assert list((tmp_path / "cache" / "studies").glob("*.parquet"))  # and the study index
    assert _files(cohort) == before  # nothing written into the input data


def test_the_cache_folder_is_the_operators_choice(cohort: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RADFUSION_CACHE_DIR", str(tmp_path / "chosen"))
    before = _files(cohort)
    _val_images(cohort, "persistent")
    assert list((tmp_path / "chosen" / "images").glob("*/*.pt"))
    assert _files(cohort) == before
    with pytest.raises(ValueError, match="cache must be one of"):
        RadfusionDataModule(str(cohort), cache="redis", **GRID)


def test_a_cohort_written_again_at_the_same_path_gets_new_cached_images(cohort: Path, tmp_path: Path) -> None:
    _val_images(cohort, "persistent", tmp_path / "cache")
    some_file = next(p for p in (cohort / "dicom").rglob("*") if p.is_file())
    some_file.write_bytes(some_file.read_bytes())  # rewritten: a new modification time
    _val_images(cohort, "persistent", tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "images").iterdir())) == 2
    assert oct((tmp_path / "cache" / "images").stat().st_mode & 0o777) == oct(0o700)
