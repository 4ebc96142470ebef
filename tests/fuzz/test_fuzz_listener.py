"""A sample of the fuzz corpus (the items marked for the listener: the good ones, odd
demographics and UIDs, impossible geometry and rescale, hostile genomics, a 5000-deep
sequence, an unknown VR, flipped pixels, an MR series) sent by C-STORE to a real
`radfusion listen` process, each study in its own association, its files as they are
on disk (pynetdicom sends the bytes without decoding them). The listener sends its SRs
to a pynetdicom Storage SCP standing in for the PACS.

Issue 14's promises for the listener: it stays up and answers C-ECHO after all of it,
every good study gets its SR (sent, with a prediction), every bad one fails alone with
a specific kind (the item's, where certain), and its log holds no planted name,
PatientID or corpus UID."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fuzz.harness import (
    CALLING,
    Outcome,
    assert_kept,
    leaks,
    listener_args,
    listener_outcomes,
    send_study,
    wait_settled,
)
from tests.support.mutations import LISTENER, Corpus, Item
from tests.support.peers import CapturingPacs, dicom_echo, free_loopback_port

pytestmark = pytest.mark.slow

SETTLE_SECONDS = 90.0


@dataclass
class Listened:
    items: list[Item]
    outcomes: list[Outcome]
    alive: bool
    echo: int | None
    log: str
    statuses: dict[str, list[int | None]]


@pytest.fixture(scope="module")
def listened(
    start_listener, fuzz_corpus: Corpus, fuzz_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Listened]:
    pacs = CapturingPacs(free_loopback_port())
    work = tmp_path_factory.mktemp("fuzz_listener") / "work"
    listener = start_listener(listener_args(fuzz_model, work, fuzz_corpus, pacs.port))
    try:
        # The studies that must be scored go last: the listener must still score
        # after everything hostile that came before them.
        items = sorted(fuzz_corpus.on(LISTENER), key=lambda item: item.expect[LISTENER].outcome == "ok")
        statuses = {item.id: send_study(listener.port, item.files()) for item in items}
        uids = [uid for item in items for uid in item.study_uids]
        report = wait_settled(work, uids, lambda: listener.process.poll() is None, SETTLE_SECONDS)
        alive = listener.process.poll() is None
        echo = dicom_echo(listener.port, calling=CALLING) if alive else None
        yield Listened(items, listener_outcomes(items, report, pacs.sr_studies), alive, echo, listener.log(), statuses)
    finally:
        listener.stop()
        pacs.stop()


def test_the_listener_stays_up(listened: Listened) -> None:
    assert listened.alive, listened.log[-3000:]
    assert listened.echo == 0


def test_good_studies_get_their_sr_and_bad_ones_fail_alone(listened: Listened) -> None:
    assert len(listened.outcomes) >= 15
    assert_kept(listened.outcomes)


def test_every_instance_of_a_good_study_is_stored(listened: Listened) -> None:
    refused = {
        item.id: listened.statuses[item.id]
        for item in listened.items
        if item.expect[LISTENER].outcome == "ok" and any(s != 0 for s in listened.statuses[item.id])
    }
    assert not refused


def test_logs_hold_no_identifier(listened: Listened, fuzz_corpus: Corpus) -> None:
    found = leaks(listened.log, fuzz_corpus, roots=[fuzz_corpus.root])
    assert not found, "\n".join(found[:20])
