"""DICOM reading: find studies in folders, zip archives and DICOMDIR media, choose the
main image series by rules, and build a volume in HU with its geometry."""

from radfusion.dicom.discover import InstanceHeader, StudyFiles, find_studies, read_header
from radfusion.dicom.geometry import GeometryPolicy
from radfusion.dicom.series import SelectionRules, SeriesChoice, select_series
from radfusion.dicom.volume import Volume, load_volume

__all__ = [
    "GeometryPolicy",
    "InstanceHeader",
    "SelectionRules",
    "SeriesChoice",
    "StudyFiles",
    "Volume",
    "find_studies",
    "load_volume",
    "read_header",
    "select_series",
]
