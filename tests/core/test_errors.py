"""The catalogue of error kinds: one kind per failure, documented from the classes."""

from __future__ import annotations

import itertools
import subprocess
import sys

from radfusion.cli.errors import import_error_modules
from radfusion.errors import error_catalogue, error_classes, markdown_table
from tests.support.paths import PROJECT_ROOT as ROOT


def _all_classes():
    import_error_modules()
    return error_classes()


def test_no_two_classes_share_a_kind_unless_one_subclasses_the_other() -> None:
    classes = _all_classes()
    assert len(classes) > 30  # the modules that define errors were really imported
    clashes = [
        (a.__qualname__, b.__qualname__, a.kind)
        for a, b in itertools.combinations(classes, 2)
        if a.kind == b.kind and not (issubclass(a, b) or issubclass(b, a))
    ]
    assert clashes == []


def test_every_kind_has_a_meaning_and_an_http_status() -> None:
    for entry in error_catalogue(_all_classes()):
        assert entry.meaning, f"{entry.cls.__qualname__} needs a docstring: it is the kind's documentation"
        assert 400 <= entry.http_status < 600


def test_the_former_synonyms_are_gone() -> None:
    kinds = {e.kind for e in error_catalogue(_all_classes())}
    assert {"bad_archive", "dicomweb_unavailable"} <= kinds
    assert kinds.isdisjoint({"corrupt_archive", "fetch_failed"})


def test_the_scorer_retries_every_retryable_kind_on_resume() -> None:
    from radfusion.serving.scoring.rows import RETRY_ON_RESUME

    entries = error_catalogue(_all_classes())
    assert {e.kind for e in entries if e.retryable} <= RETRY_ON_RESUME
    assert not {e.kind for e in entries if not e.retryable} & RETRY_ON_RESUME


def test_committed_docs_equal_the_generated_table() -> None:
    generated = subprocess.run(
        [sys.executable, "-m", "radfusion.cli", "errors", "--markdown"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert generated == markdown_table(error_catalogue(_all_classes()))
    committed = (ROOT / "docs" / "errors.md").read_text()
    assert committed == generated, "docs/errors.md is stale: radfusion errors --markdown > docs/errors.md"
