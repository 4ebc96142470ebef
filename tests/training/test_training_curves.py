"""Training curves from the CSV logger's metrics.csv, written as Lightning writes them
(lr rows without an epoch, train and val values on rows of their own), across the
versions a resumed run leaves: stitched in order, a later version replacing the
earlier from its first epoch on, a validate run's version left out; drawn with one
point per epoch; written after fit without ever failing it; shown in the report."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from radfusion.training import curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADER = ["epoch", "lr-AdamW", "step", "train/loss", "val/auroc", "val/loss"]


def train_loss(version: int, epoch: int) -> float:
    return round(1.0 - 0.1 * epoch + 0.01 * version, 4)


def auroc(version: int, epoch: int) -> float:
    return round(0.5 + 0.05 * epoch + 0.001 * version, 4)


def write_version(logs: Path, version: int, epochs: range, fit: bool = True) -> Path:
    """metrics.csv as CSVLogger writes it: an lr row per logged step (no epoch), then per
    epoch a validation row and a training row (fit), or validation rows only."""
    folder = logs / f"version_{version}"
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(HEADER)
        for epoch in epochs:
            step = 10 * epoch + 9
            out.writerow(["", 0.001, step - 5, "", "", ""])
            out.writerow([epoch, "", step, "", auroc(version, epoch), 0.7 - 0.05 * epoch])
            if fit:
                out.writerow([epoch, "", step, train_loss(version, epoch), "", ""])
    return folder / "metrics.csv"


@pytest.fixture
def resumed_run(tmp_path) -> Path:
    """Epochs 0-4, then a resume at epoch 3 that ran to 6, then a validate run."""
    logs = tmp_path / "run" / "logs"
    write_version(logs, 0, range(5))
    write_version(logs, 1, range(3, 7))
    write_version(logs, 2, range(1), fit=False)  # `radfusion train validate` into the same folder
    return tmp_path / "run"


def test_versions_are_stitched_later_ones_replacing_repeated_epochs(resumed_run):
    found = curves.load(resumed_run)
    assert found.epochs == [0, 1, 2, 3, 4, 5, 6]
    assert [p.parent.name for p in found.versions] == ["version_0", "version_1"]  # the validate run left out
    assert found.resumed_at == [3]
    expected = [train_loss(0, e) for e in range(3)] + [train_loss(1, e) for e in range(3, 7)]
    assert found.frame["train/loss"].tolist() == pytest.approx(expected)
    assert found.frame["val/auroc"].tolist() == pytest.approx([auroc(0 if e < 3 else 1, e) for e in range(7)])
    assert found.losses == ["train/loss", "val/loss"] and found.metrics == ["val/auroc"]
    assert curves.summary(found, "val/auroc") == (
        "7 epochs (0–6) from 2 runs, resumed at epoch 3; best val/auroc 0.801 at epoch 6."
    )


def test_a_resume_that_restarts_earlier_drops_the_replaced_epochs(tmp_path):
    logs = tmp_path / "logs"
    write_version(logs, 0, range(6))
    write_version(logs, 1, range(2, 4))  # resumed from epoch 2's checkpoint, stopped after 3
    found = curves.stitch(curves.version_files(logs))
    assert found.epochs == [0, 1, 2, 3]  # epochs 4 and 5 of version 0 belong to the run it replaced
    assert found.frame.loc[3, "train/loss"] == train_loss(1, 3)


def test_versions_are_read_in_numeric_order(tmp_path):
    for version in (10, 2, 9):
        write_version(tmp_path, version, range(1))
    assert [p.parent.name for p in curves.version_files(tmp_path)] == ["version_2", "version_9", "version_10"]


def test_the_figure_has_one_point_per_epoch_and_marks_the_resume(resumed_run):
    import matplotlib.pyplot as plt

    fig = curves.draw(curves.load(resumed_run))
    losses, metrics = fig.axes
    lines = {
        line.get_label(): line for ax in fig.axes for line in ax.get_lines() if not line.get_label().startswith("_")
    }
    assert sorted(lines) == ["train/loss", "val/auroc", "val/loss"]
    for line in lines.values():
        assert list(line.get_xdata()) == list(range(7))
    assert list(lines["val/auroc"].get_ydata()) == pytest.approx([auroc(0 if e < 3 else 1, e) for e in range(7)])
    assert lines["val/auroc"] in metrics.get_lines() and lines["train/loss"] in losses.get_lines()
    resumes = [line.get_xdata()[0] for line in losses.get_lines() if line.get_linestyle() == ":"]
    assert resumes == [3]
    plt.close(fig)


def test_write_curves_writes_a_png_in_the_run_folder(resumed_run):
    path = curves.write_curves(resumed_run)
    assert path == resumed_run / "training_curves.png"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    assert Image.open(io.BytesIO(data)).size == (920, 360)  # two panels at 100 dpi


def test_no_metrics_is_a_warning_and_no_file(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="radfusion.training.curves"):
        assert curves.write_curves(tmp_path) is None
    assert "no training curves" in caplog.text and not (tmp_path / "training_curves.png").exists()


def _trainer(root: Path, loggers: list) -> SimpleNamespace:
    return SimpleNamespace(default_root_dir=str(root), loggers=loggers)


def test_after_fit_writes_the_curves_and_never_fails(resumed_run, caplog):
    from lightning.pytorch.loggers import CSVLogger

    from radfusion.training.cli import write_training_curves

    logger = CSVLogger(save_dir=str(resumed_run), name="logs", version=1)
    assert write_training_curves(_trainer(resumed_run, [logger])) == resumed_run / "training_curves.png"

    with caplog.at_level(logging.WARNING):
        # Another logger (TensorBoard, MLflow): no metrics.csv to draw from.
        assert write_training_curves(_trainer(resumed_run / "other", [])) is None
        # A damaged metrics.csv: a warning, not a failed fit.
        (resumed_run / "logs" / "version_1" / "metrics.csv").write_bytes(b'\x00\xff,\n"')
        (resumed_run / "training_curves.png").unlink()
        assert write_training_curves(_trainer(resumed_run, [logger])) is None
    assert caplog.text.count("no training curves") == 2


def test_the_report_shows_the_curves_of_the_checkpoints_run(resumed_run, tmp_path):
    from radfusion.training.report.build import _training

    checkpoint = resumed_run / "checkpoints" / "best.ckpt"
    html = _training(tmp_path / "elsewhere", checkpoint, "val/auroc")
    assert html.count('<img alt="training curves" src="data:image/png;base64,') == 1
    assert "7 epochs (0–6) from 2 runs, resumed at epoch 3; best val/auroc 0.801 at epoch 6." in html
    assert _training(tmp_path / "elsewhere", tmp_path / "x" / "checkpoints" / "best.ckpt", None) == ""
