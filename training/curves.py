"""Training curves from Lightning's CSVLogger: ``metrics.csv`` of every version of a
run, stitched into one curve per metric against the epoch.

A run writes ``<run>/<logger name>/version_N/metrics.csv`` (configs/trainer/cpu.yaml:
the logger writes under ``trainer.default_root_dir``, name ``logs``); a resume
(``--ckpt_path last``) starts ``version_N+1``. The versions are read in order and a
later one replaces the earlier ones from its first epoch on: a resume restarts that
epoch, and whatever an earlier version logged from there on belongs to the run it
replaced. Versions with no ``train/`` value (``radfusion train validate`` or ``test``
writing into the same folder) are left out: they are not part of the fit.

Per epoch each metric is its last logged value of that epoch (the module logs
``train/loss`` and the ``val/`` metrics once per epoch; ``lr-*`` rows carry no epoch).
``radfusion train fit`` writes the figure as ``training_curves.png`` in the run folder
(training/cli.py), the evidence report embeds it (training/report/build.py)."""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

CURVES_FILE = "training_curves.png"
METRICS_FILE = "metrics.csv"
_VERSION = re.compile(r"version_(\d+)")


@dataclass
class Curves:
    """Stitched metrics: ``frame`` indexed by epoch (one row per epoch, a column per
    ``train/`` or ``val/`` metric, NaN where an epoch has none), the versions read and
    the epochs where a later version took over."""

    frame: pd.DataFrame
    versions: list[Path] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)

    @property
    def epochs(self) -> list[int]:
        return [int(e) for e in self.frame.index]

    @property
    def losses(self) -> list[str]:
        return [c for c in self.frame.columns if c.endswith("loss")]

    @property
    def metrics(self) -> list[str]:
        """Everything but the losses: the validation metrics (val/auroc, val/cindex, ...)."""
        return [c for c in self.frame.columns if not c.endswith("loss")]

    @property
    def empty(self) -> bool:
        return self.frame.empty


def _version_key(path: Path) -> tuple[int, float]:
    """version_N by N; a version given a name of its own after those, by time written."""
    match = _VERSION.fullmatch(path.parent.name)
    return (0, int(match.group(1))) if match else (1, path.stat().st_mtime)


def version_files(logs: Path) -> list[Path]:
    """``metrics.csv`` of each version under a logger folder, oldest version first."""
    return sorted(Path(logs).glob(f"*/{METRICS_FILE}"), key=_version_key)


def find_logs(run_dir: Path) -> Path | None:
    """The logger folder of a run folder: the run folder itself or a folder in it whose
    versions hold ``metrics.csv`` (the most recently written where several do)."""
    run_dir = Path(run_dir)
    candidates = [d for d in (run_dir, *sorted(p for p in run_dir.glob("*") if p.is_dir())) if version_files(d)]
    if not candidates:
        return None
    return max(candidates, key=lambda d: max(f.stat().st_mtime for f in version_files(d)))


def read_version(path: Path) -> pd.DataFrame:
    """One version's metrics per epoch (the last value logged in each epoch); empty
    when the version logged no ``train/`` value (not a fit)."""
    raw = pd.read_csv(path)
    columns = [c for c in raw.columns if c.startswith(("train/", "val/"))]
    if "epoch" not in raw.columns or not columns:
        return pd.DataFrame()
    rows = raw.dropna(subset=["epoch"])
    if not any(c.startswith("train/") and rows[c].notna().any() for c in columns):
        return pd.DataFrame()
    per_epoch = rows.groupby(rows["epoch"].astype(int))[columns].last()
    per_epoch.index.name = "epoch"
    return per_epoch.dropna(how="all")


def stitch(files: list[Path]) -> Curves:
    """The versions' metrics in order, each later version replacing the earlier ones
    from its first epoch on."""
    frame = pd.DataFrame()
    used: list[Path] = []
    resumed_at: list[int] = []
    for path in files:
        version = read_version(path)
        if version.empty:
            continue
        start = int(version.index.min())
        if not frame.empty:
            frame = frame[frame.index < start]
            resumed_at.append(start)
        frame = version if frame.empty else pd.concat([frame, version])
        used.append(path)
    if not frame.empty:
        frame.index = frame.index.astype(int)
        frame.index.name = "epoch"
    return Curves(frame, used, resumed_at)


def load(run_dir: Path, logs: Path | None = None) -> Curves:
    """The stitched curves of a run folder (``logs``: its logger folder, when known)."""
    logs = logs if logs is not None else find_logs(run_dir)
    return stitch(version_files(logs)) if logs is not None else Curves(pd.DataFrame())


def draw(curves: Curves):
    """The figure: losses against the epoch (left) and the other metrics, the
    validation ones (right, when the module logs any); dotted lines where a resumed
    version took over."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(title, names) for title, names in (("Loss", curves.losses), ("Metrics", curves.metrics)) if names]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (title, names) in zip(axes[0], panels, strict=True):
        for name in names:
            series = curves.frame[name].dropna()
            ax.plot(series.index, series.to_numpy(), "o-", ms=3, lw=1.5, label=name)
        for epoch in curves.resumed_at:
            ax.axvline(epoch, color="k", ls=":", lw=0.8)
        ax.set(xlabel="epoch", title=title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    if curves.resumed_at:
        fig.suptitle(f"resumed at epoch {', '.join(map(str, curves.resumed_at))} (dotted)", fontsize=9)
    fig.tight_layout()
    return fig


def png(curves: Curves) -> bytes:
    import matplotlib.pyplot as plt

    fig = draw(curves)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def summary(curves: Curves, monitor: str | None = None) -> str:
    """One sentence: epochs, versions stitched, the best of the monitored metric."""
    epochs = curves.epochs
    plural = "epoch" if len(epochs) == 1 else "epochs"
    text = f"{len(epochs)} {plural} ({epochs[0]}–{epochs[-1]})" if epochs else "no epochs"
    if len(curves.versions) > 1:
        text += f" from {len(curves.versions)} runs, resumed at epoch {', '.join(map(str, curves.resumed_at))}"
    # Higher is better for what the module monitors (val/auroc, val/cindex: checkpoints in mode max).
    validation = [c for c in curves.metrics if c.startswith("val/")]
    monitor = monitor if monitor in curves.frame.columns else next(iter(validation), None)
    if monitor is not None and curves.frame[monitor].notna().any():
        best = curves.frame[monitor].idxmax()
        text += f"; best {monitor} {curves.frame[monitor].max():.3f} at epoch {int(best)}"
    return text + "."


def write_curves(run_dir: Path, logs: Path | None = None) -> Path | None:
    """``training_curves.png`` in ``run_dir`` from its metrics; None (and a warning)
    where there are none."""
    run_dir = Path(run_dir)
    curves = load(run_dir, logs)
    if curves.empty:
        where = logs if logs is not None else run_dir
        log.warning(
            "no training curves: no %s with train/ metrics under %s (the CSV logger writes it)", METRICS_FILE, where
        )
        return None
    path = run_dir / CURVES_FILE
    path.write_bytes(png(curves))
    log.info("training curves: %s (%s)", path, summary(curves).rstrip("."))
    return path
