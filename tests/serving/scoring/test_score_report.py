"""`radfusion report --scores`: a scoring run's predictions and failures as a page and
a figure, from a Parquet file with the scorer's own schema (serving/scoring/rows.py):
the counts and the failure reasons on the page and in the bars, the probabilities
read by their ``prob_`` prefix whatever the labels' spelling, nothing that names a
patient or a study, and the mistakes a user makes as one line."""

from __future__ import annotations

import base64
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from radfusion.contract import ImageGeometry, ModelContract
from radfusion.serving.scoring.report import draw, read_scores, summarise, write_scores_report
from radfusion.serving.scoring.rows import new_row, output_schema
from radfusion.serving.scoring.writer import parts_dir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Probability of the second label for the scored rows; the failed rows' errors.
SCORED = [0.05, 0.1, 0.3, 0.62, 0.8, 0.97]
FAILED = [
    "corrupt_dicom: pixel data of 1.2.3.999 cannot be decoded",
    "no_image_series: no CT series in study 1.2.3.998",
    "corrupt_dicom: truncated file",
]


def contract(labels: list[str], task: str = "classification:response") -> ModelContract:
    return ModelContract(
        name="tiny-fusion",
        version="0.0.1-test",
        task=task,
        labels=labels,
        image=ImageGeometry(
            spatial_dims=3,
            target_shape=(8, 16, 16),
            target_spacing=(6.0, 12.0, 12.0),
            window=(-150.0, 250.0),
            modalities=("CT",),
            min_slices=4,
        ),
        omics=[],
    )


def write_scores(path, labels: list[str], archive: bool = True):
    """A scorer output: SCORED rows with predictions, FAILED rows with errors only; the
    probability columns named ``prob_<label>`` exactly as ``labels`` spell them (the
    schema's own spelling of the labels aside)."""
    c = contract(["a", "b"])
    schema = output_schema(c)
    schema = pa.schema(
        [
            f.with_name({"prob_a": f"prob_{labels[0]}", "prob_b": f"prob_{labels[1]}"}.get(f.name, f.name))
            for f in schema
        ]
    )
    rows = []
    for i, p in enumerate(SCORED):
        row = new_row(c, f"1.2.3.{i}" if archive else None, f"PATIENT{i}", 4)
        row.update({f"prob_{labels[0]}": 1 - p, f"prob_{labels[1]}": p, "predicted_label": labels[int(p >= 0.5)]})
        rows.append(row)
    for j, error in enumerate(FAILED):
        rows.append({**new_row(c, f"1.2.3.99{j}" if archive else None, f"PATIENTX{j}", 4), "error": error})
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


# The labels as columns were named before SQL-safe names, and as they are named now.
LABELINGS = [["non-responder", "responder"], ["non_responder", "responder"]]


@pytest.mark.parametrize("labels", LABELINGS, ids=["hyphen", "underscore"])
def test_summary_counts_the_failures_by_reason_and_reads_probabilities_by_prefix(tmp_path, labels):
    summary = summarise(read_scores(write_scores(tmp_path / "scores.parquet", labels)), "scores.parquet")
    assert (summary.total, summary.scored, summary.failed, summary.unit) == (9, 6, 3, "studies")
    assert summary.failed_by_reason == {"corrupt_dicom": 2, "no_image_series": 1}
    assert list(summary.failed_by_reason) == ["corrupt_dicom", "no_image_series"]  # most frequent first
    assert list(summary.probabilities) == labels
    np.testing.assert_allclose(summary.probabilities[labels[1]], SCORED)
    assert summary.predicted_counts == {labels[0]: 3, labels[1]: 3}
    assert summary.models == ["tiny-fusion:0.0.1-test"]


def test_a_table_only_run_counts_patients(tmp_path):
    summary = summarise(read_scores(write_scores(tmp_path / "s.parquet", LABELINGS[1], archive=False)))
    assert summary.unit == "patients" and summary.total == 9


def test_the_figure_shows_the_second_labels_probability_and_one_bar_per_reason(tmp_path):
    labels = LABELINGS[1]
    fig = draw(summarise(read_scores(write_scores(tmp_path / "scores.parquet", labels))))
    left, right = fig.axes
    assert left.get_xlabel() == "P(responder)"
    # Stacked by predicted class: every scored row in one bin, the failed ones nowhere.
    assert sum(p.get_height() for p in left.patches) == len(SCORED)
    assert sorted(t.get_text() for t in left.get_legend().get_texts()) == [
        "predicted non_responder",
        "predicted responder",
    ]
    bars = {
        label.get_text(): patch.get_width()
        for label, patch in zip(right.get_yticklabels(), sorted(right.patches, key=lambda p: -p.get_y()), strict=True)
    }
    assert bars == {"scored": 6, "corrupt_dicom": 2, "no_image_series": 1}
    assert right.get_title() == "6 scored, 3 failed of 9"


def test_a_survival_output_shows_the_risk_score(tmp_path):
    c = contract(["event"], task="survival:cox")
    rows = [{**new_row(c, f"1.{i}", f"P{i}", 3), "risk_score": float(i)} for i in range(5)]
    rows.append({**new_row(c, "1.9", "P9", 3), "error": "corrupt_dicom: bad"})
    pq.write_table(pa.Table.from_pylist(rows, schema=output_schema(c)), tmp_path / "s.parquet")
    summary = summarise(read_scores(tmp_path / "s.parquet"))
    assert not summary.probabilities and summary.risk is not None and list(summary.risk) == [0, 1, 2, 3, 4]
    left, _ = draw(summary).axes
    assert left.get_xlabel() == "risk score" and sum(p.get_height() for p in left.patches) == 5


def radfusion(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "radfusion.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_report_scores_writes_a_page_and_a_figure_without_identifiers(tmp_path):
    scores = write_scores(tmp_path / "scores.parquet", LABELINGS[0])
    done = radfusion("report", "--scores", str(scores), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    page = tmp_path / "scores.html"
    assert done.stdout.strip().splitlines()[-1] == f"scores report: {page}"
    text = page.read_text(encoding="utf-8")
    cells = [re.sub(r"<[^>]+>", "|", row).strip("|") for row in re.findall(r"<tr>(.*?)</tr>", text)]
    assert "corrupt_dicom||2||22.2%" in cells and "no_image_series||1||11.1%" in cells
    assert "scored||6 (66.7%)" in cells and "failed||3 (33.3%)" in cells and "studies||9" in cells
    assert "prob_responder||6||0.473||0.075||0.460||0.885" in cells  # mean, 10%, median, 90% of SCORED
    # Kinds only: no patient, no study UID, no error detail on a page that may leave the hospital.
    for secret in ("PATIENT", "1.2.3.", "pixel data", "truncated file"):
        assert secret not in text
    png = (tmp_path / "scores.png").read_bytes()
    embedded = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', text).group(1))
    assert png.startswith(PNG_SIGNATURE) and len(png) > 5000 and embedded == png


def test_report_scores_needs_no_torch(tmp_path):
    scores = write_scores(tmp_path / "scores.parquet", LABELINGS[1])
    code = (
        "import sys\nfrom radfusion.cli import main\n"
        f"main(['report', '--scores', {str(scores)!r}, '--out', {str(tmp_path / 'out')!r}])\n"
        "assert not {'torch', 'lightning'} & set(sys.modules), sorted(sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "scores.html").is_file() and (tmp_path / "out" / "scores.png").is_file()


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_report_scores_mistakes_are_one_line(tmp_path):
    line = _one_line_error(radfusion("report", "--scores", str(tmp_path / "missing.parquet"), cwd=tmp_path))
    assert line.startswith(f"radfusion report: --scores {tmp_path / 'missing.parquet'} does not exist; give ")

    (tmp_path / "notes.parquet").write_text("not parquet")
    assert "is not a Parquet file" in _one_line_error(radfusion("report", "--scores", "notes.parquet", cwd=tmp_path))

    assert "nothing to report" in _one_line_error(radfusion("report", cwd=tmp_path))
    assert not list(tmp_path.glob("*.html"))


def test_an_unfinished_scoring_run_is_named(tmp_path):
    out = tmp_path / "scores.parquet"
    parts_dir(out).mkdir()
    with pytest.raises(ValueError, match="did not finish") as caught:
        write_scores_report(out)
    assert "run the same radfusion score command again" in str(caught.value)
