"""The fuzz suite's shared inputs, built once per session: the seeded corpus
(tests/support/mutations.py) from the tiny cohort, and the model every input path
runs: the tiny fusion network with a clinical block (tests/support/clinical_models.py),
so that hostile clinical values have somewhere to go."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.mutations import Corpus, build_corpus

FUZZ_SEED = 14


@pytest.fixture(scope="session")
def fuzz_corpus(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_corpus(tiny_cohort, tmp_path_factory.mktemp("fuzz_corpus"), seed=FUZZ_SEED)


@pytest.fixture(scope="session")
def fuzz_model(tiny_cohort: Path, tiny_contract, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lenient clinical model: image, genomics and clinical may each be missing."""
    from tests.support.clinical_models import clinical_models

    lenient, _ = clinical_models(tiny_cohort, tiny_contract, tmp_path_factory.mktemp("fuzz_model"))
    return lenient
