"""`radfusion evaluate`'s table as a plot (evaluation.png beside metrics.json): a panel
per metric, a row per model in the table's order, each presence pattern's value, the
baselines' bootstrap intervals and the seeds' values where the results have them."""

from __future__ import annotations

import logging

import pytest

from radfusion.training.evaluate import FIGURE_FILE, write_figure
from radfusion.training.report.figures import evaluation_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

RESULTS = {
    "fusion": {
        "kind": "deep",
        "modalities": ["image", "genomics", "clinical"],
        "auroc_observed": 0.91,
        "auroc_image_only": 0.78,
        "auroc_genomics_only": 0.8,
        "n_observed": 160,
        "seeds": {"metric": "auroc", "values": [0.91, 0.88, 0.9]},
    },
    "image_only": {"kind": "deep", "modalities": ["image", "clinical"], "auroc_observed": 0.77, "n_observed": 160},
    "logistic (genomics+clinical)": {
        "kind": "baseline",
        "modalities": ["genomics", "clinical"],
        "auroc_observed": 0.75,
        "auroc_ci95": [0.68, 0.83],
        "n_observed": 160,
    },
    "rsf (skipped)": {"kind": "baseline", "modalities": ["genomics"], "skipped": "too wide"},
    "cox": {
        "kind": "deep",
        "modalities": ["image", "genomics"],
        "cindex_observed": 0.7,
        "td_auc_observed": 0.74,
        "n_observed": 150,
    },
}


def _points(ax) -> dict[str, list[float]]:
    return {line.get_gid(): list(line.get_xdata()) for line in ax.get_lines() if line.get_gid()}


def test_a_panel_per_metric_and_a_row_per_model_with_its_values():
    import matplotlib.pyplot as plt

    fig = evaluation_figure(RESULTS)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["AUROC", "C-index", "td-AUC"]
    auroc, cindex, td_auc = fig.axes
    # Top to bottom in the table's order; a skipped baseline has no row.
    rows = [t.get_text() for t in auroc.get_yticklabels()][::-1]
    assert rows == ["fusion", "image_only", "logistic (genomics+clinical)"]
    assert [t.get_text() for t in cindex.get_yticklabels()] == ["cox"]
    points = _points(auroc)
    assert points["fusion|observed"] == [0.91] and points["fusion|image_only"] == [0.78]
    assert points["fusion|genomics_only"] == [0.8] and points["fusion|seeds"] == [0.91, 0.88, 0.9]
    assert points["image_only|observed"] == [0.77] and "image_only|image_only" not in points
    assert _points(td_auc) == {"cox|observed": [0.74]}
    intervals = {c.get_gid(): c.get_segments()[0][:, 0].tolist() for c in auroc.collections if c.get_gid()}
    assert intervals == {"logistic (genomics+clinical)|ci95": [0.68, 0.83]}
    shown = sorted(t.get_text() for t in auroc.texts)
    assert shown == ["0.750", "0.770", "0.910"]
    assert "160 test patients" in fig._suptitle.get_text()
    plt.close(fig)


def test_write_figure_writes_the_png_beside_the_metrics(tmp_path):
    path = write_figure(RESULTS, tmp_path / FIGURE_FILE)
    assert path == tmp_path / "evaluation.png"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000


def test_no_metric_at_all_is_a_warning_not_a_failed_evaluation(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="radfusion.training.evaluate"):
        assert write_figure({"rsf": {"kind": "baseline", "failed": "boom"}}, tmp_path / FIGURE_FILE) is None
    assert "no evaluation.png: no model has a test metric" in caplog.text
    assert not (tmp_path / FIGURE_FILE).exists()


@pytest.mark.parametrize("value", [float("nan"), None])
def test_an_undefined_metric_is_left_out(value):
    import matplotlib.pyplot as plt

    results = {"tiny": {"kind": "deep", "modalities": ["image"], "auroc_observed": value, "n_observed": 4}}
    fig = evaluation_figure(results)
    assert _points(fig.axes[0]) == {} and not fig.axes[0].texts
    plt.close(fig)
