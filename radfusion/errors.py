"""Specific input errors. Each carries a machine-readable ``kind`` so HTTP, DICOM and
batch callers can map it (HTTP 4xx reason, per-study error row) without parsing text.
Messages never contain patient names or identifiers."""

from __future__ import annotations


class RadfusionInputError(ValueError):
    """Bad input: the caller can fix it. Never a crash of the batch or the server."""

    kind = "bad_input"
    http_status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"error": self.kind, "detail": self.message}


class CorruptDicomError(RadfusionInputError):
    kind = "corrupt_dicom"


class NoImageSeriesError(RadfusionInputError):
    kind = "no_image_series"
    http_status = 422


class WrongModalityError(RadfusionInputError):
    kind = "wrong_modality"
    http_status = 422


class GeometryError(RadfusionInputError):
    kind = "geometry_rejected"
    http_status = 422


class UnsupportedPixelDataError(RadfusionInputError):
    kind = "unsupported_pixel_data"
    http_status = 422


class GenePanelError(RadfusionInputError):
    kind = "gene_panel_mismatch"
    http_status = 422


class ClinicalInputError(RadfusionInputError):
    kind = "clinical_invalid"
    http_status = 422


class OmicsFormatError(RadfusionInputError):
    """An omics file (expression matrix, VCF, MAF, SEG, gene annotation, sample map)
    that cannot be read as declared: the message names the file's problem."""

    kind = "omics_format"
    http_status = 422


class NoModalityError(RadfusionInputError):
    kind = "no_modality"
    http_status = 422
