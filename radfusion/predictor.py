"""Study + genomics -> prediction, on the ONNX model. The HTTP service and the archive
scorer both go through here, so they answer identically."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radfusion.contract import ModelContract
from radfusion.preprocess import ModelInputs, build_inputs, preprocess_genomics
from radfusion.runtime import OnnxModel
from radfusion.study import StudyImage, read_study_image


@dataclass
class PreparedCase:
    inputs: ModelInputs
    study: StudyImage | None


def prepare_case(
    contract: ModelContract,
    study_paths: Sequence[Path] | Path | None,
    genomics: Mapping[str, float] | None,
) -> PreparedCase:
    """Read and preprocess one case. Raises a RadfusionInputError subclass for bad input."""
    study = read_study_image(study_paths, contract.image) if study_paths is not None and contract.uses_image else None
    genes = preprocess_genomics(genomics, contract.genomics) if genomics is not None and contract.uses_genomics else None
    inputs = build_inputs(contract, study.image if study else None, genes)
    return PreparedCase(inputs=inputs, study=study)


def pack(cases: Sequence[ModelInputs]) -> np.ndarray:
    """Flatten each case's three inputs into one row: BentoML batches one argument."""
    return np.stack(
        [np.concatenate([c.image.ravel(), c.genomics.ravel(), c.presence.ravel()]) for c in cases]
    ).astype(np.float32)


def unpack(packed: np.ndarray, contract: ModelContract) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shape = (1, *contract.image.target_shape)
    n_image = int(np.prod(shape))
    n_genes = len(contract.genomics.features)
    expected = n_image + n_genes + 2
    if packed.ndim != 2 or packed.shape[1] != expected:
        raise ValueError(f"packed batch has shape {packed.shape}, expected (B, {expected})")
    image = packed[:, :n_image].reshape(-1, *shape)
    genomics = packed[:, n_image : n_image + n_genes]
    presence = packed[:, n_image + n_genes :]
    return image, genomics, presence


def format_prediction(contract: ModelContract, case: PreparedCase, probabilities: np.ndarray) -> dict:
    probs = {label: float(p) for label, p in zip(contract.labels, probabilities)}
    result = {
        "probabilities": probs,
        "predicted_label": contract.labels[int(np.argmax(probabilities))],
        "modalities_used": case.inputs.modalities_used,
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

    def prepare(self, study_paths, genomics) -> PreparedCase:
        return prepare_case(self.contract, study_paths, genomics)

    def predict(self, cases: Sequence[PreparedCase]) -> list[dict]:
        if not cases:
            return []
        probabilities = self.model.run(
            np.stack([c.inputs.image for c in cases]),
            np.stack([c.inputs.genomics for c in cases]),
            np.stack([c.inputs.presence for c in cases]),
        )
        return [format_prediction(self.contract, c, p) for c, p in zip(cases, probabilities)]
