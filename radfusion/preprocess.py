"""The ONE deterministic preprocessing definition, shared by training and serving.

Image: canonical orientation -> resample to the contract spacing -> centre crop/pad
to the contract shape -> HU window to [0, 1]. Genomics: align to the panel ->
z-score with the training statistics. Both return float32 arrays shaped as the ONNX
inputs expect (without the batch axis)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from radfusion.contract import MODALITIES, GenePanel, ImageGeometry, ModelContract
from radfusion.dicom.volume import Volume
from radfusion.errors import GenePanelError, GeometryError, NoModalityError, WrongModalityError

_MAX_NAMES_IN_ERROR = 20


def preprocess_image(volume: Volume, geometry: ImageGeometry) -> np.ndarray:
    """Volume -> (1, D, H, W) float32 in [0, 1] on the contract grid."""
    if geometry.modalities and volume.modality and volume.modality not in geometry.modalities:
        raise WrongModalityError(f"modality {volume.modality} not accepted; model accepts {list(geometry.modalities)}")
    vol = volume.canonical()
    factors = [s / t for s, t in zip(vol.spacing, geometry.target_spacing)]
    if any(not np.isfinite(f) or f <= 0 for f in factors):
        raise GeometryError("invalid voxel spacing")
    voxels = vol.voxels.astype(np.float32, copy=False)
    if voxels.shape[0] == 1:
        # A lone slice has no extent along the slice axis to interpolate.
        factors[0] = 1.0
    resampled = ndimage.zoom(voxels, factors, order=1, mode="nearest", grid_mode=True)
    low, high = geometry.window
    fitted = _crop_or_pad(resampled, geometry.target_shape, fill=low)
    windowed = (np.clip(fitted, low, high) - low) / (high - low)
    return windowed[np.newaxis].astype(np.float32)


def _crop_or_pad(array: np.ndarray, shape: tuple[int, int, int], fill: float) -> np.ndarray:
    out = np.full(shape, fill, dtype=np.float32)
    src, dst = [], []
    for have, want in zip(array.shape, shape):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[tuple(dst)] = array[tuple(src)]
    return out


def preprocess_genomics(values: Mapping[str, float], panel: GenePanel) -> np.ndarray:
    """Align gene -> value to the panel and z-score with the training statistics.

    Genes the panel needs but the input lacks, and non-finite values, are errors that
    name the genes; extra genes are ignored."""
    missing = [g for g in panel.features if g not in values]
    if missing:
        raise GenePanelError(
            f"{len(missing)} of {len(panel.features)} panel genes missing: {_names(missing)}"
        )
    raw = np.array([_as_float(values[g]) for g in panel.features], dtype=np.float64)
    bad = [g for g, v in zip(panel.features, raw) if not np.isfinite(v)]
    if bad:
        raise GenePanelError(f"{len(bad)} genes have non-finite values (NaN/inf): {_names(bad)}")
    mean = np.asarray(panel.mean, dtype=np.float64)
    std = np.asarray(panel.std, dtype=np.float64)
    return ((raw - mean) / std).astype(np.float32)


def fit_gene_panel(rows: Mapping[str, np.ndarray] | object, features: list[str]) -> GenePanel:
    """Normalisation statistics from training rows (a DataFrame with ``features`` columns).
    Constant features get std 1 so they pass through centred instead of exploding."""
    matrix = np.asarray(rows[features], dtype=np.float64)  # type: ignore[index]
    mean = np.nanmean(matrix, axis=0)
    std = np.nanstd(matrix, axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    return GenePanel(features=list(features), mean=mean.tolist(), std=std.tolist())


@dataclass
class ModelInputs:
    """One case's ONNX inputs (no batch axis) and which modalities fed the model."""

    image: np.ndarray
    genomics: np.ndarray
    presence: np.ndarray
    modalities_used: list[str]

    def as_feed(self) -> dict[str, np.ndarray]:
        return {"image": self.image, "genomics": self.genomics, "presence": self.presence}


def build_inputs(contract: ModelContract, image: np.ndarray | None, genomics: np.ndarray | None) -> ModelInputs:
    """Fill absent modalities with zeros and set the presence mask. A modality the model
    was not trained with is fed as absent even when given."""
    used = [
        m
        for m, value in zip(MODALITIES, (image, genomics))
        if value is not None and m in contract.trained_modalities
    ]
    if not used:
        raise NoModalityError(f"none of the model's modalities {contract.trained_modalities} was provided")
    for m in MODALITIES:
        if m in contract.trained_modalities and m not in used and m not in contract.may_be_missing:
            raise NoModalityError(f"model requires {m}")
    image_shape = (1, *contract.image.target_shape)
    n_genes = len(contract.genomics.features)
    image_in = image if "image" in used else np.zeros(image_shape, dtype=np.float32)
    genomics_in = genomics if "genomics" in used else np.zeros(n_genes, dtype=np.float32)
    if image_in.shape != image_shape:
        raise GeometryError(f"image tensor shape {image_in.shape} differs from contract {image_shape}")
    presence = np.array([m in used for m in MODALITIES], dtype=np.float32)
    return ModelInputs(image_in.astype(np.float32), genomics_in.astype(np.float32), presence, used)


def _as_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def _names(genes: list[str]) -> str:
    shown = ", ".join(genes[:_MAX_NAMES_IN_ERROR])
    more = len(genes) - _MAX_NAMES_IN_ERROR
    return shown + (f" and {more} more" if more > 0 else "")
