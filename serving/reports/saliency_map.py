"""Where the model looked, as a DICOM object a radiologist's viewer overlays on the
scored series: the image saliency (radfusion.explain) as a highdicom Parametric Map in
the source study, one frame per source slice, on the source slices' own geometry.

A Parametric Map rather than a Segmentation: the saliency is a quantity (the rise in
the target label's log-odds when a window of the image is enhanced), and a map keeps
its sign and size; a segmentation would keep only a thresholded region.

The saliency lives on the model grid. Each source pixel centre is taken to patient
coordinates (ImagePositionPatient, ImageOrientationPatient, PixelSpacing), then to a
model-grid index through the inverse of the grid-to-patient affine
(radfusion.preprocess.grid_to_patient), and the map is interpolated there (linear);
a pixel outside the grid gets 0 (no effect measured). The map shares the source's
FrameOfReference and each frame references its source slice.

Values are stored as 16-bit integers with a Real World Value Mapping (slope and
intercept) back to log-odds: half the bytes of 32-bit floats for a map as large as
the series itself, and integer maps are what viewers display most widely; the step,
a 65535th of the map's range, is far below any effect one would read off it.

Patient and study attributes come from radfusion.serving.reports.demographics (valid,
normalised or left empty; identifiers verbatim), as for the prediction SR."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from scipy import ndimage

from radfusion.contract import ModelContract
from radfusion.errors import GeometryError, UnsupportedPixelDataError
from radfusion.explain import SCORE
from radfusion.serving.reports.demographics import patient_and_study

MAP_SERIES_NUMBER = 9902  # the prediction SR is 9901
SERIES_DESCRIPTION = "radfusion saliency (not for diagnostic use without review)"
MANUFACTURER = "radfusion"
LUT_LABEL = "SALIENCY"
CONTENT_DESCRIPTION = "Image saliency: rise in log-odds when a region is enhanced"
STORED_MAX = 65535  # uint16


@dataclass
class SourceFrames:
    """The geometry of every frame of the source series, in the order given (highdicom
    orders the map's frames along the normal itself)."""

    positions: np.ndarray  # (n, 3) ImagePositionPatient of each frame
    row_dir: np.ndarray  # direction of increasing column index (IOP[:3])
    col_dir: np.ndarray  # direction of increasing row index (IOP[3:])
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    rows: int
    columns: int


def source_frames(headers: Sequence[Dataset]) -> SourceFrames:
    """Frame geometry of single-frame CT/MR instances of one series (one frame each),
    or of one multi-frame enhanced image."""
    if not headers:
        raise GeometryError("a saliency map needs the source series' instances")
    first = headers[0]
    if "PerFrameFunctionalGroupsSequence" in first or int(first.get("NumberOfFrames") or 1) > 1:
        if len(headers) > 1:
            raise UnsupportedPixelDataError("a saliency map is built on one multi-frame image or single-frame slices")
        return _multiframe(first)
    row_dir, col_dir = _orientation(first.get("ImageOrientationPatient"))
    size = (int(first.Rows), int(first.Columns))
    spacing = _spacing(first.get("PixelSpacing"))
    for ds in headers[1:]:
        other_row, other_col = _orientation(ds.get("ImageOrientationPatient"))
        if not (np.allclose(other_row, row_dir, atol=1e-3) and np.allclose(other_col, col_dir, atol=1e-3)):
            raise GeometryError("mixed slice orientations in the source series")
        if (int(ds.Rows), int(ds.Columns)) != size or not np.allclose(_spacing(ds.get("PixelSpacing")), spacing):
            raise GeometryError("slices of different sizes or pixel spacings in the source series")
    positions = np.array([_position(ds.get("ImagePositionPatient")) for ds in headers])
    return SourceFrames(positions, row_dir, col_dir, spacing, *size)


def _multiframe(ds: Dataset) -> SourceFrames:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    if not per_frame:
        raise UnsupportedPixelDataError("multi-frame image without functional groups has no frame geometry")

    def group(frame: Dataset, keyword: str) -> Dataset:
        found = frame.get(keyword) or shared.get(keyword)
        if not found:
            raise GeometryError(f"multi-frame image lacks {keyword}")
        return found[0]

    orientations = {tuple(group(f, "PlaneOrientationSequence").ImageOrientationPatient) for f in per_frame}
    spacings = {tuple(group(f, "PixelMeasuresSequence").PixelSpacing) for f in per_frame}
    if len(orientations) != 1 or len(spacings) != 1:
        raise GeometryError("frames of different orientations or pixel spacings in the source image")
    row_dir, col_dir = _orientation(list(orientations.pop()))
    positions = np.array([_position(group(f, "PlanePositionSequence").ImagePositionPatient) for f in per_frame])
    return SourceFrames(positions, row_dir, col_dir, _spacing(list(spacings.pop())), int(ds.Rows), int(ds.Columns))


def _orientation(iop) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(iop if iop is not None else [], dtype=float)
    if values.shape != (6,) or not np.allclose(np.linalg.norm(values.reshape(2, 3), axis=1), 1.0, atol=1e-2):
        raise GeometryError("ImageOrientationPatient is missing or not two unit vectors")
    return values[:3], values[3:]


def _spacing(value) -> tuple[float, float]:
    spacing = np.asarray(value if value is not None else [], dtype=float)
    if spacing.shape != (2,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise GeometryError("PixelSpacing is missing or not two positive lengths")
    return float(spacing[0]), float(spacing[1])


def _position(value) -> np.ndarray:
    position = np.asarray(value if value is not None else [], dtype=float)
    if position.shape != (3,) or not np.all(np.isfinite(position)):
        raise GeometryError("ImagePositionPatient is missing or not three finite numbers")
    return position


def resample_to_source(saliency: np.ndarray, grid_to_patient: np.ndarray, frames: SourceFrames) -> np.ndarray:
    """(frames, rows, columns) float32: the model-grid ``saliency`` (D, H, W) at every
    source pixel centre; 0 outside the grid. The grid covers half a voxel beyond its
    outer voxel centres, where the outer value holds."""
    saliency = np.asarray(saliency, dtype=np.float32)
    patient_to_grid = np.linalg.inv(np.asarray(grid_to_patient, dtype=float))
    r, c = np.meshgrid(np.arange(frames.rows), np.arange(frames.columns), indexing="ij")
    dr, dc = frames.pixel_spacing
    in_plane = np.multiply.outer(c.ravel() * dc, frames.row_dir) + np.multiply.outer(
        r.ravel() * dr, frames.col_dir
    )  # (pixels, 3) mm from the frame's first pixel
    shape = np.asarray(saliency.shape, dtype=float)[:, None]
    out = np.zeros((len(frames.positions), frames.rows, frames.columns), dtype=np.float32)
    for k, position in enumerate(frames.positions):
        index = patient_to_grid[:3, :3] @ (in_plane + position).T + patient_to_grid[:3, 3:]  # (3, pixels)
        inside = np.all((index >= -0.5) & (index <= shape - 0.5), axis=0)
        values = ndimage.map_coordinates(saliency, np.clip(index, 0, shape - 1), order=1)
        out[k] = np.where(inside, values, 0.0).reshape(frames.rows, frames.columns)
    return out


class _SaliencyMap(hd.pm.ParametricMap):
    """highdicom copies every Patient and Study module attribute of the first source
    image as it is; the first source here carries the normalised ones, and only those
    are copied."""

    def copy_patient_and_study_information(self, dataset: Dataset) -> None:
        self.update(patient_and_study(dataset))
        self.StudyInstanceUID = dataset.StudyInstanceUID


def build_saliency_map(
    saliency: np.ndarray,
    grid_to_patient: np.ndarray,
    source_headers: Sequence[Dataset],
    series_uid: str,
    sop_uid: str,
    contract: ModelContract,
    header: Dataset | None = None,
    instance_number: int = 1,
) -> hd.pm.ParametricMap:
    """The saliency (D, H, W, on the model grid; ImageSaliency.voxel_map) as a Parametric
    Map on the geometry of ``source_headers`` (the scored series' instances, headers
    suffice), in their study and frame of reference. ``header``: where patient and
    study attributes come from (default: the first source); ``instance_number``: e.g.
    the prediction SR's version. Raises GeometryError / UnsupportedPixelDataError for
    a source without usable geometry."""
    frames = source_frames(source_headers)
    values = resample_to_source(saliency, grid_to_patient, frames)
    sources = list(source_headers)
    first = Dataset()  # the caller's header stays as it is (Dataset(ds) would share its elements)
    for element in sources[0]:
        first.add(copy.copy(element))
    first.update(patient_and_study(header if header is not None else sources[0]))
    first.StudyInstanceUID = sources[0].StudyInstanceUID  # the map goes into the scored series' study
    low, high = min(0.0, float(values.min())), max(0.0, float(values.max()))
    slope = (high - low) / STORED_MAX if high > low else 1.0
    stored = np.rint((values - low) / slope).astype(np.uint16)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=LUT_LABEL,
        lut_explanation=SCORE[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(0, STORED_MAX),
        slope=slope,
        intercept=low,
    )
    pm = _SaliencyMap(
        source_images=[first, *sources[1:]],
        pixel_array=stored,
        series_instance_uid=series_uid,
        series_number=MAP_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=contract.name[:64],
        software_versions=contract.version[:64],
        device_serial_number=contract.name[:64],
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=STORED_MAX / 2, window_width=STORED_MAX + 1)],
        content_label=LUT_LABEL,
        content_description=CONTENT_DESCRIPTION,
        series_description=SERIES_DESCRIPTION,
    )
    # Type 2C in General Series, which validators require unless a frame states its
    # laterality: the source's (same body part), or empty (unknown).
    pm.Laterality = sources[0].get("Laterality") or ""
    return pm


def saliency_values(pm: Dataset) -> np.ndarray:
    """(frames, rows, columns) float: a saliency map's stored values through its Real
    World Value Mapping, back in log-odds."""
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    return pm.pixel_array.astype(np.float64) * float(mapping.RealWorldValueSlope) + float(
        mapping.RealWorldValueIntercept
    )
