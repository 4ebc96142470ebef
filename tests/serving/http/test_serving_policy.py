"""Serving rules checked without a server: authentication is the default, DICOMweb
references are fetched only below allowed base URLs, and batch requests are validated
case by case."""

from __future__ import annotations

import anyio
import httpx
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from radfusion.serving.dicomweb import (
    BadDicomwebRefError,
    DicomwebNotAllowedError,
    DicomwebPolicy,
    DicomwebRef,
)
from radfusion.serving.http.auth import (
    AuthNotConfiguredError,
    TokenAuth,
    check_auth_config,
)
from radfusion.serving.http.cases import (
    CaseRequest,
    NoCasesError,
    TooManyCasesError,
    batch_cases,
    upload_problems,
)
from radfusion.serving.http.launch import check_auth_for_host, running_server
from radfusion.serving.settings import ServiceSettings

UID = "1.2.826.0.1.3680043.8.498.1"

# ------------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    ("env", "ok"),
    [
        ({}, False),
        ({"RADFUSION_AUTH": "required"}, False),
        ({"RADFUSION_API_TOKENS": " , "}, False),  # blanks are no token
        ({"RADFUSION_API_TOKENS": "t1"}, True),
        ({"RADFUSION_AUTH": "OFF"}, True),
    ],
)
def test_service_needs_a_token_unless_auth_is_off(env: dict, ok: bool) -> None:
    if ok:
        check_auth_config(env)
    else:
        with pytest.raises(AuthNotConfiguredError, match="RADFUSION_API_TOKENS"):
            check_auth_config(env)


def test_tokens_file_counts(tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# rotated monthly\n\nfile-token\n")
    check_auth_config({"RADFUSION_API_TOKENS_FILE": str(tokens)})


def test_auth_off_is_for_loopback_hosts_only() -> None:
    check_auth_for_host({"RADFUSION_AUTH": "off"}, "127.0.0.1")
    check_auth_for_host({"RADFUSION_AUTH": "off"}, "::1")
    with pytest.raises(AuthNotConfiguredError, match="not loopback"):
        check_auth_for_host({"RADFUSION_AUTH": "off"}, "0.0.0.0")
    check_auth_for_host({"RADFUSION_API_TOKENS": "t"}, "0.0.0.0")  # tokens: any host


def test_launcher_refuses_before_starting(tiny_onnx_model, monkeypatch) -> None:
    for name in ("RADFUSION_API_TOKENS", "RADFUSION_API_TOKENS_FILE", "RADFUSION_AUTH"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(AuthNotConfiguredError), running_server(tiny_onnx_model):
        pass


def _app(**auth) -> TokenAuth:
    async def hello(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/predict", hello, methods=["POST"]), Route("/metrics", hello)])
    return TokenAuth(app, **auth)


def _call(app, client_host: str, path: str = "/predict", headers: dict | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client_host, 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            if path == "/metrics":
                return await client.get(path)
            return await client.post(path, headers=headers or {})

    return anyio.run(go)


def test_auth_off_serves_loopback_clients_only() -> None:
    refused: list[tuple[str, str]] = []
    app = _app(tokens=[], auth_off=True, on_refused=lambda kind, path: refused.append((kind, path)))
    assert _call(app, "127.0.0.1").status_code == 200
    assert _call(app, "::1").status_code == 200
    remote = _call(app, "10.1.2.3")
    assert remote.status_code == 403 and remote.json()["error"] == "forbidden"
    assert _call(app, "10.1.2.3", "/metrics").status_code == 200  # open paths stay open
    assert refused == [("forbidden", "/predict")]


def test_no_token_and_auth_not_off_refuses_everything() -> None:
    """The second line of defence, if the service were started anyway."""
    app = _app(tokens=[])
    assert _call(app, "127.0.0.1").status_code == 401
    assert _call(app, "127.0.0.1", headers={"Authorization": "Bearer "}).status_code == 401


def test_tokens_win_over_auth_off() -> None:
    refused: list[tuple[str, str]] = []
    app = _app(tokens=["t1"], auth_off=True, on_refused=lambda kind, path: refused.append((kind, path)))
    assert _call(app, "127.0.0.1").status_code == 401  # a token configured is always required
    assert _call(app, "10.0.0.1", headers={"Authorization": "Bearer t1"}).status_code == 200
    assert refused == [("unauthorized", "/predict")]


# --------------------------------------------------------------------------- DICOMweb

POLICY = DicomwebPolicy(allowed=("http://127.0.0.1:8042/dicom-web", "https://PACS.example.org"))


@pytest.mark.parametrize(
    ("url", "fetched"),
    [
        ("http://127.0.0.1:8042/dicom-web", "http://127.0.0.1:8042/dicom-web"),
        ("http://127.0.0.1:8042/dicom-web/", "http://127.0.0.1:8042/dicom-web"),
        ("http://127.0.0.1:8042/dicom-web/sub", "http://127.0.0.1:8042/dicom-web/sub"),
        ("https://pacs.example.org:443/wado", "https://pacs.example.org:443/wado"),
    ],
)
def test_allowed_references(url: str, fetched: str) -> None:
    assert POLICY.check(DicomwebRef(url=url, study_uid=UID)) == fetched


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://127.0.0.1:8042/dicom-webX", DicomwebNotAllowedError),  # not a path segment boundary
        ("http://127.0.0.1:8043/dicom-web", DicomwebNotAllowedError),  # other port
        ("http://127.0.0.1:8042/other", DicomwebNotAllowedError),
        ("http://127.0.0.1.evil.example:8042/dicom-web", DicomwebNotAllowedError),
        ("https://127.0.0.1:8042/dicom-web", DicomwebNotAllowedError),  # other scheme
        ("http://pacs.example.org", DicomwebNotAllowedError),
        ("http://127.0.0.1:8042/dicom-web/../admin", BadDicomwebRefError),
        ("http://user:pw@127.0.0.1:8042/dicom-web", BadDicomwebRefError),
        ("http://127.0.0.1:8042/dicom-web?x=1", BadDicomwebRefError),
        ("file:///etc/passwd", BadDicomwebRefError),
        ("ftp://127.0.0.1/dicom-web", BadDicomwebRefError),
    ],
)
def test_refused_references(url: str, error: type) -> None:
    with pytest.raises(error):
        POLICY.check(DicomwebRef(url=url, study_uid=UID))


def test_study_uid_must_be_a_uid_and_dicomweb_off_without_allowed_urls() -> None:
    with pytest.raises(BadDicomwebRefError, match="UID"):
        POLICY.check(DicomwebRef(url="http://127.0.0.1:8042/dicom-web", study_uid="1.2/../../studies"))
    with pytest.raises(ValidationError):
        DicomwebRef(url="http://127.0.0.1:8042/dicom-web", study_uid="1." * 40)
    with pytest.raises(DicomwebNotAllowedError, match="off"):
        DicomwebPolicy().check(DicomwebRef(url="http://127.0.0.1:8042/dicom-web", study_uid=UID))


def test_policy_from_settings() -> None:
    settings = ServiceSettings.from_env(
        {
            "RADFUSION_DICOMWEB_ALLOWED_URLS": " http://a.example/dw , http://b.example ",
            "RADFUSION_DICOMWEB_TIMEOUT_S": "7",
            "RADFUSION_MAX_STUDY_BYTES": "10",
            "RADFUSION_MAX_STUDY_FILES": "2",
        }
    )
    policy = settings.dicomweb_policy()
    assert policy.allowed == ("http://a.example/dw", "http://b.example") and not policy.is_trusted
    assert (policy.timeout_s, policy.max_bytes, policy.max_instances) == (7.0, 10, 2)


def test_trusted_policy_takes_any_http_server_but_still_checks_the_uid() -> None:
    trusted = DicomwebPolicy.trusted()
    assert trusted.check(DicomwebRef(url="http://archive.internal:8042/dicom-web/", study_uid=UID)) == (
        "http://archive.internal:8042/dicom-web"
    )
    with pytest.raises(BadDicomwebRefError, match="UID"):
        trusted.check(DicomwebRef(url="http://archive.internal/dicom-web", study_uid="1.2/../x"))
    with pytest.raises(BadDicomwebRefError):
        trusted.check_url("file:///etc/passwd")
    with pytest.raises(DicomwebNotAllowedError):  # a caller's policy never searches a whole server
        POLICY.check_url("http://127.0.0.1:8042/dicom-web")


# ------------------------------------------------------------------------------ cases


def test_case_schema() -> None:
    case = CaseRequest.model_validate({"study": {"upload": 0}, "genomics": {"TP53": 1.0}, "clinical": {"age": 60}})
    assert case.study.upload == 0 and case.clinical == {"age": 60}
    CaseRequest.model_validate({"study": {"dicomweb": {"url": "http://x", "study_uid": UID}}})
    with pytest.raises(ValidationError, match="exactly one"):
        CaseRequest.model_validate({"study": {"upload": 0, "dicomweb": {"url": "http://x", "study_uid": UID}}})
    with pytest.raises(ValidationError, match="exactly one"):
        CaseRequest.model_validate({"study": {}})
    with pytest.raises(ValidationError):
        CaseRequest.model_validate({"study": {"upload": -1}})


def test_batch_cases_and_upload_problems() -> None:
    implied = batch_cases([], n_uploads=3, max_cases=8)
    assert [c.study.upload for c in implied] == [0, 1, 2]
    with pytest.raises(NoCasesError):
        batch_cases([], n_uploads=0, max_cases=8)
    with pytest.raises(TooManyCasesError, match="9 cases"):
        batch_cases([CaseRequest()] * 9, n_uploads=0, max_cases=8)
    cases = [
        CaseRequest.model_validate(c)
        for c in (
            {"study": {"upload": 0}},
            {"study": {"upload": 1}},
            {"study": {"upload": 1}},
            {"study": {"upload": 5}},
            {"genomics": {"TP53": 1.0}},
        )
    ]
    problems = upload_problems(cases, n_uploads=2)
    assert sorted(problems) == [1, 2, 3]
    assert "named by 2 cases" in problems[1].message and "5 does not exist" in problems[3].message
    assert all(p.http_status == 400 and p.kind == "bad_case" for p in problems.values())
