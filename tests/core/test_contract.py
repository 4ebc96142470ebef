"""The model contract: JSON round trip, embedding in and reading from ONNX metadata,
and the gene panel's own validation."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from radfusion.contract import (
    CONTRACT_METADATA_KEY,
    ClinicalSpec,
    GenePanel,
    ImageGeometry,
    ModelContract,
    OmicsBlock,
    read_contract_from_onnx,
    write_contract_to_onnx,
)


def full_contract() -> ModelContract:
    """A contract with every field away from its default."""
    return ModelContract(
        name="fusion-ct",
        version="2.1.0",
        task="classification:response",
        labels=["non-responder", "responder"],
        image=ImageGeometry(
            spatial_dims=3,
            target_shape=(16, 24, 24),
            target_spacing=(5.0, 7.5, 7.5),
            window=(-160.0, 240.0),
            modalities=("CT", "MR"),
            min_slices=6,
        ),
        omics=[
            OmicsBlock(name="expression", features=["TP53", "EGFR"], mean=[5.5, 3.25], std=[1.5, 0.75]),
            OmicsBlock(name="mutation", features=["KRAS_mut"], mean=[0.2], std=[0.4], fill=[0.0], max_imputed=1.0),
        ],
        clinical=ClinicalSpec(
            numeric={"age": [61.0, 9.5]}, categorical={"treatment": ["chemo", "targeted"]}, treatment="treatment"
        ),
        trained_modalities=["image", "genomics", "clinical"],
        may_be_missing=["genomics", "clinical"],
        temperature=1.7,
        positive_label="responder",
        cohort_hash="sha256:abc123",
        metrics={"val_auroc": 0.91, "val_brier": 0.12},
        versions={"radfusion": "0.1.0", "torch": "2.5"},
    )


def tiny_onnx(path: Path, metadata: dict[str, str] | None = None) -> Path:
    """y = x + 1, with optional extra metadata properties."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "tiny", [x], [y], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, metadata or {})
    onnx.save(model, str(path))
    return path


# ------------------------------------------------------------------ JSON


def test_json_round_trip_restores_an_equal_contract() -> None:
    contract = full_contract()
    text = contract.to_json()
    again = ModelContract.from_json(text)
    assert again == contract
    # tuples come back as tuples (json has only lists)
    assert again.image.target_shape == (16, 24, 24) and isinstance(again.image.modalities, tuple)
    assert again.to_json() == text  # sorted keys: stable text


def test_json_is_plain_and_carries_the_schema_version() -> None:
    data = json.loads(full_contract().to_json())
    assert data["schema_version"] == 2
    assert data["input_names"] == ["image", "genomics", "clinical", "presence"]
    assert data["output_names"] == ["logits"]
    assert [b["features"] for b in data["omics"]] == [["TP53", "EGFR"], ["KRAS_mut"]]
    assert data["clinical"]["categorical"] == {"treatment": ["chemo", "targeted"]}
    assert data["temperature"] == 1.7
    assert data["image"]["window"] == [-160.0, 240.0]


def test_unknown_schema_version_is_refused() -> None:
    data = json.loads(full_contract().to_json())
    data["schema_version"] = 1
    with pytest.raises(ValueError, match="unsupported contract schema 1"):
        ModelContract.from_dict(data)
    del data["schema_version"]
    with pytest.raises(ValueError, match="unsupported contract schema None"):
        ModelContract.from_dict(data)


def test_modalities_properties() -> None:
    contract = full_contract()
    assert contract.uses_image and contract.uses_genomics
    image_only = dataclasses.replace(contract, trained_modalities=["image"])
    assert image_only.uses_image and not image_only.uses_genomics


# ------------------------------------------------------------------ ONNX metadata


def test_onnx_round_trip_keeps_other_metadata_and_the_model_runs(tmp_path: Path) -> None:
    path = tiny_onnx(tmp_path / "m.onnx", {"author": "lab", "note": "keep me"})
    contract = full_contract()
    write_contract_to_onnx(path, contract)
    assert read_contract_from_onnx(path) == contract
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["author"] == "lab" and props["note"] == "keep me"
    assert props[CONTRACT_METADATA_KEY] == contract.to_json()
    assert model.producer_name == "radfusion"
    onnx.checker.check_model(model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.array([[1.0, 2.0]], np.float32)})[0]
    assert out.tolist() == [[2.0, 3.0]]
    assert session.get_modelmeta().custom_metadata_map[CONTRACT_METADATA_KEY] == contract.to_json()


def test_writing_again_replaces_the_contract(tmp_path: Path) -> None:
    path = tiny_onnx(tmp_path / "m.onnx")
    write_contract_to_onnx(path, full_contract())
    newer = dataclasses.replace(full_contract(), version="2.2.0", metrics={"val_auroc": 0.93})
    write_contract_to_onnx(path, newer)
    keys = [p.key for p in onnx.load(str(path)).metadata_props]
    assert keys.count(CONTRACT_METADATA_KEY) == 1
    assert read_contract_from_onnx(path) == newer


def test_onnx_without_contract_raises_value_error(tmp_path: Path) -> None:
    path = tiny_onnx(tmp_path / "plain.onnx", {"author": "lab"})
    with pytest.raises(ValueError, match=r"^plain\.onnx carries no radfusion model contract$"):
        read_contract_from_onnx(path)


def test_exported_fusion_model_carries_the_training_contract(
    tiny_onnx_model: Path, tiny_contract, tmp_path: Path
) -> None:
    assert read_contract_from_onnx(tiny_onnx_model) == tiny_contract
    copy = tmp_path / "model.onnx"
    shutil.copy(tiny_onnx_model, copy)
    bumped = dataclasses.replace(tiny_contract, version="0.0.2-test")
    write_contract_to_onnx(copy, bumped)
    assert read_contract_from_onnx(copy).version == "0.0.2-test"
    session = ort.InferenceSession(str(copy), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == tiny_contract.input_names
    assert [o.name for o in session.get_outputs()] == tiny_contract.output_names


# ------------------------------------------------------------------ gene panel


def test_gene_panel_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        GenePanel(features=["A", "B"], mean=[0.0], std=[1.0, 1.0])
    with pytest.raises(ValueError, match="differ in length"):
        GenePanel(features=["A"], mean=[0.0], std=[1.0, 1.0])


def test_gene_panel_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="duplicate features"):
        GenePanel(features=["A", "B", "A"], mean=[0.0] * 3, std=[1.0] * 3)


def test_contract_from_json_validates_the_panel() -> None:
    data = json.loads(full_contract().to_json())
    data["omics"][0]["std"] = data["omics"][0]["std"][:-1]
    with pytest.raises(ValueError, match="differ in length"):
        ModelContract.from_dict(data)


def test_modalities_and_combined_panel_follow_the_blocks() -> None:
    contract = full_contract()
    assert contract.modalities == ["image", "expression", "mutation", "clinical"]
    assert contract.genomics.features == ["TP53", "EGFR", "KRAS_mut"]
    assert contract.clinical_width == 3
    assert contract.trains("mutation") and contract.may_miss("expression") and not contract.may_miss("image")


def test_unknown_modality_and_clashing_blocks_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown modalities \\['proteomics'\\]"):
        dataclasses.replace(full_contract(), trained_modalities=["image", "proteomics"])
    block = OmicsBlock(name="expression", features=["TP53"], mean=[0.0], std=[1.0])
    with pytest.raises(ValueError, match="unique"):
        dataclasses.replace(full_contract(), omics=[block, block])
