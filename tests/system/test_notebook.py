"""The walkthrough notebook runs top to bottom with a real kernel (nbclient), and says
what it found."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.support.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow

NOTEBOOK = PROJECT_ROOT / "notebooks" / "walkthrough.ipynb"


def test_walkthrough_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    text = "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "drivers in the top 20" in text
    assert "log-rank p:" in text
    assert "recommendation equals the true best treatment" in text
    images = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == 2  # one saliency overlay per explained study
