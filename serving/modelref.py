"""Where the served model lives: an ONNX file path, or a BentoML model tag whose folder
holds model.onnx (what `radfusion export` registers through ``register_model``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from radfusion.contract import ModelContract, read_contract_from_onnx

MODEL_ENV = "RADFUSION_MODEL"
DEVICE_ENV = "RADFUSION_DEVICE"
ONNX_IN_BENTO_MODEL = "model.onnx"


class ModelNotFoundError(RuntimeError):
    pass


def model_ref_from_env() -> str:
    ref = os.environ.get(MODEL_ENV, "").strip()
    if not ref:
        raise ModelNotFoundError(
            f"set {MODEL_ENV} to an .onnx file or a BentoML model tag (name:version or name:latest)"
        )
    return ref


def looks_like_tag(ref: str) -> bool:
    """name:version with no path separators and no .onnx suffix."""
    return ":" in ref and "/" not in ref and "\\" not in ref and not ref.endswith(".onnx")


def resolve_model_path(ref: str | Path) -> Path:
    """ONNX file for ``ref``; a tag is looked up in the BentoML model store."""
    path = Path(ref)
    if path.is_file():
        return path
    if isinstance(ref, str) and looks_like_tag(ref):
        import bentoml
        from bentoml.exceptions import NotFound

        try:
            stored = bentoml.models.get(ref)
        except NotFound as exc:
            raise ModelNotFoundError(f"BentoML model {ref!r} is not in the model store") from exc
        onnx = Path(stored.path) / ONNX_IN_BENTO_MODEL
        if not onnx.is_file():
            raise ModelNotFoundError(f"BentoML model {stored.tag} holds no {ONNX_IN_BENTO_MODEL}")
        return onnx
    raise ModelNotFoundError(f"model {str(ref)!r} is neither an existing file nor a BentoML model tag")


def read_model_contract(ref: str | Path) -> ModelContract:
    """The contract of the model ``ref`` names (a file or a tag), or ModelNotFoundError
    saying why there is none: a file that is not ONNX, or an ONNX graph without a
    radfusion contract, fails here rather than in a worker after start."""
    path = resolve_model_path(ref)
    try:
        return read_contract_from_onnx(path)
    except Exception as exc:  # noqa: BLE001 - any byte sequence: the file is not a model radfusion wrote
        raise ModelNotFoundError(
            f"{path.name} is not an ONNX model with a radfusion contract ({type(exc).__name__})"
        ) from None


def device_from_env() -> str:
    device = os.environ.get(DEVICE_ENV, "auto").strip().lower() or "auto"
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"{DEVICE_ENV} must be auto, cpu or cuda, not {device!r}")
    return device


def register_model(onnx_path: Path | str) -> str:
    """Store an exported ONNX model in the BentoML model store under the version its
    contract names (``name:version``), labelled by task and modalities, and return
    the tag. Serving owns the store: training writes the file, the CLI registers it."""
    import bentoml

    contract = read_contract_from_onnx(Path(onnx_path))
    with bentoml.models.create(
        f"{contract.name}:{contract.version}",
        labels={"task": contract.task.replace(":", "-"), "modalities": "-".join(contract.trained_modalities)},
        metadata={"cohort_hash": contract.cohort_hash, **contract.metrics},
    ) as model:
        shutil.copyfile(onnx_path, Path(model.path) / ONNX_IN_BENTO_MODEL)
    return str(model.tag)
