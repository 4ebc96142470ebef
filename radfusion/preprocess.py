"""The ONE deterministic preprocessing definition, shared by training and serving.

Image: canonical orientation -> resample to the contract spacing -> centre crop/pad
to the contract shape -> HU window to [0, 1]. Omics: per block, align to the block's
panel -> z-score with the training statistics. Clinical: numeric covariates z-scored,
categorical ones one-hot. All return float32 arrays shaped as the ONNX inputs expect
(without the batch axis).

The missing-data policy is here too, fitted on the training split and kept in the
contract, so training, export, the service, the scorer and the listener apply it alike:
a missing value takes its training median (numeric covariates missing in training
also get an indicator column), a categorical value missing, unseen or too rare to learn
becomes "other", and a block with more missing than its cap counts as absent (its
presence bit is 0) instead of being invented. What was imputed is reported per case
(ModelInputs.imputation).

Numbers are checked where they become float32: a value finite in float64 can be inf
once z-scored and cast (a genomic value of 1e39), so every cast is followed by a
finiteness check that names the features (InvalidValueError), and build_inputs checks
the model's inputs once more. Resampling is refused before it runs when the volume it
would produce is over the study's budget.

Resampling is linear interpolation with voxel edges aligned (scipy's zoom, grid_mode).
Where an axis shrinks by more than half (a 0.7 mm CT slice to an 8 mm model grid: a
factor of 0.09), sampling every eleventh pixel would alias fine structure into the
model's input, so the axis is first reduced by the mean of blocks of k = floor(1 /
factor) voxels (radfusion.dicom.blocks; the volume reader does it for the in-plane axes
as it decodes each slice when it is given the grid) and the reduced volume is then
interpolated at the very points the zoom would sample: the model grid and
grid_to_patient are the same either way, only the values are anti-aliased. Axes shrunk
by at most half (the toy cohorts', 0.6-1.3) go through the zoom alone, exactly as before."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage

from radfusion.contract import (
    CLINICAL,
    DEFAULT_MAX_IMPUTED,
    OTHER_LEVEL,
    ClinicalSpec,
    GenePanel,
    ImageGeometry,
    ModelContract,
    OmicsBlock,
)
from radfusion.dicom.blocks import block_mean, block_size, zoom_factors
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
# Categorical levels seen fewer times than this in training are merged into "other":
# a handful of cases cannot teach a level its own weight.
DEFAULT_MIN_LEVEL_COUNT = 5


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
    resampled = resample(voxels, factors, vol.shape, vol.blocks)
    low, high = geometry.window
    fitted = _crop_or_pad(resampled, geometry.target_shape, fill=low)
    windowed = ((np.clip(fitted, low, high) - low) / (high - low))[np.newaxis].astype(np.float32)
    _check_finite_image(windowed)
    return windowed


def resample(
    voxels: np.ndarray,
    factors: list[float],
    shape: tuple[int, ...] | None = None,
    reduced: tuple[int, ...] | None = None,
) -> np.ndarray:
    """``voxels`` (float32) resampled by ``factors``: scipy's linear zoom with voxel
    edges aligned, on shape round(n * factor) per axis; axes shrunk by a factor below
    ANTIALIAS_BELOW are block-averaged first (radfusion.dicom.blocks). ``reduced``: the
    blocks already averaged along each axis (a Volume's ``blocks``: the reader's), of a
    volume whose full-resolution ``shape`` it is."""
    shape = tuple(voxels.shape) if shape is None else shape
    reduced = (1,) * voxels.ndim if reduced is None else reduced
    blocks = [block_size(f) for f in factors]
    if any(done not in (1, k) for done, k in zip(reduced, blocks, strict=True)):
        raise ValueError(f"voxels averaged in blocks of {reduced}; this grid needs {tuple(blocks)}")
    if all(k == 1 for k in blocks):
        return ndimage.zoom(voxels, factors, order=1, mode="nearest", grid_mode=True)
    out_shape = tuple(max(1, round(n * f)) for n, f in zip(shape, factors, strict=True))
    # The largest reduction first (the next works on a k times smaller array), the
    # contiguous last axis after the others (its blocks are strided reads).
    for axis in sorted(range(voxels.ndim), key=lambda a: (-blocks[a], a == voxels.ndim - 1)):
        if blocks[axis] > 1 and reduced[axis] == 1:
            voxels = block_mean(voxels, axis, blocks[axis])
    # The zoom samples output index o at input index (o + 0.5) * n / n_out - 0.5; block
    # j of a reduced axis is centred on input index j * k + (k - 1) / 2.
    step = np.array([n / (m * k) for n, m, k in zip(shape, out_shape, blocks, strict=True)])
    return ndimage.affine_transform(
        voxels, step, offset=0.5 * step - 0.5, output_shape=out_shape, order=1, mode="nearest"
    )


def resampled_voxels(shape: tuple[int, ...], factors: list[float]) -> int:
    """Voxels ndimage.zoom produces for ``shape`` and ``factors`` (it rounds each axis)."""
    return math.prod(max(1, round(n * f)) for n, f in zip(shape, factors, strict=True))


def _zoom_factors(vol: Volume, geometry: ImageGeometry) -> list[float]:
    """Resampling factors of a canonical volume to the contract spacing."""
    factors = [s / t for s, t in zip(vol.spacing, geometry.target_spacing, strict=True)]
    if any(not np.isfinite(f) or f <= 0 for f in factors):
        raise GeometryError("invalid voxel spacing")
    # A lone slice has no extent along the slice axis to interpolate (factor 1).
    factors = zoom_factors(vol.shape, vol.spacing, geometry.target_spacing)
    if any(round(n * f) < 1 for n, f in zip(vol.shape, factors, strict=True)):
        raise GeometryError("the series spans less than one voxel of the model grid along an axis")
    return factors


def grid_to_patient(volume: Volume, geometry: ImageGeometry) -> np.ndarray:
    """4x4 affine: model-grid index (slice, row, col, 1) -> patient position (x, y, z, 1)
    in mm (DICOM LPS), the inverse of what preprocess_image does to the geometry, so
    a location found on the model grid (e.g. a saliency peak) can be shown on the
    source series. Follows scipy's grid_mode zoom (pixel edges aligned: source index
    = (out + 0.5) * n_in / n_out - 0.5), which the anti-aliased path samples at too, and
    _crop_or_pad's centred offsets."""
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


def preprocess_genomics(values: Mapping[str, float], panel: GenePanel) -> np.ndarray:
    """Align feature -> value to a complete panel and z-score with the training
    statistics. Features the panel needs but the input lacks, and values that are not
    finite numbers, are errors that name the features; extra features are ignored.
    (Blocks with a missing-data policy go through preprocess_omics.)"""
    missing = [g for g in panel.features if g not in values]
    if missing:
        raise GenePanelError(f"{len(missing)} of {len(panel.features)} panel genes missing: {_names(missing)}")
    return _zscore({g: values[g] for g in panel.features}, panel)


def _zscore(values: Mapping[str, object], panel: GenePanel) -> np.ndarray:
    raw = np.array([_as_float(values[g]) for g in panel.features])
    bad = [g for g, v in zip(panel.features, raw, strict=True) if not np.isfinite(v)]
    if bad:
        raise InvalidValueError(f"{len(bad)} genes have values that are not finite numbers: {_names(bad)}")
    mean = np.asarray(panel.mean, dtype=np.float64)
    std = np.asarray(panel.std, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        z = ((raw - mean) / std).astype(np.float32)
    _check_finite(z, panel.features, "genomic values")
    return z


@dataclass(frozen=True)
class BlockFill:
    """What one given input block lacked: ``imputed`` of its ``of`` features (or
    covariates) took training values; ``absent``: more were missing than the block's
    cap allows, so it was fed as absent; ``unseen_levels``: categorical covariates
    whose value the model never learned (fed as the "other" level)."""

    imputed: int
    of: int
    absent: bool = False
    unseen_levels: tuple[str, ...] = ()

    def answer(self) -> dict:
        out: dict = {"imputed": self.imputed, "of": self.of, "treated_as_absent": self.absent}
        if self.unseen_levels:
            out["unseen_levels"] = list(self.unseen_levels)
        return out


def _over_cap(n_missing: int, n_total: int, cap: float) -> bool:
    return n_missing / n_total > cap + 1e-12


@dataclass
class OmicsInput:
    """All omics blocks concatenated in contract order (absent blocks are zeros), the
    names of the blocks that were present, and what each given block lacked."""

    values: np.ndarray
    present: list[str]
    filled: dict[str, BlockFill] = field(default_factory=dict)


def preprocess_omics(values: Mapping[str, float], blocks: list[OmicsBlock]) -> OmicsInput:
    """The missing-data policy for omics. A block is given when any of its features
    has a value (a table row with only NaN for a block, as a join leaves it, means the
    block is absent). In a given block, missing features (absent or NaN) take the
    training median, up to the block's ``max_imputed`` share; beyond it the block
    counts as absent. Values that are there must be finite numbers."""
    parts, present, filled, invalid = [], [], {}, []
    for block in blocks:
        given = [f for f in block.features if f in values and not _is_missing(values[f])]
        if not given:
            parts.append(np.zeros(len(block.features), dtype=np.float32))
            continue
        n_missing = len(block.features) - len(given)
        if _over_cap(n_missing, len(block.features), block.max_imputed):
            filled[block.name] = BlockFill(n_missing, len(block.features), absent=True)
            parts.append(np.zeros(len(block.features), dtype=np.float32))
            continue
        supplied = dict(zip(block.features, block.fill_values, strict=True))
        supplied.update({f: values[f] for f in given})
        try:
            parts.append(_zscore(supplied, block))
        except InvalidValueError as exc:
            invalid.append(f"{block.name} block: {exc}")  # every block's problem in one answer
            continue
        filled[block.name] = BlockFill(n_missing, len(block.features))
        present.append(block.name)
    if invalid:
        raise InvalidValueError("; ".join(invalid))
    if not present and not filled and any(not _is_missing(v) for v in values.values()):
        # Values, none of them the model's: a naming mismatch (Ensembl ids for symbols),
        # not a profile the policy should fill in.
        wanted = [f for block in blocks for f in block.features]
        raise GenePanelError(f"none of the model's {len(wanted)} omics features given (e.g. {_names(wanted)})")
    return OmicsInput(np.concatenate(parts).astype(np.float32), present, filled)


def fit_gene_panel(rows: Mapping[str, np.ndarray] | object, features: list[str]) -> GenePanel:
    """Normalisation statistics from training rows (a DataFrame with ``features`` columns).
    Constant features get std 1 so they pass through centred instead of exploding."""
    matrix = np.asarray(rows[features], dtype=np.float64)  # type: ignore[index]
    mean, std = _nan_statistics(matrix)
    return GenePanel(features=list(features), mean=mean.tolist(), std=std.tolist())


def _nan_statistics(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std over the finite values (0 and 1 for a column with none:
    it is then always imputed, at z = 0); constant columns get std 1."""
    finite = np.where(np.isfinite(matrix), matrix, np.nan)
    observed = ~np.isnan(finite).all(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: handled below
        mean, std = np.nanmean(finite, axis=0), np.nanstd(finite, axis=0)
    return np.where(observed, mean, 0.0), np.where(observed & (std > 1e-8), std, 1.0)


def fit_omics_block(
    rows: object, name: str, features: list[str], max_imputed: float = DEFAULT_MAX_IMPUTED
) -> OmicsBlock:
    """A block's panel and fill values (training medians) from the training rows that
    have the block (not all NaN)."""
    present = rows[features].notna().any(axis=1)  # type: ignore[index]
    matrix = np.asarray(rows[present][features], dtype=np.float64)  # type: ignore[index]
    mean, std = _nan_statistics(matrix)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column with no value: its mean
        median = np.nanmedian(np.where(np.isfinite(matrix), matrix, np.nan), axis=0)
    fill = np.where(np.isfinite(median), median, mean)
    return OmicsBlock(
        features=list(features),
        mean=mean.tolist(),
        std=std.tolist(),
        name=name,
        fill=fill.tolist(),
        max_imputed=max_imputed,
    )


@dataclass
class ClinicalInput:
    """The encoded covariates (None: the clinical block counts as absent) and what the
    case lacked."""

    values: np.ndarray | None
    filled: BlockFill


def preprocess_clinical(values: Mapping[str, object], spec: ClinicalSpec) -> ClinicalInput:
    """The missing-data policy for clinical covariates (ClinicalSpec documents it):
    numeric ones z-scored (a missing one takes its training median, with its indicator
    column set where the spec has one), categorical ones one-hot over the training
    levels (missing, unseen and merged values as OTHER_LEVEL where the levels hold it).
    A covariate the spec cannot impute (the treatment, or any of an older model) is an
    error naming it."""
    missing = [c for c in spec.covariates if c not in values or _is_missing(values[c])]
    required = [c for c in missing if not _imputable(c, spec)]
    if required:
        raise ClinicalInputError(f"clinical covariates missing: {', '.join(required)}")
    if spec.covariates and _over_cap(len(missing), len(spec.covariates), spec.max_imputed):
        return ClinicalInput(None, BlockFill(len(missing), len(spec.covariates), absent=True))
    out = []
    for name, (mean, std) in spec.numeric.items():
        value = spec.fill[name] if name in missing else _as_float(values[name])
        if not np.isfinite(value):
            raise ClinicalInputError(f"clinical covariate {name} is not a number")
        out.append((value - mean) / std)
    out += [float(name in missing) for name in spec.indicators]
    unseen = []
    for name, levels in spec.categorical.items():
        level = OTHER_LEVEL if name in missing else _level(values[name], name, spec)
        if level not in levels:
            if OTHER_LEVEL not in levels:
                raise ClinicalInputError(f"clinical covariate {name}={level!r} is not one of {levels}")
            unseen.append(name)
            level = OTHER_LEVEL
        out += [float(level == known) for known in levels]
    with np.errstate(over="ignore", invalid="ignore"):
        covariates = np.asarray(out, dtype=np.float64).astype(np.float32)
    _check_finite(covariates, spec.features, "clinical covariates")
    return ClinicalInput(covariates, BlockFill(len(missing), len(spec.covariates), unseen_levels=tuple(unseen)))


def _numeric_column(column: pd.Series, name: str) -> np.ndarray:
    """A numeric covariate's training values. An empty cell is missing; a cell that is
    not a finite number ("<5", "inf") is an error (the policy imputes what is missing,
    not what was mistyped), counted, never quoted: a value in the wrong column can
    identify a patient."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    wrong = int((column.notna().to_numpy() & ~np.isfinite(values)).sum())
    if wrong:
        raise ClinicalInputError(
            f"clinical covariate {name}: {wrong} training value(s) are not finite numbers; "
            "leave a cell empty when the value is unknown"
        )
    return values


def _imputable(name: str, spec: ClinicalSpec) -> bool:
    if name == spec.treatment:
        return False
    if name in spec.numeric:
        return name in spec.fill
    return OTHER_LEVEL in spec.categorical[name]


def _level(value: object, name: str, spec: ClinicalSpec) -> str:
    level = _level_text(value)
    return OTHER_LEVEL if level in spec.merged.get(name, ()) else level


def _level_text(value: object) -> str:
    """A categorical value as text: 2 and 2.0 (a column with a gap is read as float)
    are one level, "2"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def fit_clinical_spec(
    rows: object,
    numeric: list[str],
    categorical: list[str],
    treatment: str | None = None,
    min_level_count: int = DEFAULT_MIN_LEVEL_COUNT,
    max_imputed: float = DEFAULT_MAX_IMPUTED,
) -> ClinicalSpec:
    """Statistics, fill values, indicators and levels from the training rows (a
    DataFrame). Levels seen fewer than ``min_level_count`` times are merged into
    OTHER_LEVEL, which every covariate but the treatment has (for unseen and missing
    values). A covariate with no value at all in the training rows is an error."""
    stats, fill, indicators = {}, {}, []
    for name in [*numeric, *categorical]:
        if rows[name].notna().sum() == 0:  # type: ignore[index]
            raise ClinicalInputError(f"clinical covariate {name} has no value in the training rows")
    for name in numeric:
        column = _numeric_column(rows[name], name)  # type: ignore[index]
        observed = column[np.isfinite(column)]
        std = float(np.std(observed))
        stats[name] = [float(np.mean(observed)), std if std > 1e-8 else 1.0]
        fill[name] = float(np.median(observed))
        if len(observed) < len(column):
            indicators.append(name)
    levels, merged = {}, {}
    for name in categorical:
        counts = rows[name].dropna().map(_level_text).value_counts()  # type: ignore[index]
        if name == treatment:
            levels[name] = sorted(counts.index)
            continue
        rare = sorted(level for level, n in counts.items() if n < min_level_count and level != OTHER_LEVEL)
        if rare:
            merged[name] = rare
        levels[name] = sorted({*(level for level in counts.index if level not in rare), OTHER_LEVEL})
    return ClinicalSpec(
        numeric=stats,
        categorical=levels,
        treatment=treatment,
        fill=fill,
        indicators=indicators,
        merged=merged,
        max_imputed=max_imputed,
    )


@dataclass
class ModelInputs:
    """One case's ONNX inputs (no batch axis) and which modalities fed the model."""

    image: np.ndarray
    genomics: np.ndarray
    clinical: np.ndarray
    presence: np.ndarray
    modalities_used: list[str]
    # What each given table block lacked (radfusion.preprocess.BlockFill), by block.
    filled: dict[str, BlockFill] = field(default_factory=dict)

    def imputation(self) -> dict:
        """The answer's account of the missing-data policy: per given block, features
        imputed of its total and whether it fell back to absent; and the total."""
        return {
            "blocks": {name: fill.answer() for name, fill in self.filled.items()},
            "imputed_features": sum(fill.imputed for fill in self.filled.values() if not fill.absent),
            "absent_blocks": [name for name, fill in self.filled.items() if fill.absent],
        }

    def as_feed(self) -> dict[str, np.ndarray]:
        return {"image": self.image, "genomics": self.genomics, "clinical": self.clinical, "presence": self.presence}


def build_inputs(
    contract: ModelContract,
    image: np.ndarray | None,
    omics: OmicsInput | None,
    clinical: ClinicalInput | None = None,
) -> ModelInputs:
    """Fill absent modalities with zeros and set the presence mask. A modality the model
    was not trained with is fed as absent even when given."""
    given = set(omics.present if omics is not None else [])
    if image is not None:
        given.add("image")
    if clinical is not None and clinical.values is not None:
        given.add(CLINICAL)
    used = [m for m in contract.modalities if m in given and contract.trains(m)]
    over_cap = {
        **(omics.filled if omics is not None else {}),
        **({CLINICAL: clinical.filled} if clinical is not None else {}),
    }
    why = "".join(
        f"; {name} was given with {fill.imputed} of {fill.of} missing, more than the model imputes"
        for name, fill in over_cap.items()
        if fill.absent and contract.trains(name)
    )
    if not used:
        raise NoModalityError(f"none of the model's modalities {contract.trained_modalities} was provided{why}")
    for m in contract.modalities:
        if contract.trains(m) and m not in used and not contract.may_miss(m):
            raise NoModalityError(f"model requires {m}{why}")
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
        clinical.values
        if clinical is not None and clinical.values is not None and CLINICAL in used
        else np.zeros(contract.clinical_width, dtype=np.float32)
    )
    presence = np.array([m in used for m in contract.modalities], dtype=np.float32)
    filled = {name: fill for name, fill in (omics.filled if omics is not None else {}).items() if contract.trains(name)}
    if clinical is not None and contract.trains(CLINICAL):
        filled[CLINICAL] = clinical.filled
    inputs = ModelInputs(
        image_in.astype(np.float32), genomics_in, clinical_in.astype(np.float32), presence, used, filled
    )
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
    """None or a NaN number. Anything else is a value, refused later if it is not a number."""
    if value is None:
        return True
    array = np.asarray(value)
    if array.ndim != 0:  # a list: not one value, and not a missing one
        return False
    try:
        return bool(np.isnan(array))
    except TypeError:  # not a number (a string, a dict, ...)
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
