"""DICOM reading: find studies in a folder tree, choose the main image series, and
build a volume in HU with its geometry."""

from radfusion.dicom.discover import InstanceHeader, StudyFiles, find_studies, read_header
from radfusion.dicom.series import SeriesChoice, select_series
from radfusion.dicom.volume import Volume, load_volume

__all__ = [
    "InstanceHeader",
    "StudyFiles",
    "SeriesChoice",
    "Volume",
    "find_studies",
    "load_volume",
    "read_header",
    "select_series",
]
