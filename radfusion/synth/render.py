"""Render one study: phantom volume, localizer, DICOM files.

This is the unit of work sent to worker processes. It depends only on its
StudySpec (which carries the seed and patient index), so results are identical
whatever the number of workers or the order they run in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from radfusion.synth.dicom_writer import write_study
from radfusion.synth.phantom import localizer_image, render_phantom
from radfusion.synth.random_streams import PHANTOM, stream
from radfusion.synth.study_spec import StudySpec


@dataclass(frozen=True)
class RenderedStudy:
    """What the truth file needs to know about a rendered study."""

    index: int
    lesion_voxel: tuple[int, int, int]
    lesion_semi_axes_mm: tuple[float, float, float]
    lesion_fully_in_soft_tissue: bool
    n_files: int


def render_study(spec: StudySpec, dicom_root: Path) -> RenderedStudy:
    rng = stream(spec.seed, PHANTOM, spec.index, spec.site)
    phantom = render_phantom(spec, rng)
    scout = localizer_image(phantom.hu, spec.rows, spec.cols)
    files = write_study(spec, phantom.hu, scout, dicom_root, rng)
    return RenderedStudy(
        index=spec.index,
        lesion_voxel=phantom.lesion_voxel,
        lesion_semi_axes_mm=phantom.lesion_semi_axes_mm,
        lesion_fully_in_soft_tissue=phantom.lesion_fully_in_soft_tissue,
        n_files=len(files),
    )


def render_study_task(task: tuple[StudySpec, Path]) -> RenderedStudy:
    """Pool.imap adapter (one picklable argument)."""
    return render_study(*task)
