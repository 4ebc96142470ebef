"""Every `radfusion` command run with the mistakes people make with it, as a user runs
it (a subprocess): exit 1 with one line, ``radfusion <command>: <problem>; <what to
do>``, for a mistake in what was given; exit 2 for a usage error; never a traceback
(unless --debug asks for one). Each command fails before any real work; the `radfusion
train` cases import Lightning first (seconds each), so they are marked slow."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.paths import CONFIGS

TRAIN_CONFIGS = [
    arg
    for config in ("trainer/cpu.yaml", "data/synthetic.yaml", "model/fusion_cpu.yaml")
    for arg in ("--config", str(CONFIGS / config))
]


def radfusion(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RADFUSION_")}
    # An empty model store: a tag is never found, whatever this machine has exported.
    environ |= {
        "BENTOML_HOME": str(cwd / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        "RADFUSION_CACHE_DIR": str(cwd / "cache"),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "radfusion.cli", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=180,
    )


def cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except ModuleNotFoundError:
        return False
    return bool({"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers()))


@dataclass(frozen=True)
class Mistake:
    name: str
    args: tuple[str, ...]  # {tmp} is the test's folder
    command: str  # what the error line names: radfusion <command>: ...
    says: str  # a piece of the line
    env: tuple[tuple[str, str], ...] = ()


MISTAKES = [
    Mistake(
        "export-unknown-model",
        ("export", "--checkpoint", "{tmp}/a_file", "--out", "{tmp}/m.onnx", "--model", "nosuch"),
        "export",
        "only linear baselines can be exported (coxnet, cox_ridge, logistic), not 'nosuch'",
    ),
    Mistake(
        "settings-bad-value",
        ("settings", "--check"),
        "settings",
        "RADFUSION_MAX_UPLOAD_BYTES: expected an integer number of bytes, got '2G'",
        env=(("RADFUSION_MAX_UPLOAD_BYTES", "2G"),),
    ),
    Mistake(
        "federate-outside-its-environment",
        (
            "federate",
            "simulate",
            "--site",
            "a={tmp}",
            "--site",
            "b={tmp}",
            "--config",
            "{tmp}/a_file",
            "--out",
            "{tmp}/f",
        ),
        "federate",
        "Flower is not installed in this environment",
    ),
    Mistake("synth-no-patients", ("synth", "--patients", "0", "--out", "{tmp}/c"), "synth", "--patients must be"),
    Mistake("synth-negative", ("synth", "--patients", "-3", "--out", "{tmp}/c"), "synth", "--patients must be"),
    Mistake("synth-out-is-a-file", ("synth", "--out", "{tmp}/a_file"), "synth", "is a file"),
    Mistake(
        "cohort-dicom-mistyped",
        ("cohort", "build", "--dicom", "{tmp}/dicmo", "--clinical", "{tmp}/a_file", "--out", "{tmp}/m"),
        "cohort build",
        "--dicom {tmp}/dicmo does not exist",
    ),
    Mistake(
        "cohort-clinical-missing",
        ("cohort", "build", "--dicom", "{tmp}", "--clinical", "{tmp}/clinical.csv", "--out", "{tmp}/m"),
        "cohort build",
        "--clinical",
    ),
    Mistake(
        "evaluate-checkpoint-missing",
        ("evaluate", "--checkpoint", "fusion={tmp}/missing.ckpt", "--out", "{tmp}/e"),
        "evaluate",
        "--checkpoint fusion={tmp}/missing.ckpt: no such file",
    ),
    Mistake(
        "export-checkpoint-missing",
        ("export", "--checkpoint", "{tmp}/missing.ckpt", "--out", "{tmp}/model.onnx"),
        "export",
        "--checkpoint {tmp}/missing.ckpt",
    ),
    Mistake("report-run-missing", ("report", "--run", "{tmp}/no-run"), "report", "--run {tmp}/no-run does not exist"),
    Mistake(
        "score-model-file-missing",
        ("score", "--archive", "{tmp}", "--model", "{tmp}/missing.onnx", "--out", "{tmp}/s.parquet"),
        "score",
        "run radfusion export first",
    ),
    Mistake(
        "score-model-tag-not-exported",
        ("score", "--archive", "{tmp}", "--model", "nosuch:latest", "--out", "{tmp}/s.parquet"),
        "score",
        "radfusion export",
    ),
    Mistake(
        "score-archive-missing",
        ("score", "--archive", "{tmp}/no-archive", "--out", "{tmp}/s.parquet"),
        "score",
        "--archive {tmp}/no-archive does not exist",
    ),
    Mistake(
        "score-genomics-missing",
        ("score", "--archive", "{tmp}", "--genomics", "{tmp}/g.parquet", "--out", "{tmp}/s.parquet"),
        "score",
        "--genomics",
    ),
    Mistake(
        "score-ray-without-archive",
        ("score", "--engine", "ray", "--out", "{tmp}/s.parquet"),
        "score",
        "--engine ray",
    ),
    Mistake("serve-model-missing", ("serve", "--model", "{tmp}/missing.onnx"), "serve", "run radfusion export first"),
    Mistake("serve-default-tag-not-exported", ("serve",), "serve", "not in the model store"),
    Mistake(
        "listen-model-missing",
        ("listen", "--model", "{tmp}/missing.onnx", "--work", "{tmp}/pacs"),
        "listen",
        "no model file",
    ),
    Mistake(
        "listen-port-out-of-range",
        ("listen", "--model", "{tmp}/missing.onnx", "--work", "{tmp}/pacs", "--port", "99999"),
        "listen",
        "--port: expected a TCP port",
    ),
    Mistake(
        "listen-bad-destination-variable",
        ("listen", "--model", "{tmp}/missing.onnx", "--work", "{tmp}/pacs"),
        "listen",
        "RADFUSION_LISTEN_SEND_TO: expected AET@HOST:PORT",
        env=(("RADFUSION_LISTEN_SEND_TO", "ORTHANC@pacs.local"),),
    ),
    Mistake(
        "settings-check-listener-variable",
        ("settings", "--check"),
        "settings",
        "RADFUSION_STUDY_MAX_SECONDS: expected a positive integer",
        env=(("RADFUSION_STUDY_MAX_SECONDS", "-5"),),
    ),
    Mistake(
        "score-model-not-onnx",
        ("score", "--archive", "{tmp}", "--model", "{tmp}/dummy.onnx", "--out", "{tmp}/s.parquet"),
        "score",
        "dummy.onnx is not an ONNX model with a radfusion contract",
    ),
    Mistake(
        "serve-model-not-onnx",
        ("serve", "--model", "{tmp}/dummy.onnx"),
        "serve",
        "dummy.onnx is not an ONNX model with a radfusion contract",
    ),
    Mistake(
        "listen-model-not-onnx",
        ("listen", "--model", "{tmp}/dummy.onnx", "--work", "{tmp}/pacs"),
        "listen",
        "dummy.onnx is not an ONNX model with a radfusion contract",
    ),
    Mistake(
        "export-checkpoint-not-a-checkpoint",
        ("export", "--checkpoint", "{tmp}/cohort/clinical.csv", "--out", "{tmp}/m.onnx"),
        "export",
        "not a checkpoint",
    ),
    Mistake(
        "synth-out-not-writable",
        ("synth", "--patients", "4", "--out", "{tmp}/a_file/cohort"),
        "synth",
        "cannot write there",
    ),
    Mistake(
        "settings-check-unknown-variable",
        ("settings", "--check"),
        "settings",
        "RADFUSION_MAX_UPLOAD_BYTE: not a radfusion setting (did you mean RADFUSION_MAX_UPLOAD_BYTES?)",
        env=(("RADFUSION_MAX_UPLOAD_BYTE", "1000"),),
    ),
    Mistake(
        "serve-bad-device",
        ("serve", "--model", "{tmp}/dummy.onnx"),
        "serve",
        "RADFUSION_DEVICE: expected one of auto, cpu, cuda, got 'tpu'",
        env=(("RADFUSION_DEVICE", "tpu"),),
    ),
    Mistake(
        "cohort-build-no-dicom-study",
        # Found after reading the tree: -q keeps the progress lines of that reading off stderr.
        (
            "-q",
            "cohort",
            "build",
            "--dicom",
            "{tmp}/cohort",
            "--clinical",
            "{tmp}/cohort/clinical.csv",
            "--out",
            "{tmp}/m",
        ),
        "cohort build",
        "no DICOM study under --dicom",
    ),
    Mistake("pacs-status-no-listener", ("pacs-status", "--work", "{tmp}"), "pacs-status", "no listener state"),
    Mistake(
        "train-config-missing",
        ("train", "--config", "{tmp}/cpu.yaml", "--data.cohort_dir", "{tmp}"),
        "train",
        "--config {tmp}/cpu.yaml",
    ),
    Mistake("cv-config-missing", ("cv", "--config", "{tmp}/cpu.yaml"), "cv", "--config {tmp}/cpu.yaml"),
    Mistake("demo-no-patients", ("demo", "--patients", "0", "--out", "{tmp}/demo"), "demo", "--patients must be"),
    Mistake(
        "deid-input-missing",
        ("deid", "--dicom", "{tmp}/no-dicom", "--out", "{tmp}/deid"),
        "deid",
        "--dicom is not a folder",
        env=(("RADFUSION_DEID_KEY", "a-key-of-at-least-16-bytes"),),
    ),
    Mistake("deid-no-key", ("deid", "--in", "{tmp}", "--out", "{tmp}/deid"), "deid", "key"),  # the earlier name
]

# Each imports Lightning (about 10 s on a busy 2-core machine; the check itself runs
# before the data module or the trainer is built, so long before any training).
SLOW_MISTAKES = [
    Mistake(
        "train-cohort-missing",
        ("train", *TRAIN_CONFIGS, "--data.cohort_dir", "{tmp}/no-cohort"),
        "train",
        "data.cohort_dir {tmp}/no-cohort does not exist",
    ),
    Mistake(
        "train-validate-without-checkpoint",
        ("train", "validate", *TRAIN_CONFIGS, "--data.cohort_dir", "{tmp}/cohort"),
        "train validate",
        "--ckpt_path",
    ),
    Mistake(
        "train-test-checkpoint-missing",
        ("train", "test", *TRAIN_CONFIGS, "--data.cohort_dir", "{tmp}/cohort", "--ckpt_path", "{tmp}/missing.ckpt"),
        "train test",
        "--ckpt_path {tmp}/missing.ckpt: no such file",
    ),
    Mistake(
        "train-predict-without-checkpoint",
        ("train", "predict", *TRAIN_CONFIGS, "--data.cohort_dir", "{tmp}/cohort"),
        "train predict",
        "no --ckpt_path: predict would run an untrained model",
    ),
]


def make_work(folder: Path) -> Path:
    """A folder with a plain file, a dummy (unreadable) model and a cohort folder that
    holds a clinical table: enough to get past the checks before the one tested."""
    folder.mkdir(parents=True)
    (folder / "a_file").write_text("not a folder\n")
    (folder / "dummy.onnx").write_bytes(b"not a model")
    (folder / "cohort").mkdir()
    (folder / "cohort" / "clinical.csv").write_text("patient_id,response\n")
    return folder


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return make_work(tmp_path / "work")


@dataclass(frozen=True)
class Ran:
    result: subprocess.CompletedProcess
    work: Path


TINY_SYNTH = ("synth", "--patients", "1", "--genes", "24", "--slices", "8", "--size", "24", "--workers", "1")
USAGE_ERRORS = {
    "no-command": (),
    "bad-log-level": ("--log-level", "loud", "errors"),
    "log-level-without-value": ("--log-level",),
    "synth-no-out": ("synth",),
    "bad-choice": ("score", "--device", "tpu", "--out", "x.parquet"),
    "saliency-cases-not-a-count": ("report", "--run", ".", "--saliency-cases", "-1"),
}
LOG_LEVELS = {"default": (), "q": ("-q",), "warning": ("--log-level", "warning"), "error": ("--log-level=error",)}
CUDA = {
    "score": ("score", "--archive", "{tmp}", "--model", "{tmp}/dummy.onnx", "--out", "{tmp}/s.parquet"),
    "listen": ("listen", "--model", "{tmp}/dummy.onnx", "--work", "{tmp}/pacs"),
}
STRIPPED = {
    "train": ("train", "--config", "{tmp}/missing.yaml"),
    "listen": ("listen", "--model", "{tmp}/missing.onnx", "--work", "{tmp}"),
}
RUNS: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    **{f"mistake/{m.name}": (m.args, m.env) for m in MISTAKES},
    **{f"usage/{name}": (args, ()) for name, args in USAGE_ERRORS.items()},
    **{f"log/{name}": ((*flags, *TINY_SYNTH, "--out", "{tmp}/synth"), ()) for name, flags in LOG_LEVELS.items()},
    **{f"cuda/{name}": ((*args, "--device", "cuda"), ()) for name, args in CUDA.items()},
    **{f"stripped/{name}": (("-q", "--log-level", "info", *args), ()) for name, args in STRIPPED.items()},
    "version": (("--version",), ()),
    "debug": (("--debug", "synth", "--patients", "0", "--out", "{tmp}/c"), ()),
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ran]:
    """Every command of this file, each in its own folder, a few at a time: most of
    their time is the interpreter starting and importing, which overlaps."""
    root = tmp_path_factory.mktemp("mistakes")

    def run(index: int, name: str) -> tuple[str, Ran]:
        args, env = RUNS[name]
        work = make_work(root / str(index))
        result = radfusion(*[a.replace("{tmp}", str(work)) for a in args], cwd=work, env=dict(env))
        return name, Ran(result, work)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(lambda item: run(*item), enumerate(RUNS)))


def one_line_error(result: subprocess.CompletedProcess, command: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"radfusion {command}: "), lines[0]
    return lines[0]


def check(mistake: Mistake, ran: Ran) -> None:
    line = one_line_error(ran.result, mistake.command)
    assert mistake.says.replace("{tmp}", str(ran.work)) in line, line
    assert ran.result.stdout == "", ran.result.stdout  # nothing half-done was reported


@pytest.mark.parametrize("mistake", MISTAKES, ids=lambda m: m.name)
def test_a_mistake_is_one_line_and_exit_1(mistake: Mistake, ran: dict[str, Ran]) -> None:
    check(mistake, ran[f"mistake/{mistake.name}"])


@pytest.mark.slow
@pytest.mark.parametrize("mistake", SLOW_MISTAKES, ids=lambda m: m.name)
def test_a_train_mistake_is_one_line_and_exit_1(mistake: Mistake, work: Path) -> None:
    result = radfusion(*[a.replace("{tmp}", str(work)) for a in mistake.args], cwd=work)
    check(mistake, Ran(result, work))


def test_cohort_build_on_a_mistyped_dicom_folder_writes_no_manifest(ran: dict[str, Ran]) -> None:
    assert not (ran["mistake/cohort-dicom-mistyped"].work / "m").exists()


@pytest.mark.skipif(cuda_available(), reason="this ONNX Runtime has a GPU execution provider")
@pytest.mark.parametrize("command", list(CUDA))
def test_device_cuda_without_a_gpu_provider(command: str, ran: dict[str, Ran]) -> None:
    line = one_line_error(ran[f"cuda/{command}"].result, command)
    assert "no GPU execution provider" in line
    assert "device auto or cpu" in line


@pytest.mark.parametrize("name", list(USAGE_ERRORS))
def test_usage_errors_exit_2(name: str, ran: dict[str, Ran]) -> None:
    result = ran[f"usage/{name}"].result
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert "usage: radfusion" in result.stderr


def test_version(ran: dict[str, Ran]) -> None:
    result = ran["version"].result
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"radfusion {importlib.metadata.version('radfusion')}"


def test_debug_shows_the_traceback(ran: dict[str, Ran]) -> None:
    result = ran["debug"].result
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "radfusion.errors.UserError: --patients must be at least 1, not 0" in result.stderr


@pytest.mark.parametrize("name", list(LOG_LEVELS))
def test_log_level(name: str, ran: dict[str, Ran]) -> None:
    """radfusion's INFO records on stderr by default, none with -q / --log-level
    warning or error; the result (the cohort summary) on stdout either way."""
    result = ran[f"log/{name}"].result
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n_patients"] == 1
    assert (" INFO " in result.stderr) is (name == "default"), result.stderr


@pytest.mark.parametrize("command", list(STRIPPED))
def test_global_flags_are_stripped_before_a_command_with_its_own_parser(command: str, ran: dict[str, Ran]) -> None:
    """train (and cv), listen (and pacs-status) parse their own arguments: the global
    options before them never reach those parsers."""
    one_line_error(ran[f"stripped/{command}"].result, command)


def test_third_party_info_is_quiet_by_default() -> None:
    """A library's INFO record (one that sets its own logger's level, as Lightning does)
    is dropped; radfusion's is kept; at debug both are kept."""
    import logging

    from radfusion.cli.logs import _LibraryFilter

    def record(name: str, level: int) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "message", None, None)

    default = _LibraryFilter(logging.WARNING)
    assert not default.filter(record("lightning.pytorch.utilities.rank_zero", logging.INFO))
    assert default.filter(record("ray", logging.WARNING))
    assert default.filter(record("radfusion.serving.scoring.score", logging.INFO))
    assert _LibraryFilter(logging.DEBUG).filter(record("bentoml", logging.DEBUG))


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`radfusion --help` and each argparse subcommand's --help (train and cv: their own
    parsers, which import Lightning; listen and pacs-status: serving's parser)."""
    import radfusion.cli as cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = [name for name in sub.choices if name not in ("train", "cv")]
    for argv in (["--help"], *([name, "--help"] for name in commands), ["cohort", "build", "--help"]):
        with pytest.raises(SystemExit) as stopped:
            cli.main(argv)
        assert stopped.value.code == 0, argv
        assert "usage: radfusion" in capsys.readouterr().out, argv
    parser_help = parser.format_help()
    for option in ("--version", "--debug", "--log-level", "--quiet"):
        assert option in parser_help


@pytest.mark.slow
def test_train_help_names_the_command(work: Path) -> None:
    result = radfusion("train", "--help", cwd=work)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: radfusion train")


@pytest.mark.slow
def test_export_models_match_the_exportable_baselines() -> None:
    """The CLI lists export's --model choices without importing torch: the same list."""
    pytest.importorskip("torch")
    from radfusion.cli import EXPORT_MODELS
    from radfusion.training.cv.affine import AFFINE_BASELINES
    from radfusion.training.export import NETWORK

    assert (NETWORK, *AFFINE_BASELINES) == EXPORT_MODELS


def test_user_error_is_one_line_with_its_fix() -> None:
    from radfusion.cli.failures import user_error_message
    from radfusion.errors import UserError

    assert user_error_message(UserError("--x is wrong", "give --x 1")) == "--x is wrong; give --x 1"
    missing = FileNotFoundError(2, "No such file or directory", "/nope")
    assert (
        user_error_message(missing)
        == "/nope: no such file or directory; check the path (radfusion --debug ... shows where)"
    )
    # A command that reads studies names no path it did not name itself (it may name a patient).
    assert user_error_message(missing, hide_paths=True).startswith("a file or folder: no such file or directory;")
    assert user_error_message(FileNotFoundError("no checkpoint in the run folder\n(looked)")) == (
        "no checkpoint in the run folder (looked); check the path (radfusion --debug ... shows where)"
    )
    assert user_error_message(ValueError("a bug")) is None  # a bug keeps its traceback
    assert user_error_message(OSError("disk")) is None


def test_nothing_leaves_the_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The command turns the libraries' usage statistics off (unless the operator set
    them), and every ONNX Runtime session is opened with its telemetry off."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from radfusion.cli import main
    from radfusion.runtime import open_session

    for name in ("BENTOML_DO_NOT_TRACK", "RAY_USAGE_STATS_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    main(["--version"])
    assert os.environ["BENTOML_DO_NOT_TRACK"] == "True" and os.environ["RAY_USAGE_STATS_ENABLED"] == "0"

    calls: list[bool] = []
    monkeypatch.setattr(ort, "disable_telemetry_events", lambda: calls.append(True))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    open_session(path, device="cpu")
    assert calls


def test_serve_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import fields

    from radfusion.cli import build_parser
    from radfusion.serving.settings import DeclaredSettings, ServiceSettings

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", "--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    names = [f.metadata["env"] for cls in (DeclaredSettings, ServiceSettings) for f in fields(cls)]
    assert names and all(f"  {name} (default " in shown for name in names)
