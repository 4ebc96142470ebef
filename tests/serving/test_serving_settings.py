"""Service settings are read when the service starts, never when it is imported, and a
bad value names its variable and the form it expects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields

import pytest

from radfusion.limits import StudyBudget
from radfusion.serving.orphans import LAUNCHER_PID_ENV
from radfusion.serving.settings import (
    DeclaredSettings,
    ListenerSettings,
    ServiceSettings,
    SettingsError,
    StudySettings,
    declared_from_env,
    settings_markdown,
)
from tests.support.paths import PROJECT_ROOT as ROOT


def _env_names(cls) -> list[str]:
    return [f.metadata["env"] for f in fields(cls)]


def test_defaults_without_environment() -> None:
    settings = ServiceSettings.from_env({})
    assert (settings.max_upload_bytes, settings.max_study_files, settings.retry_after_s) == (1024**3, 20_000, 2)
    assert settings.dicomweb_allowed_urls == () and settings.genomics_table is None
    assert declared_from_env({}) == DeclaredSettings()


def test_values_are_parsed(tmp_path) -> None:
    table = tmp_path / "g.parquet"
    table.write_bytes(b"")
    settings = ServiceSettings.from_env(
        {
            "RADFUSION_MAX_UPLOAD_BYTES": " 2048 ",
            "RADFUSION_ORT_THREADS": "0",
            "RADFUSION_GENOMICS_TABLE": str(table),
            "RADFUSION_EXPLAIN_TOP_GENES": "3",
        }
    )
    assert (settings.max_upload_bytes, settings.ort_threads, settings.genomics_table) == (2048, 0, str(table))
    assert settings.explain.top_genes == 3
    assert not declared_from_env({"RADFUSION_BATCHING": "OFF"}).batching
    # The model service's ONNX Runtime threads sleep when idle unless told otherwise.
    assert ServiceSettings.from_env({}).ort_spinning == "off"
    assert ServiceSettings.from_env({"RADFUSION_ORT_SPINNING": " Recorded "}).ort_spinning == "recorded"


def test_the_study_budget_comes_from_the_settings() -> None:
    """The budget each uploaded, STOW-RS or DICOMweb study is read under."""
    assert ServiceSettings.from_env({}).study_budget() == StudyBudget(max_seconds=240.0)
    budget = ServiceSettings.from_env(
        {
            "RADFUSION_STUDY_MAX_VOXELS": "1000",
            "RADFUSION_STUDY_MAX_DECODED_BYTES": "4096",
            "RADFUSION_STUDY_MAX_SECONDS": "7",
            "RADFUSION_MAX_STUDY_FILES": "12",
            "RADFUSION_MAX_STUDY_BYTES": "8192",
        }
    ).study_budget()
    assert budget == StudyBudget(max_files=12, max_bytes=8192, max_decoded_bytes=4096, max_voxels=1000, max_seconds=7.0)


def test_request_parsing_and_header_bounds_are_settings() -> None:
    settings = ServiceSettings.from_env({"RADFUSION_MAX_JSON_BYTES": "1024", "RADFUSION_HEADER_TIMEOUT_S": "5"})
    assert (settings.max_json_bytes, settings.header_timeout_s) == (1024, 5)
    defaults = ServiceSettings.from_env({})
    assert (defaults.max_json_bytes, defaults.header_timeout_s) == (16 * 1024**2, 20)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "RADFUSION_MAX_UPLOAD_BYTES",
            "2G",
            "RADFUSION_MAX_UPLOAD_BYTES: expected an integer number of bytes, got '2G'",
        ),
        ("RADFUSION_MAX_IN_FLIGHT", "0", "RADFUSION_MAX_IN_FLIGHT: expected a positive integer, got '0'"),
        ("RADFUSION_ORT_THREADS", "-1", "RADFUSION_ORT_THREADS: expected an integer >= 0"),
        ("RADFUSION_ORT_SPINNING", "yes", "RADFUSION_ORT_SPINNING: expected one of off, on, recorded"),
        (
            "RADFUSION_DICOMWEB_TIMEOUT_S",
            "1.5",
            "RADFUSION_DICOMWEB_TIMEOUT_S: expected a positive integer number of seconds",
        ),
        ("RADFUSION_DICOMWEB_ALLOWED_URLS", "ftp://x", "RADFUSION_DICOMWEB_ALLOWED_URLS: expected comma-separated"),
        ("RADFUSION_MAX_UPLOAD_BYTES", "1_000", "RADFUSION_MAX_UPLOAD_BYTES: expected an integer number of bytes"),
        ("RADFUSION_MAX_IN_FLIGHT", "\u0661\u0660", "RADFUSION_MAX_IN_FLIGHT: expected a positive integer"),
        ("RADFUSION_STUDY_MAX_VOXELS", "1e6", "RADFUSION_STUDY_MAX_VOXELS: expected a positive integer, got '1e6'"),
        (
            "RADFUSION_STUDY_MAX_DECODED_BYTES",
            "2GiB",
            "RADFUSION_STUDY_MAX_DECODED_BYTES: expected an integer number of bytes, got '2GiB'",
        ),
        (
            "RADFUSION_STUDY_MAX_SECONDS",
            "0",
            "RADFUSION_STUDY_MAX_SECONDS: expected a positive integer number of seconds",
        ),
        ("RADFUSION_MAX_JSON_BYTES", "-1", "RADFUSION_MAX_JSON_BYTES: expected an integer number of bytes"),
        (
            "RADFUSION_HEADER_TIMEOUT_S",
            "2.5",
            "RADFUSION_HEADER_TIMEOUT_S: expected a positive integer number of seconds",
        ),
    ],
)
def test_a_bad_value_names_the_variable_and_the_form(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        ServiceSettings.from_env({name: value})
    assert str(raised.value).startswith(message)


def test_a_refused_url_setting_does_not_echo_its_credentials() -> None:
    with pytest.raises(SettingsError) as raised:
        ServiceSettings.from_env({"RADFUSION_DICOMWEB_ALLOWED_URLS": "http://user:secret@pacs.example/dicom-web"})
    assert str(raised.value).startswith("RADFUSION_DICOMWEB_ALLOWED_URLS: expected comma-separated")
    assert "secret" not in str(raised.value)


def test_a_bad_declared_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="RADFUSION_BATCHING: expected 'on' or 'off', got 'maybe'"):
        declared_from_env({"RADFUSION_BATCHING": "maybe"})


PROBE = """
import json, os, sys
read = []
class Spy(dict):
    def get(self, key, default=None):
        read.append(key)
        return super().get(key, default)
    def __getitem__(self, key):
        read.append(key)
        return super().__getitem__(key)
import os
spy = Spy(os.environ)
os.environ = spy
import radfusion.serving.http.service
print(json.dumps(sorted(set(k for k in read if k.startswith("RADFUSION_")))))
"""


def test_importing_the_service_reads_no_service_setting() -> None:
    """Every ServiceSettings variable set to garbage: the import still works, and it
    read none of them (only the four BentoML fixes at declaration, and the model tag
    `bentoml build` names)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADFUSION_")}
    env.update(dict.fromkeys(_env_names(ServiceSettings), "garbage"))
    env["PYTHONPATH"] = str(ROOT)
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    read = set(json.loads(probe.stdout.strip().splitlines()[-1]))
    # RADFUSION_LAUNCHER_PID: whether this process is a server to stop with its launcher (radfusion/serving/orphans.py).
    allowed = {*_env_names(DeclaredSettings), "RADFUSION_MODEL", LAUNCHER_PID_ENV}
    assert set(_env_names(DeclaredSettings)) <= read <= allowed, read
    assert read.isdisjoint(_env_names(ServiceSettings))
    # The first field read at start is the first to fail.
    first = _env_names(ServiceSettings)[0]
    with pytest.raises(SettingsError, match=f"{first}: expected .*, got 'garbage'"):
        ServiceSettings.from_env(env)


def test_committed_settings_docs_equal_the_generated_table() -> None:
    generated = subprocess.run(
        [sys.executable, "-m", "radfusion.cli", "settings", "--markdown"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert generated == settings_markdown()
    assert "`RADFUSION_MAX_UPLOAD_BYTES` | 1073741824 |" in generated
    committed = (ROOT / "docs" / "settings.md").read_text()
    assert committed == generated, "docs/settings.md is stale: radfusion settings --markdown > docs/settings.md"


def test_listener_reads_its_variables_and_its_flags_win(tmp_path) -> None:
    table = tmp_path / "genomics.parquet"
    table.write_bytes(b"")
    env = {
        "RADFUSION_LISTEN_PORT": "104",
        "RADFUSION_LISTEN_AE_TITLE": " SCORER ",
        "RADFUSION_LISTEN_SEND_TO": "ORTHANC@127.0.0.1:4242, ARCHIVE@pacs.local:104",
        "RADFUSION_LISTEN_KEEP_HOURS": "-1",
        "RADFUSION_LISTEN_REPORT_FAILURES": "off",
        "RADFUSION_STUDY_MAX_VOXELS": "1000000",
        "RADFUSION_GENOMICS_TABLE": str(table),
    }
    settings = ListenerSettings.from_env(env)
    assert (settings.port, settings.ae_title, settings.keep_hours, settings.report_failures) == (
        104,
        "SCORER",
        None,
        False,
    )
    assert settings.send_to == ("ORTHANC@127.0.0.1:4242", "ARCHIVE@pacs.local:104")
    # The study budget and the tables are the service's variables, read the same way.
    assert settings.study_budget().max_voxels == 1_000_000 == ServiceSettings.from_env(env).study_budget().max_voxels
    assert settings.genomics_table == str(table)
    with pytest.raises(SettingsError, match="RADFUSION_GENOMICS_TABLE: no readable file"):
        ListenerSettings.from_env({"RADFUSION_GENOMICS_TABLE": str(tmp_path / "missing.parquet")})

    given = ListenerSettings.from_env(
        env, {"port": "11113", "send_to": ["A@127.0.0.1:1"], "report_failures": True, "keep_hours": "0"}
    )
    assert (given.port, given.send_to, given.report_failures, given.keep_hours) == (
        11113,
        ("A@127.0.0.1:1",),
        True,
        0.0,
    )
    assert given.ae_title == "SCORER"  # no flag: the variable stays


@pytest.mark.parametrize(
    ("env", "flags", "named"),
    [
        ({"RADFUSION_LISTEN_PORT": "70000"}, {}, "RADFUSION_LISTEN_PORT: expected a TCP port"),
        ({}, {"port": "x"}, "--port: expected a TCP port"),
        ({"RADFUSION_LISTEN_AE_TITLE": "A" * 17}, {}, "RADFUSION_LISTEN_AE_TITLE: expected an AE title"),
        ({}, {"allow_aet": ["OK", "BAD\\AET"]}, "--allow-aet: expected an AE title"),
        ({"RADFUSION_LISTEN_SEND_TO": "PACS@host"}, {}, "RADFUSION_LISTEN_SEND_TO: expected AET@HOST:PORT"),
        ({}, {"send_to": ["PACS@host:99999"]}, "--send-to: expected AET@HOST:PORT"),
        ({"RADFUSION_LISTEN_QUIET_SECONDS": "nan"}, {}, "RADFUSION_LISTEN_QUIET_SECONDS: expected a positive number"),
        ({}, {"retry_seconds": "0"}, "--retry-seconds: expected a positive number"),
        ({"RADFUSION_LISTEN_KEEP_HOURS": "inf"}, {}, "RADFUSION_LISTEN_KEEP_HOURS: expected a number of hours"),
        ({}, {"on_resend": "always"}, "--on-resend: expected one of ignore, rescore"),
        ({"RADFUSION_LISTEN_DEVICE": "tpu"}, {}, "RADFUSION_LISTEN_DEVICE: expected one of auto, cpu, cuda"),
        ({"RADFUSION_STUDY_MAX_SECONDS": "1.5"}, {}, "RADFUSION_STUDY_MAX_SECONDS: expected a positive integer"),
        ({"RADFUSION_LISTEN_STOW_URL": "ftp://pacs/"}, {}, "RADFUSION_LISTEN_STOW_URL: expected a DICOMweb root"),
    ],
)
def test_a_bad_listener_value_names_its_variable_or_flag(env: dict, flags: dict, named: str) -> None:
    with pytest.raises(SettingsError) as error:
        ListenerSettings.from_env(env, flags)
    assert str(error.value).startswith(named), str(error.value)


def test_every_listener_option_has_its_setting() -> None:
    from radfusion.serving.pacs.cli import build_parser

    listen = build_parser()._subparsers._group_actions[0].choices["listen"]  # type: ignore[union-attr]
    options = {o for action in listen._actions for o in action.option_strings}
    flags = {f.metadata["flag"] for f in fields(ListenerSettings) if f.metadata["flag"]}
    assert flags <= options
    assert options - flags - {"--no-report-failures"} == {"-h", "--help", "--model", "--work"}
    assert {f.name for f in fields(StudySettings)} < {f.name for f in fields(ListenerSettings)}


def test_check_environment_names_every_bad_value_and_unknown_name(tmp_path) -> None:
    from radfusion.serving.settings import check_environment

    problems = check_environment(
        {
            "RADFUSION_DEVICE": "tpu",
            "RADFUSION_AUTH": "maybe",
            "RADFUSION_API_TOKENS_FILE": str(tmp_path / "none"),
            "RADFUSION_STUDY_MAX_SECONDS": "x",  # read by the service and the listener: reported once
            "RADFUSION_MAX_UPLOAD_BYTE": "1",
            "RADFUSION_CACHE_DIR": str(tmp_path),
            "HOME": "/root",
        }
    )
    assert [p.split(":")[0] for p in problems] == [
        "RADFUSION_DEVICE",
        "RADFUSION_API_TOKENS_FILE",
        "RADFUSION_AUTH",
        "RADFUSION_STUDY_MAX_SECONDS",
        "RADFUSION_MAX_UPLOAD_BYTE",
    ]
    assert problems[-1].endswith("(did you mean RADFUSION_MAX_UPLOAD_BYTES?)")
    assert check_environment({"RADFUSION_AUTH": "off", "RADFUSION_LISTEN_PORT": "104"}) == []
