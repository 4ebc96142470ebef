"""The model contract: everything serving must know about a model, carried inside the
ONNX file as metadata so training and serving cannot drift apart.

Serving validates every request against it; training writes it at export time."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

CONTRACT_METADATA_KEY = "radfusion.contract"
CONTRACT_SCHEMA_VERSION = 1

# Order of the presence mask and of the ONNX inputs; fixed for every model.
MODALITIES: tuple[str, ...] = ("image", "genomics")
INPUT_NAMES: tuple[str, ...] = ("image", "genomics", "presence")
OUTPUT_NAMES: tuple[str, ...] = ("probabilities",)


@dataclass
class ImageGeometry:
    """How a DICOM series becomes the model's image tensor (see radfusion.preprocess)."""

    spatial_dims: int = 3
    # (slices, rows, cols) after resampling; the volume is centre-cropped/padded to it.
    target_shape: tuple[int, int, int] = (32, 48, 48)
    # (slice, row, col) spacing in mm the volume is resampled to before cropping.
    target_spacing: tuple[float, float, float] = (5.0, 8.0, 8.0)
    # HU window mapped linearly to [0, 1] and clipped.
    window: tuple[float, float] = (-150.0, 250.0)
    modalities: tuple[str, ...] = ("CT",)
    min_slices: int = 8


@dataclass
class GenePanel:
    """Genomic features in model order with the training-set normalisation statistics."""

    features: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (len(self.features) == len(self.mean) == len(self.std)):
            raise ValueError("gene panel features, mean and std differ in length")
        if len(set(self.features)) != len(self.features):
            raise ValueError("gene panel has duplicate features")


@dataclass
class ModelContract:
    name: str
    version: str
    task: str
    labels: list[str]
    image: ImageGeometry
    genomics: GenePanel
    # Modalities the model was trained to use; the others are always fed as absent.
    trained_modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    # Modalities a request may omit and still get a prediction.
    may_be_missing: list[str] = field(default_factory=lambda: list(MODALITIES))
    positive_label: str | None = None
    cohort_hash: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    input_names: list[str] = field(default_factory=lambda: list(INPUT_NAMES))
    output_names: list[str] = field(default_factory=lambda: list(OUTPUT_NAMES))
    schema_version: int = CONTRACT_SCHEMA_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> ModelContract:
        data = dict(data)
        if data.get("schema_version") != CONTRACT_SCHEMA_VERSION:
            raise ValueError(f"unsupported contract schema {data.get('schema_version')!r}")
        image = data.pop("image")
        image = ImageGeometry(
            **{
                **image,
                "target_shape": tuple(image["target_shape"]),
                "target_spacing": tuple(image["target_spacing"]),
                "window": tuple(image["window"]),
                "modalities": tuple(image["modalities"]),
            }
        )
        return cls(image=image, genomics=GenePanel(**data.pop("genomics")), **data)

    @classmethod
    def from_json(cls, text: str) -> ModelContract:
        return cls.from_dict(json.loads(text))

    @property
    def uses_image(self) -> bool:
        return "image" in self.trained_modalities

    @property
    def uses_genomics(self) -> bool:
        return "genomics" in self.trained_modalities


def write_contract_to_onnx(onnx_path: Path, contract: ModelContract) -> None:
    """Embed the contract in the ONNX file's metadata_props (in place)."""
    import onnx

    model = onnx.load(str(onnx_path))
    kept = [p for p in model.metadata_props if p.key != CONTRACT_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    prop = model.metadata_props.add()
    prop.key = CONTRACT_METADATA_KEY
    prop.value = contract.to_json()
    model.producer_name = "radfusion"
    onnx.save(model, str(onnx_path))


def read_contract_from_onnx(onnx_path: Path) -> ModelContract:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == CONTRACT_METADATA_KEY:
            return ModelContract.from_json(prop.value)
    raise ValueError(f"{Path(onnx_path).name} carries no radfusion model contract")
