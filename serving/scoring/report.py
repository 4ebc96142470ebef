"""`radfusion report --scores scores.parquet`: what a scoring run gave, as one
self-contained HTML page and a PNG beside it.

Read from the scorer's output (serving/scoring/rows.py): how many studies (or patients,
for a table-only run) were scored and how many failed, the failures by reason (the
kind before the ``:`` of ``error``), the predicted classes and the distribution of the
predicted probabilities. The probability columns are found by their prefix ``prob_``
(the rest of the name is the label, whatever its spelling), never by a label: a binary
model's figure shows its second label's probability (the class its AUROC ranks),
stacked by predicted class; a model with more labels (multi-class, multi-label) one
curve per label; a survival model its risk score.

No identifier appears on the page (no patient, study or series id, no error detail:
only the kinds), so it can leave the hospital like the evidence report. Runs without
torch (a serving install); matplotlib draws the figure where installed, else the page
has the tables only."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from radfusion.errors import UserError
from radfusion.serving.scoring.rows import error_kind
from radfusion.serving.scoring.writer import parts_dir

log = logging.getLogger(__name__)

PROB_PREFIX = "prob_"
RISK_COLUMN = "risk_score"
PREDICTED_COLUMNS = ("predicted_label", "predicted_labels")
BINS = 20
MAX_CURVES = 10  # labels drawn for a model with many (the highest mean probability first)
_READ = ("error", "study_instance_uid", "model_name", "model_version", RISK_COLUMN, *PREDICTED_COLUMNS)

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:.9em}
"""


@dataclass
class ScoresSummary:
    """What one scorer output holds, without any identifier."""

    source: str  # the file's name
    unit: str  # "studies" (an archive run) or "patients" (a table-only run)
    total: int
    scored: int
    failed: int
    failed_by_reason: dict[str, int]  # most frequent first
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)  # label -> scored rows' values
    predicted: list[str | None] = field(default_factory=list)  # per scored row (binary / multi-class)
    predicted_counts: dict[str, int] = field(default_factory=dict)
    risk: np.ndarray | None = None
    models: list[str] = field(default_factory=list)


def read_scores(path: Path) -> pd.DataFrame:
    """The columns of the scorer's output the report needs. A missing file, a file that
    is not Parquet or not the scorer's: a UserError."""
    path = Path(path)
    if not path.is_file():
        if parts_dir(path).is_dir():
            raise UserError(
                f"--scores {path} is not written yet: its scoring run did not finish "
                f"(the rows it committed are in {parts_dir(path)})",
                "run the same radfusion score command again to finish it",
            )
        raise UserError(
            f"--scores {path} {'is a folder' if path.is_dir() else 'does not exist'}",
            "give the Parquet file radfusion score wrote (its --out)",
        )
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(
            f"--scores {path} is not a Parquet file ({exc})", "give the file radfusion score wrote"
        ) from exc
    if "error" not in schema.names:
        raise UserError(
            f"--scores {path} is not a radfusion score output (no error column)", "give the file radfusion score wrote"
        )
    columns = [n for n in schema.names if n in _READ or n.startswith(PROB_PREFIX)]
    return pq.read_table(path, columns=columns).to_pandas()


def summarise(frame: pd.DataFrame, source: str = "") -> ScoresSummary:
    failed_rows = frame["error"].notna()
    ok = frame[~failed_rows]
    reasons = pd.Series([error_kind(e) for e in frame.loc[failed_rows, "error"]], dtype=object).value_counts()
    archive = "study_instance_uid" in frame and frame["study_instance_uid"].notna().any()
    summary = ScoresSummary(
        source=source,
        unit="studies" if archive else "patients",
        total=len(frame),
        scored=len(ok),
        failed=int(failed_rows.sum()),
        failed_by_reason={str(k): int(v) for k, v in reasons.sort_index().sort_values(ascending=False).items()},
        models=sorted({f"{n}:{v}" for n, v in zip(frame["model_name"], frame["model_version"], strict=True)})
        if {"model_name", "model_version"} <= set(frame.columns)
        else [],
    )
    for column in (c for c in frame.columns if c.startswith(PROB_PREFIX)):
        values = pd.to_numeric(ok[column], errors="coerce").dropna().to_numpy(dtype=float)
        summary.probabilities[column.removeprefix(PROB_PREFIX)] = values
    if "predicted_label" in ok:
        summary.predicted = [None if pd.isna(v) else str(v) for v in ok["predicted_label"]]
        counts = pd.Series(summary.predicted, dtype=object).value_counts()
    elif "predicted_labels" in ok:  # multi-label: a list per row, each label counted
        labels = [str(v) for row in ok["predicted_labels"] if row is not None for v in row]
        counts = pd.Series(labels, dtype=object)
        counts = counts.value_counts()
    else:
        counts = pd.Series(dtype=int)
    summary.predicted_counts = {str(k): int(v) for k, v in counts.sort_index().sort_values(ascending=False).items()}
    if RISK_COLUMN in ok:
        summary.risk = pd.to_numeric(ok[RISK_COLUMN], errors="coerce").dropna().to_numpy(dtype=float)
    return summary


def _binary(summary: ScoresSummary) -> bool:
    return len(summary.probabilities) == 2 and bool(summary.predicted)


def draw(summary: ScoresSummary) -> Any:
    """The figure (a matplotlib Figure): the predictions' distribution (left) and the
    rows scored and failed by reason (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.2, 1]})
    edges = np.linspace(0.0, 1.0, BINS + 1)
    if _binary(summary):
        label = list(summary.probabilities)[1]
        values = summary.probabilities[label]
        classes = sorted({p for p in summary.predicted if p is not None})
        predicted = np.array(summary.predicted, dtype=object)
        stacked = [values[predicted == c] for c in classes]
        left.hist(stacked, bins=edges, stacked=True, label=[f"predicted {c}" for c in classes])
        left.set(xlabel=f"P({label})", ylabel=summary.unit, title=f"Predicted probability of {label}")
        left.legend(fontsize=8)
    elif summary.probabilities:
        means = {k: float(np.mean(v)) if len(v) else 0.0 for k, v in summary.probabilities.items()}
        shown = sorted(means, key=lambda k: -means[k])
        for label in shown[:MAX_CURVES]:
            left.hist(summary.probabilities[label], bins=edges, histtype="step", lw=1.5, label=label)
        left.set(xlabel="predicted probability", ylabel=summary.unit, title="Predicted probability per label")
        left.legend(fontsize=8)
    elif summary.risk is not None and len(summary.risk):
        left.hist(summary.risk, bins=BINS, color="tab:gray")
        left.set(xlabel="risk score", ylabel=summary.unit, title="Predicted risk")
    else:
        left.text(0.5, 0.5, "no prediction", ha="center", va="center", transform=left.transAxes)
        left.set_axis_off()

    names = ["scored", *summary.failed_by_reason]
    counts = [summary.scored, *summary.failed_by_reason.values()]
    colours = ["tab:green", *["tab:red"] * len(summary.failed_by_reason)]
    rows = max(len(names), 4)  # a lone bar as thin as one of several, at the top
    y = np.arange(len(names))[::-1] + rows - len(names)
    bars = right.barh(y, counts, color=colours, height=0.6)
    right.bar_label(bars, labels=[str(c) for c in counts], padding=3, fontsize=8)
    right.set_yticks(y, names, fontsize=8)
    right.set_ylim(-0.7, rows - 0.3)
    right.set_xlim(0, max([*counts, 1]) * 1.15)
    right.set(xlabel=summary.unit, title=f"{summary.scored} scored, {summary.failed} failed of {summary.total}")
    fig.tight_layout()
    return fig


def figure_png(summary: ScoresSummary) -> bytes | None:
    """The figure as PNG bytes; None where matplotlib is not installed (a serving
    install without the train extra)."""
    try:
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        log.warning("matplotlib is not installed: the scores report has its tables and no figure")
        return None
    fig = draw(summary)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _esc(value: object) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _share(n: int, of: int) -> str:
    return f"{n / of:.1%}" if of else "–"


def render_html(summary: ScoresSummary, png: bytes | None) -> str:
    s = summary
    title = f"radfusion scores: {s.source}" if s.source else "radfusion scores"
    overview = _table(
        ["", "value"],
        [
            [s.unit, s.total],
            ["scored", f"{s.scored} ({_share(s.scored, s.total)})"],
            ["failed", f"{s.failed} ({_share(s.failed, s.total)})"],
            ["model", ", ".join(s.models) or "–"],
            ["written", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")],
        ],
    )
    parts = [f"<h2>Overview</h2>{overview}"]
    if png is not None:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<img alt="predictions and failures" src="data:image/png;base64,{data}">')
    if s.failed_by_reason:
        rows: list[list[object]] = [[k, n, _share(n, s.total)] for k, n in s.failed_by_reason.items()]
        failures = _table(["failure reason", s.unit, "share of all"], rows) + (
            "<p class=note>The kind of each failed row's error (docs/errors.md says what each means and what to "
            "do); the rows' own messages are in the Parquet file's error column.</p>"
        )
    else:
        failures = "<p>No failures.</p>"
    parts.append(f"<h2>Failures</h2>{failures}")
    predictions = ""
    if s.predicted_counts:
        rows = [[k, n, _share(n, s.scored)] for k, n in s.predicted_counts.items()]
        predictions += _table(["predicted", s.unit, "share of scored"], rows)
    if s.probabilities:
        rows = [
            [f"{PROB_PREFIX}{label}", len(v), *(f"{x:.3f}" for x in _quantiles(v))]
            for label, v in s.probabilities.items()
        ]
        predictions += _table(["column", "values", "mean", "10%", "median", "90%"], rows)
    if s.risk is not None and len(s.risk):
        predictions += _table(
            ["column", "values", "mean", "10%", "median", "90%"],
            [[RISK_COLUMN, len(s.risk), *(f"{x:.3f}" for x in _quantiles(s.risk))]],
        )
    if predictions:
        parts.append(f"<h2>Predictions (scored {s.unit})</h2>{predictions}")
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_esc(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{_esc(title)}</h1>{''.join(parts)}</body></html>"
    )


def _quantiles(values: np.ndarray) -> list[float]:
    if not len(values):
        return [float("nan")] * 4
    return [float(np.mean(values)), *(float(q) for q in np.quantile(values, [0.1, 0.5, 0.9]))]


def write_scores_report(scores: Path, out: Path | None = None) -> tuple[Path, Path | None]:
    """``<stem>.html`` (and ``<stem>.png``) in ``out`` (default: the Parquet file's
    folder) for the scorer's output ``scores``. Returns both paths (the PNG's None
    without matplotlib)."""
    scores = Path(scores)
    frame = read_scores(scores)
    summary = summarise(frame, scores.name)
    out = Path(out) if out is not None else scores.parent
    out.mkdir(parents=True, exist_ok=True)
    png = figure_png(summary)
    png_path = None
    if png is not None:
        png_path = out / f"{scores.stem}.png"
        png_path.write_bytes(png)
    html_path = out / f"{scores.stem}.html"
    html_path.write_text(render_html(summary, png), encoding="utf-8")
    log.info("scores report: %d %s, %d scored, %d failed", summary.total, summary.unit, summary.scored, summary.failed)
    return html_path, png_path
