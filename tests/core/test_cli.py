"""The `radfusion` command on an installation without an extra: it names the extra to
install instead of ending in a traceback."""

from __future__ import annotations

import pytest

import radfusion.cli as cli


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def lacks_jsonargparse(argv: list[str]) -> None:
        raise ModuleNotFoundError("No module named 'jsonargparse'", name="jsonargparse")

    monkeypatch.setattr(cli, "_dispatch", lacks_jsonargparse)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train", "--help"])
    assert str(stopped.value) == (
        "radfusion train: needs jsonargparse, which this installation lacks; "
        "install the 'train' extra: pip install 'radfusion[train]'"
    )


def test_a_missing_module_that_no_extra_provides_is_not_disguised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(argv: list[str]) -> None:
        raise ModuleNotFoundError("No module named 'radfusion.nothing'", name="radfusion.nothing")

    monkeypatch.setattr(cli, "_dispatch", broken)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["errors"])
