"""The report's "Classical baselines" section from a `radfusion cv` cv.json and from
`radfusion evaluate`'s metrics.json, on inputs whose answers are known by hand: every
fold's values and paired differences shown, and the deep model's losses said in words."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from radfusion.training.cv.run import json_safe
from radfusion.training.cv.table import build_results
from radfusion.training.report.baselines import baselines_section, find_cv, load_json
from tests.support.cv_folds import fake_fold


class _Tables(HTMLParser):
    """Each table as rows of cell texts, and each paragraph's text with its class."""

    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.paragraphs: list[tuple[str, str]] = []
        self._cell: list[str] | None = None
        self._paragraph: list | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "p":
            self._paragraph = [dict(attrs).get("class", ""), []]

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "p" and self._paragraph is not None:
            self.paragraphs.append((self._paragraph[0], "".join(self._paragraph[1])))
            self._paragraph = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._paragraph is not None:
            self._paragraph[1].append(data)


def _parse(html: str) -> _Tables:
    parsed = _Tables()
    parsed.feed(html)
    return parsed


@pytest.fixture
def cv_summary() -> dict:
    """3 folds: rsf ahead of the network in every fold (by 0.05, 0.06, 0.04), coxnet
    behind it in two of three."""
    folds = [
        fake_fold(0, {"radfusion": 0.70, "coxnet": 0.60, "rsf": 0.75}),
        fake_fold(1, {"radfusion": 0.64, "coxnet": 0.66, "rsf": 0.70}),
        fake_fold(2, {"radfusion": 0.66, "coxnet": 0.62, "rsf": 0.70}),
    ]
    return json.loads(json.dumps(json_safe(build_results(folds, folds=3, repeats=1, cli_args=["--config", "x.yaml"]))))


def test_the_cv_table_shows_every_fold_and_says_which_baseline_wins(cv_summary: dict) -> None:
    html = baselines_section(None, cv_summary)
    page = _parse(html)
    overview, per_fold = page.tables
    assert overview[0][:3] == ["model", "C-index mean", "95% CI"]
    rows = {r[0]: r for r in overview[1:]}
    assert list(rows) == ["radfusion (genomics+clinical, late)", "coxnet", "rsf"]
    # rsf: mean 0.7167; radfusion − rsf: -0.05 mean, sd 0.01, t(0.975, 2) = 4.303 -> ±0.0248.
    assert rows["rsf"][1] == "0.717" and rows["rsf"][4] == "-0.050" and rows["rsf"][5] == "-0.075 to -0.025"
    assert rows["radfusion (genomics+clinical, late)"][4] == "–"  # no difference from itself
    assert per_fold[0] == ["model", "r0 f0", "r0 f1", "r0 f2"]
    folds = {r[0]: r[1:] for r in per_fold[1:]}
    assert folds["coxnet"] == ["0.600", "0.660", "0.620"]
    assert folds["radfusion − coxnet"] == ["+0.100", "-0.020", "+0.040"]
    assert folds["radfusion − rsf"] == ["-0.050", "-0.060", "-0.040"]
    said = {text: cls for cls, text in page.paragraphs}
    loss = (
        "rsf is better than radfusion on these folds by 0.050 C-index (95% CI 0.025 to 0.075): "
        "use rsf for this cohort instead of radfusion."
    )
    assert said[loss] == "fail"  # shown as a failure, and first among the verdicts
    verdicts = [text for _, text in page.paragraphs if "radfusion" in text and "folds" in text]
    assert verdicts[0] == loss and any(t.startswith("radfusion and coxnet are not clearly different") for t in verdicts)


def test_the_evaluate_comparison_names_the_baseline_ahead_by_most() -> None:
    metrics = {
        "cox": {
            "kind": "deep",
            "modalities": ["genomics", "clinical"],
            "vs_baselines": {
                "coxnet (genomics+clinical)": {
                    "metric": "cindex",
                    "model": 0.62,
                    "baseline_value": 0.66,
                    "difference": -0.04,
                    "ci95": [-0.09, 0.01],
                    "verdict": "worse on average",
                    "resamples": 1000,
                },
                "rsf (genomics+clinical)": {
                    "metric": "cindex",
                    "model": 0.62,
                    "baseline_value": 0.70,
                    "difference": -0.08,
                    "ci95": [-0.14, -0.02],
                    "verdict": "worse",
                    "resamples": 1000,
                },
            },
        },
        "cox_ridge (genomics+clinical)": {
            "kind": "baseline",
            "modalities": ["genomics", "clinical"],
            "skipped": "slow",
        },
    }
    page = _parse(baselines_section(metrics, None))
    (table,) = page.tables
    assert table[1] == ["cox", "coxnet (genomics+clinical)", "C-index", "0.620", "0.660", "-0.040", "-0.090 to +0.010",
                        "worse on average"]  # fmt: skip
    texts = [text for _, text in page.paragraphs]
    assert (
        "rsf (genomics+clinical) is better than cox on this test split by 0.080 C-index (95% CI 0.020 to 0.140): "
        "use rsf (genomics+clinical) for this cohort instead of cox. Also ahead of cox: coxnet (genomics+clinical)."
    ) in texts
    assert "cox_ridge (genomics+clinical): skipped: slow" in texts
    assert baselines_section({"cox": {"modalities": ["genomics"]}}, None) == ""  # nothing to compare: no section


def test_the_cv_summary_is_found_in_the_run_folder_or_where_it_is_given(cv_summary: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "cv").mkdir(parents=True)
    assert find_cv(run) is None
    (run / "cv" / "cv.json").write_text(json.dumps(cv_summary))
    assert find_cv(run) == run / "cv" / "cv.json"
    assert find_cv(run, run / "cv") == run / "cv" / "cv.json" and load_json(find_cv(run)) == cv_summary
    with pytest.raises(FileNotFoundError, match=r"radfusion cv writes cv\.json"):
        find_cv(run, tmp_path / "elsewhere")


def _with_task(folds: list[dict], task: str) -> list[dict]:
    return [{**f, "task": task} for f in folds]


@pytest.mark.parametrize(
    ("task", "coxnet", "suggested"),
    [
        # coxnet ahead of the network on average: its export is offered.
        ("survival_cox", (0.75, 0.70, 0.72), "coxnet"),
        # coxnet behind, rsf (not linear) ahead: nothing to export in the network's place.
        ("survival_cox", (0.60, 0.60, 0.60), None),
        # discrete-time survival: a Cox baseline cannot be exported for it.
        ("survival_discrete", (0.75, 0.70, 0.72), None),
        # undefined differences never count as the baseline winning.
        ("survival_cox", (float("nan"),) * 3, None),
    ],
)
def test_cv_md_offers_a_linear_baseline_export_only_where_one_won(task, coxnet, suggested) -> None:
    from radfusion.training.cv.table import markdown

    folds = [
        fake_fold(k, {"radfusion": deep, "coxnet": c, "rsf": 0.8})
        for k, (deep, c) in enumerate(zip((0.70, 0.64, 0.66), coxnet, strict=True))
    ]
    text = markdown(build_results(_with_task(folds, task), folds=3, repeats=1, cli_args=[]))
    assert "did better than radfusion" in text  # rsf in every case
    offer = [line for line in text.splitlines() if "can be exported in the network's place" in line]
    if suggested is None:
        assert not offer
    else:
        assert len(offer) == 1 and f"--model {suggested}`" in offer[0]
