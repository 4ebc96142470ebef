"""The demo's promises (radfusion.cli.demo.demo_checks) and its small-cohort warning:
each check fails when its figure misses, and the fast demo trains the exported model and
its two baselines only."""

from __future__ import annotations

import pytest

from radfusion.cli.demo import FULL_MODELS, MODELS, demo_checks, small_sample_warnings


def _summary(**changes) -> dict:
    summary = {
        "auroc": {"fusion": 0.88, "image_only": 0.80, "genomics_only": 0.79},
        "n_test": 160,
        "onnx_max_abs_diff": 2e-6,
        "service_requests_sent": 48,
        "service_requests_ok": 48,
        "service_max_abs_diff_vs_inprocess": 1e-6,
        "service_explained_ok": 3,
        "service_treatment_rankings": [{"recommended": "chemo", "available": True}] * 3,
        "service_bad_input_status": 400,
        "service_no_token_status": 401,
        "studies_scored": 800,
        "studies_failed": 0,
    }
    return {**summary, **changes}


def test_a_run_that_keeps_every_promise_passes_every_check() -> None:
    checks = demo_checks(_summary())
    assert len(checks) == 8 and all(checks.values())


@pytest.mark.parametrize(
    ("changes", "failed"),
    [
        ({"auroc": {"fusion": 0.79, "image_only": 0.6, "genomics_only": 0.6}}, "fusion AUROC >= 0.8"),
        ({"auroc": {"fusion": 0.88, "image_only": 0.84, "genomics_only": 0.6}}, "fusion AUROC >= image_only + 0.05"),
        ({"auroc": {"fusion": 0.88, "image_only": 0.6, "genomics_only": 0.86}}, "fusion AUROC >= genomics_only + 0.05"),
        ({"onnx_max_abs_diff": 2e-4}, "ONNX parity <= 0.0001"),
        ({"service_requests_ok": 47}, "service: every request answered, as in-process"),
        ({"service_max_abs_diff_vs_inprocess": 1e-3}, "service: every request answered, as in-process"),
        ({"service_explained_ok": 2}, "service: explanations and treatment rankings"),
        (
            {"service_treatment_rankings": [{"recommended": None, "available": False}] * 3},
            "service: explanations and treatment rankings",
        ),
        ({"service_bad_input_status": 500}, "service: bad input refused (4xx), no token 401"),
        ({"service_no_token_status": 200}, "service: bad input refused (4xx), no token 401"),
        ({"studies_failed": 1}, "scorer: every study scored"),
    ],
)
def test_each_check_fails_alone_when_its_figure_misses(changes: dict, failed: str) -> None:
    checks = demo_checks(_summary(**changes))
    assert [name for name, ok in checks.items() if not ok] == [failed]


def test_a_small_cohort_is_flagged_and_its_auroc_checks_are_not_assessed() -> None:
    assert small_sample_warnings(_summary()) == []
    (warning,) = small_sample_warnings(_summary(n_test=8))
    assert warning.startswith("only 8 held-out patients")
    low = {"fusion": 0.5, "image_only": 0.6, "genomics_only": 0.6}
    checks = demo_checks(_summary(n_test=8, auroc=low))
    assert [name for name, ok in checks.items() if ok is None] == [
        "fusion AUROC >= 0.8",
        "fusion AUROC >= image_only + 0.05",
        "fusion AUROC >= genomics_only + 0.05",
    ]
    assert all(ok for ok in checks.values() if ok is not None)
    assert not all(ok for ok in demo_checks(_summary(auroc=low)).values())


def test_the_fast_demo_trains_the_exported_model_and_its_baselines_only() -> None:
    assert list(MODELS) == ["fusion", "image_only", "genomics_only"]
    assert set(FULL_MODELS) == {"late", "gated", "kronecker"}


def test_a_failed_stage_ends_the_demo_with_one_line_naming_it(tmp_path) -> None:
    from radfusion.cli.demo import _radfusion
    from radfusion.errors import UserError

    with pytest.raises(UserError, match="the stage `radfusion synth` failed"):
        _radfusion("synth", "--patients", "0", "--out", tmp_path / "cohort")
