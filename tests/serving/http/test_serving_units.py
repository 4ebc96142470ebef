"""Serving pieces without a running service: safe zip extraction, the request size
limit, model references, start-up failure reporting and `bentoml build`."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from radfusion.dicom import find_studies
from radfusion.serving.http.launch import ServerStartError, running_server
from radfusion.serving.http.limits import BodySizeLimit
from radfusion.serving.modelref import (
    ModelNotFoundError,
    device_from_env,
    looks_like_tag,
    resolve_model_path,
)
from radfusion.serving.study_files import (
    BadArchiveError,
    Budget,
    UnsafeArchiveError,
    UploadTooLargeError,
    extract_zip,
    study_files,
)


def make_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


# ------------------------------------------------------------------------------- zips


def test_members_get_generated_names_inside_dest(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "a.zip",
        {"Doe^John/IM0001": b"one", "deep/er/IM0002.dcm": b"two", ".DS_Store": b"x", "__MACOSX/._IM1": b"y"},
    )
    written = extract_zip(archive, tmp_path / "out", Budget.of(10_000, 10))
    assert [p.name for p in written] == ["000000.dcm", "000001.dcm"]
    assert [p.read_bytes() for p in written] == [b"one", b"two"]
    assert all(p.parent == tmp_path / "out" for p in written)  # no member name survives


@pytest.mark.parametrize("name", ["../evil.dcm", "a/../../evil.dcm", "/etc/evil.dcm", "C:\\evil.dcm", "..\\evil.dcm"])
def test_escaping_member_names_reject_the_archive(tmp_path: Path, name: str) -> None:
    archive = make_zip(tmp_path / "a.zip", {"ok.dcm": b"fine", name: b"evil"})
    with pytest.raises(UnsafeArchiveError):
        extract_zip(archive, tmp_path / "out", Budget.of(10_000, 10))
    assert not (tmp_path / "out").exists()  # rejected before anything is written
    assert not (tmp_path / "evil.dcm").exists()


def test_zip_bomb_is_stopped_by_the_byte_budget(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bomb.zip", {"a.dcm": b"\0" * (8 * 1024 * 1024)})
    assert archive.stat().st_size < 64 * 1024  # small on the wire
    with pytest.raises(UploadTooLargeError):
        extract_zip(archive, tmp_path / "out", Budget.of(1024 * 1024, 10))


def test_too_many_members(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "many.zip", {f"{i}.dcm": b"x" for i in range(12)})
    with pytest.raises(UploadTooLargeError, match="12 files"):
        extract_zip(archive, tmp_path / "out", Budget.of(10_000, 10))


def test_broken_zip(tmp_path: Path) -> None:
    whole = make_zip(tmp_path / "a.zip", {"a.dcm": os.urandom(5000)}).read_bytes()
    broken = tmp_path / "broken.zip"
    broken.write_bytes(whole[:2000])
    with pytest.raises(BadArchiveError, match="not a readable zip"):
        study_files([broken], tmp_path / "work", max_bytes=10**6, max_members=10)


def test_parts_mix_zips_and_dicom_files(tiny_cohort: Path, tmp_path: Path) -> None:
    study = next(iter(find_studies(tiny_cohort / "dicom").studies.values()))
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    paths = [Path(shutil.copy(h.path, uploads / f"{study.patient_id}_{i}.dcm")) for i, h in enumerate(study.instances)]
    contents = sorted(p.read_bytes() for p in paths)
    archive = make_zip(tmp_path / "half.zip", {p.name: p.read_bytes() for p in paths[:5]})
    with pytest.raises(UploadTooLargeError):
        study_files([archive, *paths[5:]], tmp_path / "work0", max_bytes=1000, max_members=100)
    files = study_files([archive, *paths[5:]], tmp_path / "work", max_bytes=10**7, max_members=100)
    assert len(files) == len(paths)
    assert sorted(f.read_bytes() for f in files) == contents
    # Every file now lies under a generated name: no client file name (or patient ID) left.
    assert all(f.is_relative_to(tmp_path / "work") and study.patient_id not in str(f) for f in files)


# ---------------------------------------------------------------------- request size


def echo_app(limit: int):
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"received": len(await request.body())})

    return BodySizeLimit(Starlette(routes=[Route("/", echo, methods=["POST"])]), max_bytes=limit)


def test_body_limit_by_content_length_and_by_stream() -> None:
    async def stream(n_chunks: int):
        for _ in range(n_chunks):
            yield b"x" * 400

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=echo_app(limit=1000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [
                await client.post("/", content=b"x" * 1000),
                await client.post("/", content=b"x" * 1001),
                await client.post("/", content=stream(2)),  # no Content-Length: counted
                await client.post("/", content=stream(3)),
            ]

    exact, too_big, streamed_ok, streamed_too_big = anyio.run(scenario)
    assert exact.json() == {"received": 1000}
    assert streamed_ok.json() == {"received": 800}
    for response in (too_big, streamed_too_big):
        assert response.status_code == 413
        assert response.json()["error"] == "upload_too_large"


# ---------------------------------------------------------------------- model refs


def test_model_references(tiny_onnx_model: Path, monkeypatch) -> None:
    assert resolve_model_path(tiny_onnx_model) == tiny_onnx_model
    assert resolve_model_path(str(tiny_onnx_model)) == tiny_onnx_model
    assert looks_like_tag("radfusion-fusion:20260101-abc") and looks_like_tag("m:latest")
    assert not looks_like_tag("runs/m.onnx") and not looks_like_tag("m.onnx") and not looks_like_tag("C:\\m")
    with pytest.raises(ModelNotFoundError):
        resolve_model_path("runs/missing.onnx")
    monkeypatch.setenv("RADFUSION_DEVICE", "tpu")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        device_from_env()
    monkeypatch.setenv("RADFUSION_DEVICE", "CPU")
    assert device_from_env() == "cpu"


def test_missing_model_fails_before_starting() -> None:
    with pytest.raises(ModelNotFoundError), running_server("runs/no/such/model.onnx"):
        pass


@pytest.mark.slow
def test_broken_model_fails_fast_with_the_reason(tmp_path: Path, bentoml_home: Path) -> None:
    """BentoML restarts a service whose start-up failed rather than exiting; the
    launcher must notice and say why instead of waiting out its timeout."""
    fake = tmp_path / "model.onnx"
    fake.write_text("not an ONNX file")
    with (
        pytest.raises(ServerStartError, match=r"DecodeError|failed to start"),
        running_server(fake, timeout=60, env={"BENTOML_HOME": str(bentoml_home), "RADFUSION_API_TOKENS": "test-token"}),
    ):
        pass


def test_the_model_service_client_keeps_its_session() -> None:
    """BentoML's dependency client would replace its HTTP session every 100 calls,
    dropping the calls in flight on the old one (each then computed for nothing and
    retried): the model service is declared so that its callers keep theirs."""
    from radfusion.serving.http.service import RadfusionModel

    connection = RadfusionModel.config["runner_connection"]
    assert connection["max_requests"] >= 2**31 - 1 and connection["max_age"] >= 24 * 3600


def test_the_model_api_batches_on_its_own_thread_and_declares_its_answer() -> None:
    """The model API is not BentoML-batchable (radfusion.serving.http.model_batches does
    the batching), and its answer's media type is declared, so that BentoML does not
    work it out from the type's JSON schema on every answer; what it sends is unchanged."""
    from radfusion.serving.http.service import RadfusionModel

    api = RadfusionModel.apis["probabilities"]
    assert not api.batchable
    assert api.output_spec.media_type == "application/json"
    assert api.output_spec.mime_type() == "application/json"
    assert api.output_spec.model_json_schema() == {"type": "tensor", "format": "numpy-array"}
