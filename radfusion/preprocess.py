"""The ONE deterministic preprocessing definition, shared by training and serving.

Image: canonical orientation -> resample to the contract spacing -> centre crop/pad
to the contract shape -> HU window to [0, 1]. Omics: per block, align to the block's
panel -> z-score with the training statistics. Clinical: numeric covariates z-scored,
categorical ones one-hot. All return float32 arrays shaped as the ONNX inputs expect
(without the batch axis).

Numbers are checked where they become float32: a value finite in float64 can be inf
once z-scored and cast (a genomic value of 1e39), so every cast is followed by a
finiteness check that names the features (InvalidValueError), and build_inputs checks
the model's inputs once more. Resampling is refused before it runs when the volume it
would produce is over the study's budget."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from radfusion.contract import CLINICAL, ClinicalSpec, GenePanel, ImageGeometry, ModelContract, OmicsBlock
from radfusion.dicom.volume import Volume
from radfusion.errors import (
    ClinicalInputError,
    GenePanelError,
    GeometryError,
    InvalidValueError,
    NoModalityError,
    WrongModalityError,
)
from radfusion.limits import StudyBudget, StudyClock

_MAX_NAMES_IN_ERROR = 20


def preprocess_image(volume: Volume, geometry: ImageGeometry, clock: StudyClock | None = None) -> np.ndarray:
    """Volume -> (1, D, H, W) float32 in [0, 1] on the contract grid. ``clock``: the
    study's budget being spent (a fresh default StudyBudget when not given)."""
    if geometry.modalities and volume.modality and volume.modality not in geometry.modalities:
        raise WrongModalityError(f"modality {volume.modality} not accepted; model accepts {list(geometry.modalities)}")
    clock = clock or StudyBudget().start()
    vol = volume.canonical()
    factors = _zoom_factors(vol, geometry)
    clock.check_time("resampling")
    clock.check_voxels(resampled_voxels(vol.shape, factors))
    voxels = vol.voxels.astype(np.float32, copy=False)
    resampled = ndimage.zoom(voxels, factors, order=1, mode="nearest", grid_mode=True)
    low, high = geometry.window
    fitted = _crop_or_pad(resampled, geometry.target_shape, fill=low)
    windowed = ((np.clip(fitted, low, high) - low) / (high - low))[np.newaxis].astype(np.float32)
    _check_finite_image(windowed)
    return windowed


def resampled_voxels(shape: tuple[int, ...], factors: list[float]) -> int:
    """Voxels ndimage.zoom produces for ``shape`` and ``factors`` (it rounds each axis)."""
    return math.prod(max(1, round(n * f)) for n, f in zip(shape, factors, strict=True))


def _zoom_factors(vol: Volume, geometry: ImageGeometry) -> list[float]:
    """Resampling factors of a canonical volume to the contract spacing."""
    factors = [s / t for s, t in zip(vol.spacing, geometry.target_spacing, strict=True)]
    if any(not np.isfinite(f) or f <= 0 for f in factors):
        raise GeometryError("invalid voxel spacing")
    if vol.voxels.shape[0] == 1:
        # A lone slice has no extent along the slice axis to interpolate.
        factors[0] = 1.0
    if any(round(n * f) < 1 for n, f in zip(vol.voxels.shape, factors, strict=True)):
        raise GeometryError("the series spans less than one voxel of the model grid along an axis")
    return factors


def grid_to_patient(volume: Volume, geometry: ImageGeometry) -> np.ndarray:
    """4x4 affine: model-grid index (slice, row, col, 1) -> patient position (x, y, z, 1)
    in mm (DICOM LPS), the inverse of what preprocess_image does to the geometry, so
    a location found on the model grid (e.g. a saliency peak) can be shown on the
    source series. Follows scipy's grid_mode zoom (pixel edges aligned: source index
    = (out + 0.5) * n_in / n_out - 0.5) and _crop_or_pad's centred offsets."""
    vol = volume.canonical()
    scale, shift = np.ones(3), np.zeros(3)
    for axis, (n_in, factor, want) in enumerate(
        zip(vol.shape, _zoom_factors(vol, geometry), geometry.target_shape, strict=True)
    ):
        n_out = round(n_in * factor)  # the output length scipy's zoom computes
        ratio = n_in / n_out
        # Grid index g sits at resampled index g + offset (crop) or g - offset (pad).
        offset = (n_out - want) // 2 if n_out >= want else -((want - n_out) // 2)
        scale[axis] = ratio
        shift[axis] = (offset + 0.5) * ratio - 0.5
    index_to_canonical = np.eye(4)
    index_to_canonical[:3, :3] = np.diag(scale)
    index_to_canonical[:3, 3] = shift
    return vol.affine @ index_to_canonical


def _crop_or_pad(array: np.ndarray, shape: tuple[int, int, int], fill: float) -> np.ndarray:
    out = np.full(shape, fill, dtype=np.float32)
    src, dst = [], []
    for have, want in zip(array.shape, shape, strict=True):
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


def preprocess_genomics(values: Mapping[str, float], panel: GenePanel, impute: bool = False) -> np.ndarray:
    """Align feature -> value to the panel and z-score with the training statistics.

    Features the panel needs but the input lacks, and non-finite values, are errors that
    name the features (unless ``impute``: absent ones then take the training mean);
    extra features are ignored."""
    missing = [g for g in panel.features if g not in values]
    if missing and not impute:
        raise GenePanelError(f"{len(missing)} of {len(panel.features)} panel genes missing: {_names(missing)}")
    mean = np.asarray(panel.mean, dtype=np.float64)
    raw = np.array([_as_float(values[g]) if g in values else m for g, m in zip(panel.features, mean, strict=True)])
    bad = [g for g, v in zip(panel.features, raw, strict=True) if not np.isfinite(v)]
    if bad:
        raise InvalidValueError(f"{len(bad)} genes have values that are not finite numbers: {_names(bad)}")
    std = np.asarray(panel.std, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        z = ((raw - mean) / std).astype(np.float32)
    _check_finite(z, panel.features, "genomic values")
    return z


@dataclass
class OmicsInput:
    """All omics blocks concatenated in contract order (absent blocks are zeros) and
    the names of the blocks that were present."""

    values: np.ndarray
    present: list[str]


def preprocess_omics(values: Mapping[str, float], blocks: list[OmicsBlock]) -> OmicsInput:
    """A block is present when any of its features is given with a value (a table row
    with only NaN for a block, as a join leaves it, means the block is absent); a
    present block must be complete unless it allows imputation."""
    parts, present, problems, invalid = [], [], [], []
    for block in blocks:
        given = [f for f in block.features if f in values and not _is_missing(values[f])]
        if not given:
            parts.append(np.zeros(len(block.features), dtype=np.float32))
            continue
        supplied = {f: values[f] for f in given}
        try:
            parts.append(preprocess_genomics(supplied, block, impute=block.impute_missing))
        except GenePanelError as exc:
            problems.append(f"{block.name} block: {exc}")  # every block's problem in one answer
        except InvalidValueError as exc:
            invalid.append(f"{block.name} block: {exc}")
        present.append(block.name)
    if problems:
        raise GenePanelError("; ".join(problems))
    if invalid:
        raise InvalidValueError("; ".join(invalid))
    if not present:
        wanted = [f for block in blocks for f in block.features]
        raise GenePanelError(f"none of the model's {len(wanted)} omics features given (e.g. {_names(wanted)})")
    return OmicsInput(np.concatenate(parts).astype(np.float32), present)


def fit_gene_panel(rows: Mapping[str, np.ndarray] | object, features: list[str]) -> GenePanel:
    """Normalisation statistics from training rows (a DataFrame with ``features`` columns).
    Constant features get std 1 so they pass through centred instead of exploding."""
    matrix = np.asarray(rows[features], dtype=np.float64)  # type: ignore[index]
    mean = np.nanmean(matrix, axis=0)
    std = np.nanstd(matrix, axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    return GenePanel(features=list(features), mean=mean.tolist(), std=std.tolist())


def fit_omics_block(rows: object, name: str, features: list[str], impute_missing: bool = False) -> OmicsBlock:
    """A block's panel from the training rows that have the block (not all NaN)."""
    present = rows[features].notna().any(axis=1)  # type: ignore[index]
    panel = fit_gene_panel(rows[present], features)  # type: ignore[index]
    return OmicsBlock(features=panel.features, mean=panel.mean, std=panel.std, name=name, impute_missing=impute_missing)


def preprocess_clinical(values: Mapping[str, object], spec: ClinicalSpec) -> np.ndarray:
    """Numeric covariates z-scored, categorical ones one-hot over the training levels.
    Every covariate is required; an unknown level is an error naming the known ones."""
    missing = [c for c in spec.covariates if c not in values or _is_missing(values[c])]
    if missing:
        raise ClinicalInputError(f"clinical covariates missing: {', '.join(missing)}")
    out = []
    for name, (mean, std) in spec.numeric.items():
        value = _as_float(values[name])
        if not np.isfinite(value):
            raise ClinicalInputError(f"clinical covariate {name} is not a number")
        out.append((value - mean) / std)
    for name, levels in spec.categorical.items():
        level = str(values[name])
        if level not in levels:
            raise ClinicalInputError(f"clinical covariate {name}={level!r} is not one of {levels}")
        out += [float(level == known) for known in levels]
    with np.errstate(over="ignore", invalid="ignore"):
        covariates = np.asarray(out, dtype=np.float64).astype(np.float32)
    _check_finite(covariates, spec.features, "clinical covariates")
    return covariates


def fit_clinical_spec(
    rows: object, numeric: list[str], categorical: list[str], treatment: str | None = None
) -> ClinicalSpec:
    """Statistics and levels from the training rows (a DataFrame)."""
    stats = {}
    for name in numeric:
        column = np.asarray(rows[name], dtype=np.float64)  # type: ignore[index]
        std = float(np.nanstd(column))
        stats[name] = [float(np.nanmean(column)), std if std > 1e-8 else 1.0]
    levels = {name: sorted(str(v) for v in rows[name].dropna().unique()) for name in categorical}  # type: ignore[index]
    return ClinicalSpec(numeric=stats, categorical=levels, treatment=treatment)


@dataclass
class ModelInputs:
    """One case's ONNX inputs (no batch axis) and which modalities fed the model."""

    image: np.ndarray
    genomics: np.ndarray
    clinical: np.ndarray
    presence: np.ndarray
    modalities_used: list[str]

    def as_feed(self) -> dict[str, np.ndarray]:
        return {"image": self.image, "genomics": self.genomics, "clinical": self.clinical, "presence": self.presence}


def build_inputs(
    contract: ModelContract,
    image: np.ndarray | None,
    omics: OmicsInput | None,
    clinical: np.ndarray | None = None,
) -> ModelInputs:
    """Fill absent modalities with zeros and set the presence mask. A modality the model
    was not trained with is fed as absent even when given."""
    given = set(omics.present if omics is not None else [])
    if image is not None:
        given.add("image")
    if clinical is not None:
        given.add(CLINICAL)
    used = [m for m in contract.modalities if m in given and contract.trains(m)]
    if not used:
        raise NoModalityError(f"none of the model's modalities {contract.trained_modalities} was provided")
    for m in contract.modalities:
        if contract.trains(m) and m not in used and not contract.may_miss(m):
            raise NoModalityError(f"model requires {m}")
    image_shape = (1, *contract.image.target_shape)
    image_in = image if image is not None and "image" in used else np.zeros(image_shape, dtype=np.float32)
    if image_in.shape != image_shape:
        raise GeometryError(f"image tensor shape {image_in.shape} differs from contract {image_shape}")
    genomics_in = np.zeros(len(contract.genomics.features), dtype=np.float32)
    if omics is not None:
        offset = 0
        for block in contract.omics:
            width = len(block.features)
            if block.name in used:
                genomics_in[offset : offset + width] = omics.values[offset : offset + width]
            offset += width
    clinical_in = (
        clinical if clinical is not None and CLINICAL in used else np.zeros(contract.clinical_width, dtype=np.float32)
    )
    presence = np.array([m in used for m in contract.modalities], dtype=np.float32)
    inputs = ModelInputs(image_in.astype(np.float32), genomics_in, clinical_in.astype(np.float32), presence, used)
    _check_finite_image(inputs.image)
    _check_finite(inputs.genomics, contract.genomics.features, "genomic values")
    clinical_names = contract.clinical.features if contract.clinical else ["(no clinical block)"]
    _check_finite(inputs.clinical, clinical_names, "clinical covariates")
    return inputs


def _check_finite(values: np.ndarray, names: list[str], what: str) -> None:
    """InvalidValueError naming the features whose float32 value is NaN or inf."""
    finite = np.isfinite(values)
    if finite.all():
        return
    bad = [name for name, ok in zip(names, finite, strict=True) if not ok]
    raise InvalidValueError(
        f"{len(bad)} of {len(names)} {what} are not finite in float32 (beyond ±3.4e38 once normalised): {_names(bad)}"
    )


def _check_finite_image(image: np.ndarray) -> None:
    if not np.all(np.isfinite(image)):
        raise InvalidValueError("image holds values that are not finite in float32")


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    try:
        return bool(np.isnan(np.asarray(value)))  # TypeError: not a number (a string, a dict, ...)
    except TypeError:
        return False


def _as_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:  # an integer beyond float64 (10**400): not a usable number
        return float("inf")
    except (TypeError, ValueError):
        return float("nan")


def _names(genes: list[str]) -> str:
    shown = ", ".join(genes[:_MAX_NAMES_IN_ERROR])
    more = len(genes) - _MAX_NAMES_IN_ERROR
    return shown + (f" and {more} more" if more > 0 else "")
