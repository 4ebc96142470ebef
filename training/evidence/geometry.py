"""The model grid <-> the source series: inverting the core preprocessing.

radfusion.preprocess maps a series to the model grid in three steps: reorient to
canonical (z, y, x) axes, resample with scipy zoom (grid_mode: voxel edges aligned)
to the contract spacing, centre-crop/pad to the contract shape. ``ModelGrid`` holds
that mapping for one volume as index arithmetic, so a heatmap computed on the model
grid can be resampled onto the original voxels and its peak given in patient mm."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from radfusion.contract import ImageGeometry
from radfusion.dicom import GeometryPolicy, SelectionRules, Volume, load_volume, select_series
from radfusion.dicom.discover import read_headers
from radfusion.errors import CorruptDicomError


def load_series_volume(files: Sequence[Path], geometry: ImageGeometry) -> Volume:
    """The volume the model's image came from: the same series choice and geometry
    repair as radfusion.study, but keeping the voxels' geometry."""
    headers, _ = read_headers([Path(f) for f in files])
    if not headers:
        raise CorruptDicomError("no readable DICOM instances")
    choice = select_series(headers, rules=SelectionRules.from_geometry(geometry))
    return load_volume([h.path for h in choice.instances], GeometryPolicy.from_geometry(geometry))


@dataclass
class ModelGrid:
    """Index mapping between one volume's canonical grid and the model grid."""

    canonical_affine: np.ndarray  # canonical index -> patient mm (4x4)
    scale: np.ndarray  # canonical voxels per resampled voxel, per axis
    offset: np.ndarray  # resampled index of model index 0 (crop > 0, pad < 0)

    @classmethod
    def for_volume(cls, volume: Volume, geometry: ImageGeometry) -> ModelGrid:
        canonical = volume.canonical()
        factors = [s / t for s, t in zip(canonical.spacing, geometry.target_spacing, strict=True)]
        if canonical.shape[0] == 1:
            factors[0] = 1.0
        have = np.asarray(canonical.shape, dtype=float)
        # scipy.ndimage.zoom's output shape; with grid_mode the voxel edges align, so
        # the scale is the ratio of the shapes, not the requested factor.
        resampled = np.array([round(n * f) for n, f in zip(canonical.shape, factors, strict=True)], dtype=float)
        want = np.asarray(geometry.target_shape, dtype=float)
        offset = np.where(resampled >= want, (resampled - want) // 2, -((want - resampled) // 2))
        return cls(canonical.affine, have / resampled, offset)

    def model_to_canonical(self, index: np.ndarray) -> np.ndarray:
        """(..., 3) model-grid indices -> canonical voxel indices (fractional)."""
        return (np.asarray(index, dtype=float) + self.offset + 0.5) * self.scale - 0.5

    def canonical_to_model(self, index: np.ndarray) -> np.ndarray:
        return (np.asarray(index, dtype=float) + 0.5) / self.scale - 0.5 - self.offset

    def model_to_patient(self, index: np.ndarray) -> np.ndarray:
        """(..., 3) model-grid indices -> patient coordinates (x, y, z) in mm."""
        return apply_affine(self.canonical_affine, self.model_to_canonical(index))

    def patient_to_model(self, points: np.ndarray) -> np.ndarray:
        return self.canonical_to_model(apply_affine(np.linalg.inv(self.canonical_affine), points))


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=float)
    return points @ affine[:3, :3].T + affine[:3, 3]


def to_source_grid(heatmap: np.ndarray, volume: Volume, grid: ModelGrid) -> np.ndarray:
    """Resample a model-grid map onto the source volume's voxels (its own axis order),
    linear interpolation; outside the model's field of view the map is 0."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij"), axis=-1)
    patient = apply_affine(volume.affine, index.reshape(-1, 3))
    coords = grid.patient_to_model(patient).T
    values = ndimage.map_coordinates(heatmap.astype(np.float64), coords, order=1, mode="constant", cval=0.0)
    return values.reshape(volume.shape).astype(np.float32)
