"""The fuzz harness itself: a run that keeps every promise passes its checks, and each
kind of broken promise (a NaN probability, a generic kind, a missing row, a row for a
study no item wrote, a good study failing, a 5xx, a null probability in a 200, a
planted name or a path in a log line) is caught; and the corpus is the same for the
same seed. Without this, a harness bug could
make the fuzz suite pass whatever the product does."""

from __future__ import annotations

import hashlib
import math
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from radfusion.prediction import prob_column
from tests.fuzz.harness import answer_outcome, assert_kept, leaks, scorer_outcomes
from tests.support.mutations import ONE, PREDICT, SCORER, Corpus, build_corpus

LABELS = ("non-responder", "responder")


def conforming_rows(corpus: Corpus) -> pd.DataFrame:
    """The rows of a scorer run that keeps every item's promise."""
    rows = []
    for item in corpus.on(SCORER):
        expect = item.expect[SCORER]
        for uid in item.study_uids:
            row = {"study_instance_uid": uid, "predicted_label": None, "error": None}
            row.update({prob_column(label): math.nan for label in LABELS})
            if expect.outcome == "error":
                row["error"] = f"{min(expect.kinds, default='corrupt_dicom')}: planted by the harness test"
            else:
                row.update({"prob_non_responder": 0.25, "prob_responder": 0.75, "predicted_label": "responder"})
            rows.append(row)
    return pd.DataFrame(rows)


def problems_by_item(corpus: Corpus, rows: pd.DataFrame) -> dict[str, list[str]]:
    return {o.id: o.problems for o in scorer_outcomes(corpus, rows) if o.problems}


def test_a_conforming_run_passes(fuzz_corpus: Corpus) -> None:
    outcomes = scorer_outcomes(fuzz_corpus, conforming_rows(fuzz_corpus))
    assert_kept(outcomes)
    assert {o.result for o in outcomes} == {"ok", "error", "none"}


def test_every_broken_scorer_promise_is_caught(fuzz_corpus: Corpus) -> None:
    rows = conforming_rows(fuzz_corpus).set_index("study_instance_uid")
    owner = fuzz_corpus.owner()
    good = [uid for uid, item in owner.items() if item.mutation == "good"]
    must_fail = next(uid for uid, item in owner.items() if item.expect[SCORER].outcome == "error")
    one_row = next(uid for uid in reversed(list(owner)) if owner[uid].rows == ONE and uid not in good)
    rows.loc[good[0], "prob_responder"] = math.nan
    rows.loc[good[1], "error"] = "bad_input: generic"
    rows.loc[good[2], "error"] = "no kind at all"
    rows.loc[must_fail, ["error", "predicted_label", "prob_responder", "prob_non_responder"]] = [
        None,
        "responder",
        0.5,
        0.5,
    ]
    rows.loc["1.2.999.1"] = rows.loc[good[3]]
    found = problems_by_item(fuzz_corpus, rows.drop(index=one_row).reset_index())
    assert "non-finite" in found[owner[good[0]].id][0]
    assert found[owner[good[1]].id] == ["no specific kind ('bad_input')", "failed, but it must be scored"]
    assert found[owner[good[2]].id][-1] == "error is not '<kind>: <reason>'"
    assert found[owner[must_fail].id] == ["scored, but it must fail"]
    assert found[owner[one_row].id] == ["no row for this study"]
    assert found["-"] == ["a row for a study no item wrote"]
    assert len(found) == 6


@pytest.mark.parametrize(
    ("status", "body", "problem"),
    [
        (500, {"error": "An unexpected error has occurred"}, "HTTP 500"),
        (
            200,
            {"predicted_label": "responder", "probabilities": {"responder": None, "non-responder": 0.5}},
            "non-finite",
        ),
        (
            200,
            {"predicted_label": "maybe", "probabilities": {"responder": 0.5, "non-responder": 0.5}},
            "predicted label",
        ),
        (400, {"error": "1 validation error for Input"}, "no specific kind"),
        (422, {"error": "geometry_rejected", "detail": "x"}, "failed, but it must be scored"),
    ],
)
def test_every_broken_service_promise_is_caught(fuzz_corpus: Corpus, status: int, body: dict, problem: str) -> None:
    good = next(item for item in fuzz_corpus.on(PREDICT) if item.mutation == "good")
    outcome = answer_outcome(good, PREDICT, status, body)
    assert any(problem in p for p in outcome.problems), outcome.problems


def test_leaks_are_found_and_redacted_lines_pass(fuzz_corpus: Corpus) -> None:
    item = fuzz_corpus.items[0]
    uid = item.study_uids[0]
    lines = [
        f"reading {item.planted} failed",
        f"patient {item.patient_id}",
        f"Invalid value for VR UI: '{uid}'",
        f"file {fuzz_corpus.root}/{item.location.name}/x.dcm truncated",
        "Invalid value for VR UI: '<uid>' in file <path> of <value>",
        f"scoring archive {fuzz_corpus.root}",
    ]
    found = leaks("\n".join(lines), fuzz_corpus, roots=[fuzz_corpus.root])
    assert [line.split(" in: ")[1] for line in found] == lines[:4]


def test_the_corpus_is_deterministic(fuzz_corpus: Corpus, tiny_cohort: Path, tmp_path: Path) -> None:
    again = build_corpus(tiny_cohort, tmp_path / "again", seed=fuzz_corpus.seed)
    assert digests(again.root) == digests(fuzz_corpus.root)
    assert [(i.id, i.mutation, i.study_uids) for i in again.items] == [
        (i.id, i.mutation, i.study_uids) for i in fuzz_corpus.items
    ]
    bomb = next(i for i in fuzz_corpus.items if i.mutation == "zip-bomb")
    with zipfile.ZipFile(bomb.location) as zf:
        member = max(zf.infolist(), key=lambda info: info.file_size)
    assert member.file_size / member.compress_size > 1000


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
