"""LightningDataModule over a radfusion cohort folder (dicom/, genomics.parquet,
clinical.csv). Preprocessing is the core's one definition (radfusion.preprocess),
cached to disk by MONAI's PersistentDataset so it runs once per study, not per epoch.

The genomics table's columns are split into omics blocks (expression, mutation,
copy number) by feature name; each block and the optional clinical covariates get
their own presence bit, in the order of the model contract's modalities."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.transforms import (
    Compose,
    MapTransform,
    RandFlipd,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from radfusion.cache import cache_root, make_private, source_key
from radfusion.cohort import cohort_hash, index_studies, tree_fingerprint
from radfusion.cohort_manifest import load_manifest
from radfusion.cohort_manifest.outcomes import read_clinical
from radfusion.contract import CLINICAL, DEFAULT_MAX_IMPUTED, ClinicalSpec, ImageGeometry, OmicsBlock
from radfusion.errors import ClinicalInputError
from radfusion.genomics import feature_columns, load_genomics_table, split_blocks
from radfusion.preprocess import (
    DEFAULT_MIN_LEVEL_COUNT,
    fit_clinical_spec,
    fit_omics_block,
    preprocess_clinical,
    preprocess_omics,
)
from radfusion.study import read_study_image
from radfusion.training.folds import cv_patients, fold_seed, split_patients

CACHE_CHOICES = ("persistent", "memory", "none")
# The image's presence bit: "image" is always the first of a data module's modalities.
IMAGE_BIT = 0


@dataclass
class _Fitted:
    table: pd.DataFrame
    assignment: pd.Series  # patient id -> "train" | "val" | "test"
    omics: list[OmicsBlock]
    clinical: ClinicalSpec | None


class LoadStudyd(MapTransform):
    """files -> (1, D, H, W) image on the contract grid, via the core preprocessing."""

    def __init__(self, geometry: ImageGeometry, root: Path):
        super().__init__(keys=["image"])
        self.geometry = geometry
        self.root = Path(root)
        # One tensor for every patient without a study (collate copies it into the batch).
        self.absent = torch.zeros((1, *geometry.target_shape))

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        if not data["image"]:  # patient without a study: image-absent, presence says so
            out["image"] = self.absent
            return out
        files = [self.root / f for f in data["image"]]
        out["image"] = torch.from_numpy(read_study_image(files, self.geometry).image)
        return out


class AugmentStudyd(Randomizable, MapTransform):
    """The random image transforms, for patients with a study only: an absent image is
    zeros the network never sees (its presence bit is 0), and augmenting it cost most of
    an epoch on image-less cohorts."""

    def __init__(self, transforms: list):
        super().__init__(keys=["image"])
        self.transforms = Compose(transforms)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        self.transforms.set_random_state(seed, state)
        return self

    def randomize(self, data) -> None:  # each wrapped transform draws its own
        pass

    def __call__(self, data: dict) -> dict:
        return self.transforms(data) if data["presence"][IMAGE_BIT] else data


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
        # Clinical covariates given to the model as one input block (none by default);
        # `treatment` names the categorical one a model can be asked "what if" about.
        clinical_numeric: tuple[str, ...] = (),
        clinical_categorical: tuple[str, ...] = (),
        treatment: str | None = None,
        # Multi-label targets (e.g. response per drug): binary columns, one model
        # output each, named by the columns. Empty: the single `target` with `labels`.
        targets: tuple[str, ...] = (),
        # Survival outcome columns, carried in every record for the survival tasks
        # (time NaN, event 0 where the table lacks them).
        time_column: str = "survival_months",
        event_column: str = "event",
        split: tuple[float, float, float] = (0.6, 0.2, 0.2),
        split_seed: int = 0,
        # Cross-validation (radfusion.training.folds): with folds >= 2 the test part is
        # fold `fold` of a stratified K-fold split (shuffled per `repeat`), and the
        # checkpoint is chosen on an inner validation part of the rest (split[1] of it,
        # relative to split[0] + split[1]). 0: the fixed `split` above.
        folds: int = 0,
        fold: int = 0,
        repeat: int = 0,
        # The missing-data policy (radfusion.preprocess), fitted on the training part:
        # the largest share of a block that may be imputed before the block counts as
        # absent, and how often a categorical level must occur not to be merged into "other".
        max_imputed_fraction: float = DEFAULT_MAX_IMPUTED,
        min_level_count: int = DEFAULT_MIN_LEVEL_COUNT,
        batch_size: int = 16,
        num_workers: int = 0,
        augment: bool = True,
        # Where preprocessed images are kept between epochs: "persistent" (on disk,
        # shared by runs), "memory" (CacheDataset, filled by threads at setup) or "none".
        cache: str = "persistent",
        # A `radfusion cohort build` output folder: studies (the chosen series),
        # genomics blocks and outcomes come from it instead of cohort_dir's files;
        # cohort_dir then only names the run's image cache.
        manifest: str | None = None,
        # The folder of the persistent image cache and the study index (None:
        # radfusion.cache.cache_root(), RADFUSION_CACHE_DIR or the user cache); never
        # the cohort folder, which may be read-only.
        cache_dir: str | None = None,
        # A policy document (radfusion.pooled_policy.policy_document, JSON): the gene
        # panel and missing-data policy to preprocess with instead of fitting them on the
        # training part. Federated sites use the one pooled from every site's moments;
        # features the site's table lacks are missing values. With cohort_dir "" the data
        # module holds no data and only shapes the model (the federation's server).
        policy: str | dict | None = None,
    ):
        super().__init__()
        if cache not in CACHE_CHOICES:
            raise ValueError(f"cache must be one of {CACHE_CHOICES}, not {cache!r}")
        self.save_hyperparameters()
        self.cohort_dir = Path(cohort_dir)
        self.geometry = ImageGeometry(
            target_shape=tuple(target_shape),
            target_spacing=tuple(target_spacing),
            window=tuple(window),
            modalities=tuple(image_modalities),
        )
        self.labels = list(targets) if targets else list(labels)
        self.manifest = load_manifest(manifest) if manifest else None
        self.genomics = self.manifest.genomics if self.manifest else self._genomics_table(genomics_file)
        self.policy = read_policy(policy) if policy else None
        if self.policy:
            omics, _ = self.policy
            self.block_features = {block.name: list(block.features) for block in omics}
            self.genomics = self.genomics.reindex(columns=[f for block in omics for f in block.features])
        else:
            self.block_features = split_blocks(feature_columns(self.genomics))
        self.datasets: dict[str, Dataset] = {}
        self._statistics_dataset: Dataset | None = None
        self.records: dict[str, list[dict]] = {}
        self.omics: list[OmicsBlock] = []
        self.clinical: ClinicalSpec | None = None

    # The batch-size finder (Tuner.scale_batch_size / BatchSizeFinder) reads and sets
    # this; the loaders read hparams.batch_size, which the setter keeps in step.
    @property
    def batch_size(self) -> int:
        return self.hparams.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self.hparams.batch_size = int(value)

    # Read by LightningCLI.link_arguments so the model is built for this data.
    @property
    def omics_sizes(self) -> dict[str, int]:
        return {name: len(features) for name, features in self.block_features.items()}

    @property
    def n_clinical(self) -> int:
        """Width of the encoded clinical block (0: no clinical input): it depends on the
        policy fitted on the training part (indicator columns, merged levels)."""
        clinical = self.policy[1] if self.policy else self._fitted.clinical
        return len(clinical.features) if clinical else 0

    @property
    def modalities(self) -> list[str]:
        """Presence-mask order, as the contract's `modalities` (the image first: IMAGE_BIT)."""
        return ["image", *self.block_features, *([CLINICAL] if self.n_clinical else [])]

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    @property
    def dicom_root(self) -> Path:
        return self.manifest.dicom_root if self.manifest else self.cohort_dir / "dicom"

    @property
    def cohort_hash(self) -> str:
        if self.manifest:
            return cohort_hash(self.manifest.dicom_root, *self.manifest.files)
        return cohort_hash(
            self.cohort_dir / "dicom",
            self.cohort_dir / self.hparams.genomics_file,
            self.cohort_dir / self.hparams.clinical_file,
        )

    def prepare_data(self) -> None:
        if not self.manifest:
            self._studies()

    @cached_property
    def _fitted(self) -> _Fitted:
        """The joined table, who trains/validates/tests, and the preprocessing fitted on
        the training part (fitted once: the model's input widths depend on it)."""
        h = self.hparams
        table = self._joined_table()
        if h.folds:
            val_share = h.split[1] / (h.split[0] + h.split[1])
            assignment = cv_patients(table, h.folds, h.fold, fold_seed(h.split_seed, h.repeat), h.target, val_share)
        else:
            assignment = split_patients(table, h.split, h.split_seed, h.target)
        if self.policy:
            return _Fitted(table, assignment, *self.policy)
        train_ids = assignment.index[assignment == "train"]
        train_genomics = self.genomics.loc[self.genomics.index.intersection(train_ids)]
        omics = [
            fit_omics_block(train_genomics, name, f, h.max_imputed_fraction) for name, f in self.block_features.items()
        ]
        clinical = None
        if h.clinical_numeric or h.clinical_categorical:
            clinical = fit_clinical_spec(
                table.loc[train_ids],
                list(h.clinical_numeric),
                list(h.clinical_categorical),
                h.treatment,
                min_level_count=h.min_level_count,
                max_imputed=h.max_imputed_fraction,
            )
        return _Fitted(table, assignment, omics, clinical)

    def adopt_policy(self, omics: list[OmicsBlock], clinical: ClinicalSpec | None) -> None:
        """Preprocess with the panels and missing-data policy a checkpoint was trained
        with instead of refitting them (a model's input widths are its own policy's,
        e.g. one trained before a policy change). Before setup."""
        self.__dict__["_fitted"] = dataclasses.replace(self._fitted, omics=omics, clinical=clinical)

    def setup(self, stage: str | None = None) -> None:
        if self.records:
            return
        fitted = self._fitted
        self.omics, self.clinical = fitted.omics, fitted.clinical
        for part in ("train", "val", "test"):
            ids = fitted.assignment.index[fitted.assignment == part]
            self.records[part] = [self._record(fitted.table.loc[pid]) for pid in ids]
            self.datasets[part] = self._dataset(
                self.records[part], self._transforms(train=part == "train" and self.hparams.augment)
            )

    def _dataset(self, records: list[dict], transform: Compose) -> Dataset:
        """Deterministic transforms (the study loading) are cached; random ones run per epoch."""
        if not any(r["image"] for r in records):  # no study to read: nothing to cache
            return Dataset(records, transform=transform)
        if self.hparams.cache == "persistent":
            return PersistentDataset(records, transform=transform, cache_dir=self._image_cache_dir, hash_transform=None)
        if self.hparams.cache == "memory":
            return CacheDataset(records, transform=transform, num_workers=None, progress=False)
        return Dataset(records, transform=transform)

    def _clinical_table(self) -> pd.DataFrame:
        if self.manifest:
            return self.manifest.table
        path = self.cohort_dir / self.hparams.clinical_file
        if not path.exists():
            raise FileNotFoundError(f"the cohort has no clinical table {path.name} (it holds the outcomes)")
        clinical, repeated = read_clinical(path, [])
        if repeated:
            # Which row is right cannot be known; the count only (the ids identify patients).
            raise ClinicalInputError(f"clinical table {path.name} lists {len(repeated)} patient(s) more than once")
        return clinical

    def _joined_table(self) -> pd.DataFrame:
        if self.manifest:
            return self.manifest.table[self.manifest.table[self.hparams.target].notna()]
        studies = self._studies().drop_duplicates("patient_id").set_index("patient_id")
        table = self._clinical_table().join(studies, how="left")
        return table[table[self.hparams.target].notna()]

    def _studies(self) -> pd.DataFrame:
        """The cohort's studies; none when it has no dicom/ folder (a model without the
        image modality needs none)."""
        root = self.cohort_dir / "dicom"
        if not root.is_dir():
            return pd.DataFrame(columns=["patient_id", "study_uid", "files"])
        return index_studies(root, self._cache_root())

    @cached_property
    def _image_cache_dir(self) -> Path:
        """Keyed by the DICOM tree and its files' sizes and times too (walked once per
        data module): a cohort written again at the same path does not meet the images
        of the one before."""
        fingerprint = tree_fingerprint(self.dicom_root)[:16]
        name = f"{source_key(self.dicom_root)}-{fingerprint}-{self._geometry_key()}"
        return make_private(self._cache_root() / "images" / name)

    def _cache_root(self) -> Path:
        return Path(self.hparams.cache_dir) if self.hparams.cache_dir else cache_root()

    def _genomics_table(self, name: str) -> pd.DataFrame:
        """The genomics table; an empty one (no omics blocks) when the cohort has none."""
        path = self.cohort_dir / name
        if not path.exists():
            return pd.DataFrame(index=pd.Index([], name="patient_id", dtype=str))
        return load_genomics_table(path)

    def _record(self, row: pd.Series) -> dict:
        pid = row.name
        has_image = isinstance(row.get("files"), (list, np.ndarray)) and len(row["files"]) > 0
        present = {"image"} if has_image else set()
        genomics = np.zeros(sum(self.omics_sizes.values()), dtype=np.float32)
        if self.omics and pid in self.genomics.index and self.genomics.loc[pid].notna().any():
            omics = preprocess_omics(self.genomics.loc[pid].to_dict(), self.omics)
            genomics, present = omics.values, present | set(omics.present)
        clinical = np.zeros(max(1, self.n_clinical), dtype=np.float32)
        if self.clinical is not None:
            covariates = preprocess_clinical(row.to_dict(), self.clinical)
            if covariates.values is not None:
                clinical = covariates.values
                present.add(CLINICAL)
        return {
            "patient_id": pid,
            "image": [str(f) for f in row["files"]] if has_image else [],
            "genomics": genomics,
            "clinical": clinical,
            "presence": np.array([m in present for m in self.modalities], dtype=np.float32),
            "label": self._label(row),
            "time": float(row.get(self.hparams.time_column, np.nan)),
            "event": int(row[self.hparams.event_column]) if pd.notna(row.get(self.hparams.event_column)) else 0,
        }

    def _label(self, row: pd.Series) -> int | np.ndarray:
        """Class index (a value that is one of `labels`, e.g. subtype "S2", or an integer
        code), or for multi-label targets a float vector of the binary columns."""
        if self.hparams.targets:
            return np.array([float(row[t]) for t in self.hparams.targets], dtype=np.float32)
        value = row[self.hparams.target]
        return self.labels.index(str(value)) if str(value) in self.labels else int(value)

    def _transforms(self, train: bool) -> Compose:
        load = LoadStudyd(self.geometry, self.dicom_root)
        if not train:
            return Compose([load])
        return Compose(
            [
                load,
                AugmentStudyd(
                    [
                        # The phenotype (lesion size, contrast, texture) ignores orientation.
                        RandFlipd(keys="image", prob=0.5, spatial_axis=0),
                        RandFlipd(keys="image", prob=0.5, spatial_axis=1),
                        RandFlipd(keys="image", prob=0.5, spatial_axis=2),
                        RandScaleIntensityd(keys="image", factors=0.05, prob=0.5),
                        RandShiftIntensityd(keys="image", offsets=0.02, prob=0.5),
                    ]
                ),
            ]
        )

    def _geometry_key(self) -> str:
        # Every geometry field (series rules and geometry repair too) changes the images.
        text = json.dumps(dataclasses.asdict(self.geometry), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.datasets[part],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            # Page-locked host memory lets the copy to a GPU overlap compute.
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def statistics_dataloader(self, seed: int = 0) -> DataLoader:
        """The training split as evaluation sees it (no augmentation), shuffled by its
        own generator so it draws nothing from training's random stream: what the
        evaluation-mode network is fitted on (training/evaluation_mode.py)."""
        if self._statistics_dataset is None:
            self._statistics_dataset = self._dataset(self.records["train"], self._transforms(train=False))
        return DataLoader(
            self._statistics_dataset,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            num_workers=self.hparams.num_workers,
            collate_fn=collate,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        # `radfusion train predict`: the held-out patients, as `test` measures them.
        return self._loader("test", shuffle=False)


def read_policy(policy: str | dict) -> tuple[list[OmicsBlock], ClinicalSpec | None]:
    """The omics blocks and clinical spec of a policy document (data.policy): a JSON
    file, or the document itself (as a checkpoint keeps it)."""
    document = policy if isinstance(policy, dict) else json.loads(Path(policy).read_text())
    clinical = document.get("clinical")
    return [OmicsBlock.from_dict(b) for b in document["omics"]], ClinicalSpec(**clinical) if clinical else None


def collate(items: list[dict]) -> dict:
    return {
        "patient_id": [i["patient_id"] for i in items],
        "image": torch.stack([torch.as_tensor(i["image"], dtype=torch.float32) for i in items]),
        "genomics": torch.stack([torch.as_tensor(i["genomics"]) for i in items]),
        "clinical": torch.stack([torch.as_tensor(i["clinical"]) for i in items]),
        "presence": torch.stack([torch.as_tensor(i["presence"]) for i in items]),
        "label": torch.as_tensor(np.asarray([i["label"] for i in items])),
        "time": torch.tensor([i["time"] for i in items], dtype=torch.float32),
        "event": torch.tensor([i["event"] for i in items]),
    }
