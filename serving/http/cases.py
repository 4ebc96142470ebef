"""Request schemas for a case — ``{study, genomics, clinical}`` — as /predict/batch takes
them, and the per-case answer shapes. One schema for every way a study arrives: an
uploaded file of the same request (``{"upload": i}``, the i-th ``studies`` part) or a
DICOMweb reference (``{"dicomweb": {"url": ..., "study_uid": ...}}``)."""

from __future__ import annotations

import typing as t
from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel, Field, model_validator

from radfusion.errors import RadfusionInputError
from radfusion.serving.dicomweb import DicomwebRef


class StudyInput(BaseModel):
    upload: int | None = Field(default=None, ge=0, description="index of the uploaded `studies` part")
    dicomweb: DicomwebRef | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> StudyInput:
        if (self.upload is None) == (self.dicomweb is None):
            raise ValueError("a study is either {'upload': <index>} or {'dicomweb': {...}}, exactly one")
        return self


class CaseRequest(BaseModel):
    """One patient: any of the three may be omitted when the model allows that
    modality to be missing."""

    study: StudyInput | None = None
    genomics: dict[str, t.Any] | None = None
    clinical: dict[str, t.Any] | None = None


class BadCaseError(RadfusionInputError):
    """A case of a batch request names an upload that does not exist, or one another case also names."""

    kind = "bad_case"
    http_status = 400


class TooManyCasesError(RadfusionInputError):
    """A batch request holds more cases than the server takes in one call."""

    kind = "too_many_cases"
    http_status = 413


class NoCasesError(RadfusionInputError):
    """A batch request holds no case at all."""

    kind = "no_cases"
    http_status = 422


class ConflictingStudyError(RadfusionInputError):
    """The study came both as an upload and as a DICOMweb reference."""

    kind = "conflicting_study_inputs"
    http_status = 400


def batch_cases(cases: Sequence[CaseRequest], n_uploads: int, max_cases: int) -> list[CaseRequest]:
    """The cases of a batch request. With no ``cases`` given, each uploaded file is one
    image-only case. Raises for the request as a whole (no case, too many)."""
    cases = list(cases) or [CaseRequest(study=StudyInput(upload=i)) for i in range(n_uploads)]
    if not cases:
        raise NoCasesError("the request holds no case: send `cases` (JSON) and/or `studies` (files)")
    if len(cases) > max_cases:
        raise TooManyCasesError(f"{len(cases)} cases in one request; at most {max_cases} allowed")
    return cases


def upload_problems(cases: Sequence[CaseRequest], n_uploads: int) -> dict[int, BadCaseError]:
    """Cases whose ``upload`` index names no uploaded part, or a part another case also
    names (a part is consumed by the case that reads it). Only those cases fail."""
    indices = [c.study.upload if c.study is not None else None for c in cases]
    uses = Counter(i for i in indices if i is not None)
    problems: dict[int, BadCaseError] = {}
    for case, index in enumerate(indices):
        if index is None:
            continue
        if index >= n_uploads:
            problems[case] = BadCaseError(f"study upload {index} does not exist ({n_uploads} uploaded)")
        elif uses[index] > 1:
            problems[case] = BadCaseError(f"study upload {index} is named by {uses[index]} cases; one each")
    return problems


def error_entry(case: int, exc: RadfusionInputError) -> dict[str, t.Any]:
    return {"case": case, **exc.to_dict(), "status": exc.http_status}
