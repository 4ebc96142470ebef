"""Study + genomics -> prediction, on the ONNX model. The HTTP service and the archive
scorer both go through here, so they answer identically."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from radfusion.contract import ModelContract
from radfusion.errors import ClinicalInputError, GenePanelError, RadfusionInputError
from radfusion.explain import ExplainSettings, explain_case
from radfusion.limits import StudyBudget
from radfusion.prediction import Prediction
from radfusion.preprocess import ModelInputs, build_inputs, preprocess_clinical, preprocess_omics
from radfusion.runtime import OnnxModel
from radfusion.study import StudyImage, read_study_image
from radfusion.treatment import rank_treatments


@dataclass
class PreparedCase:
    inputs: ModelInputs
    study: StudyImage | None


def prepare_case(
    contract: ModelContract,
    study_paths: Sequence[Path] | Path | None,
    genomics: Mapping[str, float] | None,
    clinical: Mapping[str, object] | None = None,
    budget: StudyBudget | None = None,
) -> PreparedCase:
    """Read and preprocess one case under ``budget`` (a default StudyBudget when not
    given). Raises only RadfusionInputError subclasses, whatever the input: the study's
    through read_study_image's boundary, the tables' here."""
    study = (
        read_study_image(study_paths, contract.image, budget)
        if study_paths is not None and contract.uses_image
        else None
    )
    omics = (
        _bounded(lambda: preprocess_omics(genomics, contract.omics), GenePanelError, "genomics")
        if genomics is not None and contract.uses_genomics
        else None
    )
    spec = contract.clinical  # not None whenever contract.uses_clinical
    covariates = (
        _bounded(lambda: preprocess_clinical(clinical, spec), ClinicalInputError, "clinical covariates")
        if clinical is not None and spec is not None and contract.uses_clinical
        else None
    )
    inputs = build_inputs(contract, study.image if study else None, omics, covariates)
    return PreparedCase(inputs=inputs, study=study)


_T = TypeVar("_T")


def _bounded(work: Callable[[], _T], kind: type[RadfusionInputError], what: str) -> _T:
    """``work()``; what its own checks did not anticipate becomes ``kind`` (the message
    gives the exception's type, never its text, which can quote the values)."""
    try:
        return work()
    except RadfusionInputError:
        raise
    except Exception as exc:  # the boundary: any table value gets a specific kind
        raise kind(f"{what} could not be read ({type(exc).__name__})") from exc


def _widths(contract: ModelContract) -> list[int]:
    return [
        int(np.prod(contract.image.target_shape)),
        len(contract.genomics.features),
        contract.clinical_width,
        len(contract.modalities),
    ]


def packed_width(contract: ModelContract) -> int:
    return sum(_widths(contract))


def pack(cases: Sequence[ModelInputs]) -> np.ndarray:
    """Flatten each case's four inputs into one row: BentoML batches one argument."""
    return np.stack(
        [np.concatenate([c.image.ravel(), c.genomics.ravel(), c.clinical.ravel(), c.presence.ravel()]) for c in cases]
    ).astype(np.float32)


def unpack(packed: np.ndarray, contract: ModelContract) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The inverse of pack: (image, genomics, clinical, presence) batches."""
    widths = _widths(contract)
    if packed.ndim != 2 or packed.shape[1] != packed_width(contract):
        raise ValueError(f"packed batch has shape {packed.shape}, expected (B, {sum(widths)})")
    image, genomics, clinical, presence = np.split(packed, np.cumsum(widths)[:-1], axis=1)
    return image.reshape(-1, 1, *contract.image.target_shape), genomics, clinical, presence


def unpack_case(packed_row: np.ndarray, contract: ModelContract) -> ModelInputs:
    """One packed case back into ModelInputs; the modalities used are those whose
    presence bit is set (build_inputs sets exactly those)."""
    image, genomics, clinical, presence = (part[0] for part in unpack(np.atleast_2d(packed_row), contract))
    used = [m for m, bit in zip(contract.modalities, presence, strict=True) if bit > 0]
    return ModelInputs(image, genomics, clinical, presence, used)


def stack_inputs(cases: Sequence[ModelInputs]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Batch arrays in ONNX input order."""
    return tuple(np.stack([getattr(c, name) for c in cases]) for name in ("image", "genomics", "clinical", "presence"))  # type: ignore[return-value]


def task_outputs(contract: ModelContract, outputs: np.ndarray) -> dict:
    """One case's model outputs (``OnnxModel.run``) as the task's answer fields
    (radfusion.prediction.Prediction.answer)."""
    return Prediction.from_outputs(contract, outputs).answer()


def format_prediction(contract: ModelContract, case: PreparedCase, prediction: Prediction) -> dict:
    """The HTTP JSON answer: the task fields, the modalities used, what the missing-data
    policy imputed, the model, and the scored study/series when there was an image."""
    result = {
        **prediction.answer(),
        "modalities_used": case.inputs.modalities_used,
        "imputation": case.inputs.imputation(),
        "model": {"name": contract.name, "version": contract.version},
    }
    if case.study is not None:
        result["study_instance_uid"] = case.study.study_uid
        result["series_instance_uid"] = case.study.series_uid
    return result


class Predictor:
    def __init__(self, model: OnnxModel):
        self.model = model
        self.contract = model.contract

    @classmethod
    def load(cls, path: Path | str, device: str = "auto") -> Predictor:
        return cls(OnnxModel(path, device=device))

    def prepare(self, study_paths, genomics, clinical=None, budget: StudyBudget | None = None) -> PreparedCase:
        return prepare_case(self.contract, study_paths, genomics, clinical, budget)

    def predict(self, cases: Sequence[PreparedCase]) -> list[dict]:
        """HTTP-format answers; raises NonFiniteOutputError if any case's output is NaN/inf."""
        return [format_prediction(self.contract, c, p) for c, p in zip(cases, self.predictions(cases), strict=True)]

    def predictions(self, cases: Sequence[PreparedCase]) -> list[Prediction]:
        if not cases:
            return []
        outputs = self.model.run(*stack_inputs([c.inputs for c in cases]))
        return [Prediction.from_outputs(self.contract, row) for row in outputs]

    def explain(self, case: PreparedCase, settings: ExplainSettings | None = None) -> dict:
        """Top genes and the image saliency peak (radfusion.explain) for one case."""
        affine = case.study.grid_affine if case.study is not None else None
        return explain_case(self.model.logits, self.contract, case.inputs, settings, affine)

    def rank_treatments(self, case: PreparedCase) -> dict:
        """Predicted response under each treatment (radfusion.treatment)."""
        return rank_treatments(self.model.run, self.contract, case.inputs)
