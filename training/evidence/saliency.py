"""Image saliency: where in the study the prediction comes from.

The algorithm is radfusion.explain's image occlusion, the very one the service's
explain runs on the ONNX model: windows of the model grid (half-window stride, at most
``SALIENCY_WINDOWS``) are in turn made more conspicuous (what is brighter than soft
tissue gets CONTRAST_GAIN times its contrast above it), the saliency of a window is
the rise in the positive label's log-odds, and the peak is the strength-weighted centre
of the strongest windows of a second pass, half-size windows around the strongest one.
Here the model is the torch network, wrapped to a numpy function (``numpy_logits``).
Perturbation asks the model directly (no gradients, so it works for any fusion
strategy). The per-voxel map (mean effect of the windows covering
a voxel) is resampled back onto the source DICOM series (ModelGrid) and drawn as PNG
overlays; the peak is mapped to patient coordinates through the same grid."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from radfusion.contract import ImageGeometry
from radfusion.dicom import Volume
from radfusion.explain import ExplainSettings, image_saliency
from radfusion.training.evidence.cases import Cases, used_presence
from radfusion.training.evidence.geometry import ModelGrid, load_series_volume, to_source_grid

log = logging.getLogger(__name__)
PROGRESS_EVERY = 10  # studies between progress lines

# The service's window budget: the same windows, so the report measures what serving shows.
SALIENCY_WINDOWS = ExplainSettings.max_windows


def numpy_logits(net: torch.nn.Module) -> Callable[..., np.ndarray]:
    """The torch network as radfusion.explain's logits function: numpy in, numpy out."""

    @torch.no_grad()
    def logits(image, genomics, clinical, presence) -> np.ndarray:
        inputs = [
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in (image, genomics, clinical, presence)
        ]
        return net(*inputs).numpy()

    return logits


def occlusion_map(net, image: torch.Tensor, genomics, clinical, presence, batch: int = 32):
    """The occlusion saliency of one case (tensors with a batch axis of 1), positive
    label: radfusion.explain.image_saliency through the torch network."""
    net.eval()
    return image_saliency(
        numpy_logits(net),
        image[0].numpy(),
        genomics[0].numpy(),
        clinical[0].numpy(),
        presence[0].numpy(),
        max_windows=SALIENCY_WINDOWS,
        batch_size=batch,
    )


@dataclass
class Saliency:
    """One patient's saliency, on the model grid and on the source series."""

    patient_id: str
    model_map: np.ndarray  # (D, H, W) on the model grid
    source_map: np.ndarray  # on the source volume's voxels, its axis order
    volume: Volume
    peak_voxel: tuple[int, int, int]  # in the source volume
    peak_mm: tuple[float, float, float]  # patient (x, y, z)


def saliency_for_case(net, cases: Cases, i: int, root: Path, geometry: ImageGeometry) -> Saliency:
    """Occlusion saliency of case ``i`` mapped back onto its DICOM series."""
    presence = used_presence(net, cases.presence[i : i + 1])
    found = occlusion_map(net, cases.image[i : i + 1], cases.genomics[i : i + 1], cases.clinical[i : i + 1], presence)
    volume = load_series_volume([root / f for f in cases.files[i]], geometry)
    grid = ModelGrid.for_volume(volume, geometry)
    source = to_source_grid(found.voxel_map, volume, grid)
    mm = grid.model_to_patient(found.peak)
    voxel = np.linalg.solve(volume.affine, [*mm, 1.0])[:3]
    peak = np.clip(np.round(voxel), 0, np.asarray(volume.voxels.shape) - 1).astype(int)
    return Saliency(
        cases.patient_ids[i], found.voxel_map, source, volume, tuple(int(v) for v in peak), tuple(float(v) for v in mm)
    )


def cohort_saliency(
    net, cases: Cases, root: Path, geometry: ImageGeometry, max_cases: int | None = None
) -> list[Saliency]:
    """Saliency for every case with an image (the first ``max_cases`` of them)."""
    if not net.uses("image"):
        raise ValueError("the model does not use the image: no saliency")
    index = np.flatnonzero(cases.has(net, "image"))[:max_cases]
    found = []
    for n, i in enumerate(index, 1):
        found.append(saliency_for_case(net, cases, int(i), root, geometry))
        if n % PROGRESS_EVERY == 0 or n == len(index):
            log.info("saliency: %d of %d studies", n, len(index))
    return found


def inside_ellipsoid(point_mm, centre_mm, semi_axes_zyx_mm) -> bool:
    """Whether a patient-space point (x, y, z) lies in an axis-aligned ellipsoid whose
    semi-axes are given (z, y, x), as truth.json gives the lesion."""
    d = np.asarray(point_mm, dtype=float) - np.asarray(centre_mm, dtype=float)
    sz, sy, sx = semi_axes_zyx_mm
    return bool((d[0] / sx) ** 2 + (d[1] / sy) ** 2 + (d[2] / sz) ** 2 <= 1.0)


def overlay_png(saliency: Saliency, window: tuple[float, float], lesion_mm=None, path: Path | None = None) -> bytes:
    """Axial slice through the saliency peak: the CT in the model's window, the
    heatmap over it, the peak marked (and the true lesion centre when known). Returns
    the PNG bytes (also written to ``path`` when given)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volume = saliency.volume
    k = saliency.peak_voxel[0]
    low, high = window
    ct = np.clip((volume.voxels[k] - low) / (high - low), 0, 1)
    heat = saliency.source_map[k]
    fig, ax = plt.subplots(figsize=(3.2, 3.2), dpi=100)
    ax.imshow(ct, cmap="gray", interpolation="nearest")
    ax.imshow(np.ma.masked_less(heat, 0.3 * max(float(heat.max()), 1e-12)), cmap="jet", alpha=0.45)
    ax.plot(saliency.peak_voxel[2], saliency.peak_voxel[1], "w+", markersize=12, mew=2, label="saliency peak")
    if lesion_mm is not None:
        r, c = np.linalg.solve(volume.affine, [*lesion_mm, 1.0])[1:3]
        ax.plot(c, r, "o", mfc="none", mec="lime", markersize=14, mew=1.5, label="true lesion centre")
    ax.set_axis_off()
    ax.legend(loc="lower right", fontsize=6, framealpha=0.6)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
    return buffer.getvalue()
