"""An exported model file leaves the training site: it carries the contract and the
graph, not the exporting machine's file paths (the dynamo exporter's stack traces)."""

from __future__ import annotations

from pathlib import Path

import onnx

from tests.support.paths import PROJECT_ROOT


def test_exported_model_carries_no_stack_traces_or_local_paths(tiny_onnx_model: Path) -> None:
    model = onnx.load(str(tiny_onnx_model))
    node_keys = {p.key for node in model.graph.node for p in node.metadata_props}
    assert "pkg.torch.onnx.stack_trace" not in node_keys
    assert "pkg.torch.onnx.name_scopes" in node_keys  # other exporter metadata is kept
    text = model.SerializeToString()
    assert str(PROJECT_ROOT).encode() not in text
    assert [p.key for p in model.metadata_props] == ["radfusion.contract"]
