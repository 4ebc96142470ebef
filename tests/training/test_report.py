"""The evidence report opened as a user would: every figure present and decodable,
every section there, the truth checks listed, no patient identifier on the page."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from radfusion.cli import build_parser

# The first test to run also builds the shared evidence model (about 4 minutes on 2
# cores): its time counts against that test's timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[dict] = []
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def _open(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _assert_images_resolve(page: _Page, base: Path) -> None:
    assert page.images
    for image in page.images:
        src = image["src"]
        if src.startswith("data:image/png;base64,"):
            data = base64.b64decode(src.split(",", 1)[1], validate=True)
        else:  # a figure written alongside the page
            data = (base / src).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, image.get("alt")


def test_report_renders_every_figure_and_check(evidence_run, tmp_path):
    from radfusion.training.evaluate import evaluate
    from radfusion.training.report.build import render_report

    checkpoint, module, dm, ev = evidence_run
    run_dir = tmp_path / "run"
    evaluate({"fusion": checkpoint}, run_dir)  # the fusion-strategy table's source
    path = render_report(ev, module, dm, run_dir, checkpoint, run_dir / "report")
    page = _open(path)
    _assert_images_resolve(page, path.parent)
    alts = [i["alt"] for i in page.images]
    for figure in (
        "ROC and precision-recall curves",
        "reliability diagram",
        "Kaplan-Meier curves by risk group",
        "top genes by Integrated Gradients",
        "top genes by feature ablation",
        "predicted treatment gains",
        "Qini curves",
    ):
        assert figure in alts
    assert sum(a.startswith("saliency overlay") for a in alts) == 4
    for section in (
        "Checked against the truth",
        "Discrimination",
        "Calibration",
        "Subgroups",
        "Biomarkers (genes)",
        "Image saliency",
        "Stratification",
        "Treatment ranking",
    ):
        assert section in page.headings
    html = path.read_text(encoding="utf-8")
    assert html.count("check against the truth") == 1 and len(ev.checks) == 5
    for check in ev.checks:
        assert check.name in html
    # The treatment policy beside the causal-ML peers', and the biomarker groups.
    for text in ("Policy value", "causal_forest", "dr_learner", "everyone chemo", "Biomarker groups", "EGFR_mut"):
        assert text in html, text
    assert "Fusion strategies and baselines" in html and "auroc_image_only" in html
    # evaluate fitted the classical baselines on the model's split and genomics: shown beside it.
    assert "Classical baselines" in page.headings and "logistic (genomics" in html
    assert not any(pid in html for pid in ev.cases.patient_ids)  # the page can leave the hospital
    summary = json.loads((path.parent / "evidence.json").read_text())
    assert len(summary["checks"]) == 5 and summary["n_test"] == len(ev.cases)


def test_report_command_builds_from_a_run_folder(evidence_run, tmp_path):
    from radfusion.cli import main

    checkpoint, _, _, _ = evidence_run
    args = build_parser().parse_args(["report", "--run", str(checkpoint.parent.parent)])
    assert args.func.__name__ == "_report" and args.saliency_cases == 40
    main(["report", "--run", str(checkpoint.parent.parent), "--out", str(tmp_path), "--saliency-cases", "2"])
    page = _open(tmp_path / "report.html")
    _assert_images_resolve(page, tmp_path)
    assert sum(i["alt"].startswith("saliency overlay") for i in page.images) == 2
    assert "Fusion strategies" not in (tmp_path / "report.html").read_text()  # no metrics.json in that folder


def test_report_without_a_checkpoint_is_a_clear_error(tmp_path):
    from radfusion.training.report.build import find_checkpoint

    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        find_checkpoint(tmp_path)
