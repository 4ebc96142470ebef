"""LightningDataModule over a radfusion cohort folder (dicom/, genomics.parquet,
clinical.csv). Preprocessing is the core's one definition (radfusion.preprocess),
cached to disk by MONAI's PersistentDataset so it runs once per study, not per epoch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from monai.data import DataLoader, PersistentDataset
from monai.transforms import Compose, MapTransform, RandFlipd, RandScaleIntensityd, RandShiftIntensityd

from radfusion.cohort import cohort_hash, index_studies
from radfusion.contract import GenePanel, ImageGeometry
from radfusion.genomics import feature_columns, load_genomics_table
from radfusion.preprocess import fit_gene_panel, preprocess_genomics
from radfusion.study import read_study_image


class LoadStudyd(MapTransform):
    """files -> (1, D, H, W) image on the contract grid, via the core preprocessing."""

    def __init__(self, geometry: ImageGeometry, root: Path):
        super().__init__(keys=["image"])
        self.geometry = geometry
        self.root = Path(root)

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        if not data["image"]:  # patient without a study: image-absent, presence says so
            out["image"] = torch.zeros((1, *self.geometry.target_shape))
            return out
        files = [self.root / f for f in data["image"]]
        out["image"] = torch.from_numpy(read_study_image(files, self.geometry).image)
        return out


class RadfusionDataModule(L.LightningDataModule):
    def __init__(
        self,
        cohort_dir: str,
        genomics_file: str = "genomics.parquet",
        clinical_file: str = "clinical.csv",
        target: str = "response",
        labels: tuple[str, ...] = ("non-responder", "responder"),
        target_shape: tuple[int, int, int] = (32, 48, 48),
        target_spacing: tuple[float, float, float] = (5.0, 8.0, 8.0),
        window: tuple[float, float] = (-150.0, 250.0),
        image_modalities: tuple[str, ...] = ("CT",),
        split: tuple[float, float, float] = (0.6, 0.2, 0.2),
        split_seed: int = 0,
        batch_size: int = 16,
        num_workers: int = 0,
        augment: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.cohort_dir = Path(cohort_dir)
        self.geometry = ImageGeometry(
            target_shape=tuple(target_shape),
            target_spacing=tuple(target_spacing),
            window=tuple(window),
            modalities=tuple(image_modalities),
        )
        self.labels = list(labels)
        self.genomics = load_genomics_table(self.cohort_dir / genomics_file)
        self.gene_features = feature_columns(self.genomics)
        self.datasets: dict[str, PersistentDataset] = {}
        self.records: dict[str, list[dict]] = {}
        self.gene_panel: GenePanel | None = None

    # Read by LightningCLI.link_arguments so the model is built for this data.
    @property
    def n_genes(self) -> int:
        return len(self.gene_features)

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    @property
    def cohort_hash(self) -> str:
        return cohort_hash(
            self.cohort_dir / "dicom",
            self.cohort_dir / self.hparams.genomics_file,
            self.cohort_dir / self.hparams.clinical_file,
        )

    def prepare_data(self) -> None:
        index_studies(self.cohort_dir / "dicom")

    def setup(self, stage: str | None = None) -> None:
        if self.records:
            return
        table = self._joined_table()
        assignment = split_patients(table, self.hparams.split, self.hparams.split_seed, self.hparams.target)
        train_ids = assignment.index[assignment == "train"]
        has_genes = self.genomics.index.intersection(train_ids)
        self.gene_panel = fit_gene_panel(self.genomics.loc[has_genes], self.gene_features)
        cache = self.cohort_dir / ".radfusion" / f"images-{self._geometry_key()}"
        for part in ("train", "val", "test"):
            ids = assignment.index[assignment == part]
            self.records[part] = [self._record(table.loc[pid]) for pid in ids]
            self.datasets[part] = PersistentDataset(
                self.records[part],
                transform=self._transforms(train=part == "train" and self.hparams.augment),
                cache_dir=cache,
                hash_transform=None,
            )

    def _joined_table(self) -> pd.DataFrame:
        studies = index_studies(self.cohort_dir / "dicom").drop_duplicates("patient_id").set_index("patient_id")
        path = self.cohort_dir / self.hparams.clinical_file
        clinical = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"patient_id": str})
        clinical = clinical.set_index("patient_id")
        table = clinical.join(studies, how="left")
        return table[table[self.hparams.target].notna()]

    def _record(self, row: pd.Series) -> dict:
        pid = row.name
        genes = self.genomics.loc[pid, self.gene_features] if pid in self.genomics.index else None
        has_image = isinstance(row.get("files"), (list, np.ndarray)) and len(row["files"]) > 0
        if genes is not None:
            vector = preprocess_genomics(genes.to_dict(), self.gene_panel)
        else:
            vector = np.zeros(self.n_genes, dtype=np.float32)
        return {
            "patient_id": pid,
            "image": [str(f) for f in row["files"]] if has_image else [],
            "genomics": vector,
            "presence": np.array([has_image, genes is not None], dtype=np.float32),
            "label": int(row[self.hparams.target]),
        }

    def _transforms(self, train: bool) -> Compose:
        load = LoadStudyd(self.geometry, self.cohort_dir / "dicom")
        if not train:
            return Compose([load])
        return Compose(
            [
                load,
                # The phenotype (lesion size, contrast, texture) ignores orientation.
                RandFlipd(keys="image", prob=0.5, spatial_axis=0),
                RandFlipd(keys="image", prob=0.5, spatial_axis=1),
                RandFlipd(keys="image", prob=0.5, spatial_axis=2),
                RandScaleIntensityd(keys="image", factors=0.05, prob=0.5),
                RandShiftIntensityd(keys="image", offsets=0.02, prob=0.5),
            ]
        )

    def _geometry_key(self) -> str:
        text = json.dumps([self.geometry.target_shape, self.geometry.target_spacing, self.geometry.window])
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.datasets[part],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def collate(items: list[dict]) -> dict:
    return {
        "patient_id": [i["patient_id"] for i in items],
        "image": torch.stack([torch.as_tensor(i["image"], dtype=torch.float32) for i in items]),
        "genomics": torch.stack([torch.as_tensor(i["genomics"]) for i in items]),
        "presence": torch.stack([torch.as_tensor(i["presence"]) for i in items]),
        "label": torch.tensor([i["label"] for i in items]),
    }


def split_patients(table: pd.DataFrame, fractions, seed: int, target: str) -> pd.Series:
    """Deterministic split stratified by the target, independent of row order."""
    rng = np.random.default_rng(seed)
    assignment = pd.Series(index=table.index, dtype=object)
    for _, group in table.groupby(target):
        ids = np.array(sorted(group.index))
        rng.shuffle(ids)
        n_train = int(round(fractions[0] * len(ids)))
        n_val = int(round(fractions[1] * len(ids)))
        assignment[ids[:n_train]] = "train"
        assignment[ids[n_train : n_train + n_val]] = "val"
        assignment[ids[n_train + n_val :]] = "test"
    return assignment
