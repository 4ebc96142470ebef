"""Why did the model say that? Gene attributions and an image saliency summary for one
case, computed by perturbing the ONNX model's inputs (numpy + ONNX Runtime only, so
serving still needs no torch; the training side has captum IG and GradCAM).

- Genes: each omics feature of a present block is occluded to its training mean
  (z = 0, the value an imputed feature takes) one at a time; its attribution is how
  much the score drops. For a model linear in a feature this is exactly weight x z.
- Image: a 3D window slides over the model grid (half-window stride); inside it, what
  is brighter than the body's soft-tissue level gets CONTRAST_GAIN times its contrast
  above it (a lesion made more conspicuous; air, fat, tissue and bone stay), and the
  window's effect is the rise in score (ImageOcclusion, image_saliency). A second
  pass slides half-size windows over the strongest window and a quarter window
  around it (refine_grid), to place a lesion smaller than the first windows within
  them. The training-side evidence report runs this very algorithm through a torch
  model (radfusion.training.evidence.saliency): a lesion the model responds to only above some size
  or contrast moves the score when enhanced, not when removed, and filling windows
  with the image mean paints dark holes the model reads (peak in the planted lesion
  for 40 held-out studies of two trained evidence-fixture models: mean fill 4 and 19,
  enhancement 33 and 39, same rows). The peak is the strength-weighted centre of the
  strongest windows (strength: the rise; the size of the change if nothing rises),
  mapped to patient coordinates (mm, DICOM LPS) through the study's grid-to-patient
  affine (radfusion.preprocess.grid_to_patient).

The score is the log-odds of the target label after the contract's temperature
(the positive label if the contract names one, else the predicted label), so
attributions are in the units the calibrated probability moves in.

Cost is bounded and known before running: 1 + (occlusion windows, at most
``max_windows``) + (second-pass windows, at most ``refine_windows``) + (features, at
most ``max_features``) model rows, run in batches of ``batch_size``. When a case has
more features than the cap, those furthest from the training mean (largest |z|) are
kept: a feature at z = 0 has attribution 0 by construction. Memory per batch is
batch_size copies of one case's inputs."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from radfusion.contract import ModelContract
from radfusion.preprocess import ModelInputs

LogitsFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]

GENE_METHOD = "occlusion of each feature to its training mean (z = 0)"
IMAGE_METHOD = "3D occlusion raising the contrast above soft tissue, half-window stride, on the model grid"
REFINE_METHOD = "; the peak from half-size windows around the strongest window"

# The image perturbation (shared with radfusion.training.evidence.saliency), in window-scaled
# intensities: above BODY_THRESHOLD is body tissue (fat and air below), whose median is
# the soft-tissue level; at or above BONE_LEVEL the window is saturated by bone.
BODY_THRESHOLD = 0.2
BONE_LEVEL = 0.98
# Measured with radfusion.training.evidence.saliency on the evidence fixture's 40 held-out studies
# (saliency peak in the planted lesion): removal 27, gain 2: 31, gain 3: 33, gain 4: 33,
# at the same cost.
CONTRAST_GAIN = 3.0
# The coarsest second pass: three half-size windows per axis, which still tile the
# strongest window and the quarter window around it.
REFINE_MIN_WINDOWS = 27
SCORE = "log-odds of the target label after temperature scaling"


@dataclass
class ExplainSettings:
    top_genes: int = 10
    max_features: int = 320  # the demo panel (300 genes + 5 mutation flags) fits whole
    max_windows: int = 400  # a 32x48x48 grid gets 7x7x7 windows of 8x12x12 voxels
    batch_size: int = 32
    # The second pass around the strongest window (refine_grid): 5x5x5 half-size windows.
    refine_windows: int = 125

    def __post_init__(self) -> None:
        if min(self.top_genes, self.max_features, self.max_windows, self.batch_size) < 1:
            raise ValueError("explain settings must all be at least 1")
        check_refine_windows(self.refine_windows)

    @property
    def max_rows(self) -> int:
        return 1 + self.max_features + self.max_windows + self.refine_windows


def check_refine_windows(refine_windows: int) -> None:
    if refine_windows != 0 and refine_windows < REFINE_MIN_WINDOWS:
        raise ValueError(f"refine_windows must be 0 (no second pass) or at least {REFINE_MIN_WINDOWS}")


@dataclass
class OcclusionGrid:
    """Occlusion windows on the model grid: their size, stride and start corners."""

    window: tuple[int, ...]
    stride: tuple[int, ...]
    starts: list[tuple[int, ...]] = field(repr=False)

    def centres(self) -> np.ndarray:
        """Window centres in grid index coordinates (continuous), (n, 3)."""
        return np.asarray(self.starts, dtype=float) + (np.asarray(self.window, dtype=float) - 1) / 2


def _axis_starts(size: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:  # the last window ends flush with the grid
        starts.append(size - window)
    return starts


def occlusion_grid(shape: tuple[int, ...], max_windows: int) -> OcclusionGrid:
    """The finest grid of half-overlapping windows that needs at most ``max_windows``:
    the same number of steps per axis, so windows cover the same share of each axis
    (the contract grid is already in mm-proportioned voxels)."""
    best = None
    for steps in range(1, max(shape) + 1):
        stride = tuple(max(1, math.ceil(n / steps)) for n in shape)
        window = tuple(min(n, 2 * s) for n, s in zip(shape, stride, strict=True))
        per_axis = [_axis_starts(n, w, s) for n, w, s in zip(shape, window, stride, strict=True)]
        if math.prod(len(a) for a in per_axis) > max_windows:
            break
        best = OcclusionGrid(window, stride, list(itertools.product(*per_axis)))
    assert best is not None  # one step (one window = the whole grid) always fits
    return best


def refine_grid(grid: OcclusionGrid, effects: np.ndarray, shape: tuple[int, ...], max_windows: int) -> OcclusionGrid:
    """The second, finer pass: half-size windows at half their size apart over the
    strongest window of ``grid`` and a quarter window beyond each side of it (5 per
    axis), the stride widened where that needs more than ``max_windows``. A window
    as large as a lesion only says which window holds it; the smaller ones say
    where in it."""
    window = np.asarray(grid.window)
    best = np.asarray(grid.starts[int(np.argmax(_strength(effects)))])
    margin = -(-window // 4)  # a quarter window, at least one voxel
    low = np.clip(best - margin, 0, shape)
    high = np.clip(best + window + margin, 0, shape)
    fine = np.maximum(window // 2, 1)
    stride = np.maximum(fine // 2, 1)
    widest = np.maximum(high - low - fine, 1)  # two windows per axis, flush with the region
    while True:
        per_axis = [
            [int(lo) + a for a in _axis_starts(int(hi - lo), int(w), int(st))]
            for lo, hi, w, st in zip(low, high, fine, stride, strict=True)
        ]
        if math.prod(len(a) for a in per_axis) <= max_windows or np.all(stride >= widest):
            break
        stride = np.minimum(2 * stride, widest)
    return OcclusionGrid(
        tuple(int(w) for w in fine),
        tuple(int(st) for st in stride),
        [tuple(int(v) for v in start) for start in itertools.product(*per_axis)],
    )


def target_label(contract: ModelContract, logits: np.ndarray) -> int:
    if contract.positive_label in contract.labels:
        return contract.labels.index(contract.positive_label)
    return int(np.argmax(logits))


def log_odds(logits: np.ndarray, target: int = -1, temperature: float = 1.0) -> np.ndarray:
    """log p_target / (1 - p_target) of softmax(logits / T), per row of (rows, labels)
    logits; ``target`` -1 is the last (positive) label. The one log-odds of radfusion:
    the explanation's score, the treatment ranking's (fed log-probabilities) and the
    evidence report's (torch callers convert; training.evidence.cases.log_odds_torch is
    this formula for callers that need its gradient). For two labels it is
    (z_target - z_other) / T exactly."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    target = target % z.shape[1]
    others = np.delete(z, target, axis=1)
    top = others.max(axis=1, keepdims=True)
    rest = top[:, 0] + np.log(np.exp(others - top).sum(axis=1))
    return z[:, target] - rest


def tissue_level(image: np.ndarray) -> float:
    """The body's soft-tissue level: the median of what is brighter than fat."""
    body = image[image > BODY_THRESHOLD]
    return float(np.median(body)) if body.size else float(image.mean())


def enhanced_image(image: np.ndarray, gain: float = CONTRAST_GAIN, tissue: float | None = None) -> np.ndarray:
    """The image with every voxel brighter than soft tissue (``tissue``, else the
    image's tissue_level) at ``gain`` times its contrast above it; bone stays, and an
    enhanced finding stops just below the bone level so that it cannot turn into bone.
    The training-side saliency uses this very function."""
    tissue = tissue_level(image) if tissue is None else tissue
    raised = np.minimum(tissue + gain * (image - tissue), BONE_LEVEL - 1e-3)
    return np.where((image > tissue) & (image < BONE_LEVEL), raised, image).astype(image.dtype)


class ImageOcclusion:
    """The image half of an explanation, the one occlusion saliency algorithm of
    radfusion (the service's explain and the evidence report both run it): windows
    of the model grid (``occlusion_grid``), each in turn replaced by the enhanced
    image (``enhanced_image``); a window's effect is the rise in score it causes and
    the peak is ``peak_voxel`` of those effects."""

    def __init__(self, image: np.ndarray, max_windows: int, refine_windows: int = 0):
        check_refine_windows(refine_windows)
        self.grid = occlusion_grid(tuple(image.shape[1:]), max_windows)
        self.enhanced = enhanced_image(image)
        self.refine_windows = refine_windows

    def __len__(self) -> int:
        return len(self.grid.starts)

    def perturb(self, image: np.ndarray, window: int, grid: OcclusionGrid | None = None) -> None:
        """Enhance ``window`` of ``grid`` (the first pass's by default) of one (1, D, H, W)
        image row in place."""
        grid = grid or self.grid
        region = tuple(slice(s, s + w) for s, w in zip(grid.starts[window], grid.window, strict=True))
        index: tuple[int | slice, ...] = (0, *region)
        image[index] = self.enhanced[index]

    def refined(self, effects: np.ndarray) -> OcclusionGrid | None:
        """The second pass's windows given the first pass's effects (None: no second pass)."""
        if not self.refine_windows:
            return None
        return refine_grid(self.grid, effects, tuple(self.enhanced.shape[1:]), self.refine_windows)

    def peak(self, effects: np.ndarray, fine: OcclusionGrid | None, fine_effects: np.ndarray | None) -> np.ndarray:
        """The second pass's peak when it found the strength the first pass found (a
        rise, or else a change), else the first pass's: a model that reads the lesion
        only whole gives the half-size windows nothing to say."""
        if fine is not None and fine_effects is not None:
            rises = bool(np.clip(effects, 0.0, None).max(initial=0.0) > 0)
            strength = np.clip(fine_effects, 0.0, None) if rises else np.abs(fine_effects)
            if np.all(np.isfinite(strength)) and strength.max(initial=0.0) > 0:
                return _weighted_peak(fine, strength, local=False)
        return peak_voxel(self.grid, effects)

    def voxel_map(self, effects: np.ndarray) -> np.ndarray:
        """(D, H, W): the mean effect of the windows covering each voxel, for drawing."""
        total = np.zeros(self.enhanced.shape[1:])
        count = np.zeros_like(total)
        for start, effect in zip(self.grid.starts, effects, strict=True):
            region = tuple(slice(s, s + w) for s, w in zip(start, self.grid.window, strict=True))
            total[region] += effect
            count[region] += 1
        return (total / np.maximum(count, 1)).astype(np.float32)


@dataclass
class ImageSaliency:
    """Where in the image the score comes from, on the model grid."""

    grid: OcclusionGrid
    effects: np.ndarray  # the rise in score when each window is enhanced
    peak: np.ndarray  # grid index (continuous) of the peak: peak_voxel of the finest pass
    voxel_map: np.ndarray  # (D, H, W) mean effect per voxel, first pass
    fine: OcclusionGrid | None = None  # the second pass around the strongest window
    fine_effects: np.ndarray | None = None


def occlusion_logits(
    logits_fn: LogitsFn,
    case: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    plan: ImageOcclusion,
    grid: OcclusionGrid,
    batch_size: int,
    with_case: bool = False,
) -> np.ndarray:
    """The logits of one case (inputs without a batch axis) with each window of ``grid``
    enhanced in turn, preceded by the case itself when ``with_case``; in batches."""
    offset = int(with_case)
    n_rows = offset + len(grid.starts)
    logits = []
    for first in range(0, n_rows, batch_size):
        rows = range(first, min(first + batch_size, n_rows))
        batch = [np.repeat(x[np.newaxis], len(rows), axis=0) for x in case]
        for i, row in enumerate(rows):
            if row >= offset:
                plan.perturb(batch[0][i], row - offset, grid)
        logits.append(np.asarray(logits_fn(*batch)))
    return np.concatenate(logits)


def image_saliency(
    logits_fn: LogitsFn,
    image: np.ndarray,
    genomics: np.ndarray,
    clinical: np.ndarray,
    presence: np.ndarray,
    target: int = -1,
    temperature: float = 1.0,
    max_windows: int = ExplainSettings.max_windows,
    batch_size: int = ExplainSettings.batch_size,
    refine_windows: int = ExplainSettings.refine_windows,
) -> ImageSaliency:
    """The image occlusion alone for one case (inputs without a batch axis), through
    any model call: numpy in, numpy out (an ONNX Runtime session, a torch module
    wrapped to numpy). ``target``: the label whose log-odds is the score (-1: the
    last, positive one)."""
    plan = ImageOcclusion(image, max_windows, refine_windows)
    case = (image, genomics, clinical, presence)
    scores = log_odds(
        occlusion_logits(logits_fn, case, plan, plan.grid, batch_size, with_case=True), target, temperature
    )
    effects = scores[1:] - scores[0]
    fine = plan.refined(effects)
    fine_effects = None
    if fine is not None:
        fine_effects = (
            log_odds(occlusion_logits(logits_fn, case, plan, fine, batch_size), target, temperature) - scores[0]
        )
    return ImageSaliency(
        plan.grid, effects, plan.peak(effects, fine, fine_effects), plan.voxel_map(effects), fine, fine_effects
    )


def case_image_saliency(
    logits_fn: LogitsFn, contract: ModelContract, inputs: ModelInputs, settings: ExplainSettings | None = None
) -> ImageSaliency | None:
    """``image_saliency`` of one prepared case with explain_case's score (the contract's
    target label and temperature), full voxel map included; None when the case was
    scored without an image. A contract without a positive label costs one more row:
    the target is the label the unperturbed case predicts."""
    if "image" not in inputs.modalities_used:
        return None
    settings = settings or ExplainSettings()
    case = (inputs.image, inputs.genomics, inputs.clinical, inputs.presence)
    if contract.positive_label in contract.labels:
        target = contract.labels.index(contract.positive_label)
    else:
        target = target_label(contract, np.asarray(logits_fn(*(x[np.newaxis] for x in case)))[0])
    return image_saliency(
        logits_fn,
        *case,
        target,
        contract.temperature,
        settings.max_windows,
        settings.batch_size,
        settings.refine_windows,
    )


class CaseExplainer:
    """The perturbation plan for one case, kept apart from running the model, so the
    rows can go through any model call (a local OnnxModel, a model service)."""

    def __init__(
        self,
        contract: ModelContract,
        inputs: ModelInputs,
        settings: ExplainSettings | None = None,
        grid_affine: np.ndarray | None = None,
    ):
        self.contract = contract
        self.inputs = inputs
        self.settings = settings or ExplainSettings()
        self.grid_affine = grid_affine
        self.features = self._features_to_occlude()
        self.occlusion = (
            ImageOcclusion(inputs.image, self.settings.max_windows, self.settings.refine_windows)
            if self.image_used
            else None
        )
        self.grid = self.occlusion.grid if self.occlusion is not None else None

    # ------------------------------------------------------------------ plan

    @property
    def image_used(self) -> bool:
        return "image" in self.inputs.modalities_used

    def _present_feature_indices(self) -> list[int]:
        indices: list[int] = []
        offset = 0
        for block in self.contract.omics:
            if block.name in self.inputs.modalities_used:
                indices += range(offset, offset + len(block.features))
            offset += len(block.features)
        return indices

    def _features_to_occlude(self) -> np.ndarray:
        present = np.asarray(self._present_feature_indices(), dtype=int)
        if len(present) <= self.settings.max_features:
            return present
        z = np.abs(self.inputs.genomics[present])
        keep = np.argsort(-z, kind="stable")[: self.settings.max_features]
        return np.sort(present[keep])

    @property
    def n_rows(self) -> int:
        return 1 + len(self.features) + (len(self.grid.starts) if self.grid else 0)

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Batched model inputs: the case itself, then one row per occluded feature,
        then one per occluded window."""
        size = self.settings.batch_size
        for first in range(0, self.n_rows, size):
            rows = range(first, min(first + size, self.n_rows))
            yield self._rows(rows)

    def _rows(self, rows: range) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        n = len(rows)
        inputs = self.inputs
        image = np.repeat(inputs.image[np.newaxis], n, axis=0)
        genomics = np.repeat(inputs.genomics[np.newaxis], n, axis=0)
        clinical = np.repeat(inputs.clinical[np.newaxis], n, axis=0)
        presence = np.repeat(inputs.presence[np.newaxis], n, axis=0)
        for i, row in enumerate(rows):
            if row == 0:
                continue
            if row <= len(self.features):
                genomics[i, self.features[row - 1]] = 0.0
                continue
            self.occlusion.perturb(image[i], row - 1 - len(self.features))  # type: ignore[union-attr]
        return image, genomics, clinical, presence

    # ---------------------------------------------------------------- result

    def _scores(self, logits: np.ndarray) -> tuple[int, float, np.ndarray]:
        """The target label, its temperature, and the score of every row of ``batches()``."""
        logits = np.asarray(logits, dtype=np.float64)
        if logits.shape[0] != self.n_rows:
            raise ValueError(f"expected logits for {self.n_rows} rows, got {logits.shape[0]}")
        target = target_label(self.contract, logits[0])
        # A multi-label model's labels each have their own temperature.
        temperatures = self.contract.label_temperatures
        temperature = temperatures[target] if temperatures else self.contract.temperature
        return target, temperature, log_odds(logits, target, temperature)

    def refinement(self, logits: np.ndarray) -> OcclusionGrid | None:
        """The second image pass's windows, from the logits of ``batches()`` (None: no
        image, or no second pass); their rows are ``occlusion_logits(..., self.occlusion,
        grid, ...)`` of ``self.case``."""
        if self.occlusion is None:
            return None
        _, _, scores = self._scores(logits)
        return self.occlusion.refined(scores[1 + len(self.features) :] - scores[0])

    @property
    def case(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.inputs.image, self.inputs.genomics, self.inputs.clinical, self.inputs.presence

    def result(
        self, logits: np.ndarray, fine: OcclusionGrid | None = None, fine_logits: np.ndarray | None = None
    ) -> dict:
        """The explanation from the logits of every row of ``batches()``, in order, and
        of the second image pass's ``fine`` windows when there was one."""
        target, temperature, scores = self._scores(logits)
        drops = scores[0] - scores[1:]
        n_features = len(self.features)
        if fine is not None and (fine_logits is None or len(fine_logits) != len(fine.starts)):
            raise ValueError(f"expected logits for the {len(fine.starts)} windows of the second pass")
        fine_effects = (
            None if fine is None or fine_logits is None else log_odds(fine_logits, target, temperature) - scores[0]
        )
        return {
            "target_label": self.contract.labels[target],
            "score": SCORE,
            "baseline_score": float(scores[0]),
            "model_rows": self.n_rows + (len(fine.starts) if fine is not None else 0),
            "genes": self._genes(drops[:n_features]),
            "saliency": self._saliency(-drops[n_features:], fine, fine_effects),  # the rise when enhanced
        }

    def _genes(self, drops: np.ndarray) -> dict:
        if not len(self.features):
            return {"available": False, "reason": self._missing_reason("genomics")}
        names = self.contract.genomics.features
        block_of = {f: b.name for b in self.contract.omics for f in b.features}
        order = np.argsort(-np.abs(drops), kind="stable")[: self.settings.top_genes]
        return {
            "available": True,
            "method": GENE_METHOD,
            "features_evaluated": len(self.features),
            "features_present": len(self._present_feature_indices()),
            "top": [
                {
                    "feature": names[self.features[i]],
                    "block": block_of[names[self.features[i]]],
                    "attribution": float(drops[i]),
                    "value_z": float(self.inputs.genomics[self.features[i]]),
                }
                for i in order
            ],
        }

    def _saliency(self, effects: np.ndarray, fine: OcclusionGrid | None, fine_effects: np.ndarray | None) -> dict:
        if self.grid is None or self.occlusion is None:
            return {"available": False, "reason": self._missing_reason("image")}
        peak = self.occlusion.peak(effects, fine, fine_effects)
        spacing = self.contract.image.target_spacing
        summary = {
            "available": True,
            "method": IMAGE_METHOD + (REFINE_METHOD if fine is not None else ""),
            "windows": len(self.grid.starts),
            "window_voxels": list(self.grid.window),
            "stride_voxels": list(self.grid.stride),
            "window_mm": [w * s for w, s in zip(self.grid.window, spacing, strict=True)],
            "peak_voxel": [round(float(v), 2) for v in peak],
            "peak_effect": float(effects[int(np.argmax(_strength(effects)))]),
        }
        if fine is not None and fine_effects is not None:
            summary["refine_windows"] = len(fine.starts)
            summary["refine_window_mm"] = [w * s for w, s in zip(fine.window, spacing, strict=True)]
        if self.grid_affine is not None:
            position = np.asarray(self.grid_affine, dtype=float) @ np.append(peak, 1.0)
            summary["peak_mm"] = [round(float(v), 2) for v in position[:3]]
            summary["coordinates"] = "DICOM patient coordinates (LPS), mm"
        return summary

    def _missing_reason(self, modality: str) -> str:
        uses = self.contract.uses_image if modality == "image" else self.contract.uses_genomics
        if not uses:
            return f"the model does not use {modality}"
        return f"no {modality} in this case"


def _strength(effects: np.ndarray) -> np.ndarray:
    """How strongly each window points at the target label: its rise in score; only if
    no window raises it (the image can only lower the score), the size of the change."""
    rise = np.clip(effects, 0.0, None)
    return rise if rise.max(initial=0.0) > 0 else np.abs(effects)


def peak_voxel(grid: OcclusionGrid, effects: np.ndarray) -> np.ndarray:
    """Grid index of the saliency peak of one pass: the strength-weighted centre of the
    windows that overlap the strongest one and have at least half its strength.
    Neighbouring half-overlapping windows see the same structure partly, so their
    weighted centre locates it finer than the stride."""
    return _weighted_peak(grid, _strength(effects), local=True)


def _weighted_peak(grid: OcclusionGrid, strength: np.ndarray, local: bool) -> np.ndarray:
    """``peak_voxel`` from the windows' strengths; ``local=False`` for the second pass,
    whose windows all lie around one structure and may each see only an edge of it:
    all of them count."""
    centres = grid.centres()
    best = int(np.argmax(strength))
    near = np.all(np.abs(centres - centres[best]) < np.asarray(grid.window), axis=1) if local else True
    chosen = near & (strength >= 0.5 * strength[best])
    weights = strength[chosen]
    if weights.sum() <= 0:  # the image changes nothing: no peak to speak of
        return centres[best]
    return (centres[chosen] * weights[:, None]).sum(axis=0) / weights.sum()


def explain_case(
    logits_fn: LogitsFn,
    contract: ModelContract,
    inputs: ModelInputs,
    settings: ExplainSettings | None = None,
    grid_affine: np.ndarray | None = None,
) -> dict:
    """Run the plan through ``logits_fn`` (e.g. OnnxModel.logits) batch by batch."""
    explainer = CaseExplainer(contract, inputs, settings, grid_affine)
    logits = np.concatenate([np.asarray(logits_fn(*batch)) for batch in explainer.batches()])
    fine = explainer.refinement(logits)
    if fine is None or explainer.occlusion is None:
        return explainer.result(logits)
    batch_size = explainer.settings.batch_size
    return explainer.result(
        logits, fine, occlusion_logits(logits_fn, explainer.case, explainer.occlusion, fine, batch_size)
    )
