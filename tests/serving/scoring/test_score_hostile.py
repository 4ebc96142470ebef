"""Hostile and odd files never stop an archive run, never give a NaN, cost no more than
the study's budget and put no identifier in the scorer's log.

The archive is the tiny cohort's studies plus, in folders named after planted patient
names (with those names and IDs planted in the files):

* hostile studies, found by discovery and failing alone with a specific kind: every
  file with an unknown VR, or a sequence nested 5000 deep, after the identifiers; zips
  whose members fail their CRC or whose deflated data is corrupt; a 3 MB zip bomb; a
  study over --study-max-files; a patient whose genomics overflow float32;
* files that belong to no study (their identifiers cannot be read): an unknown VR or a
  5000-deep sequence before the identifiers, a meta header claiming Deflated, a zip
  whose member cannot be inflated, a zip inside a zip, a zip that is no zip, a file that
  vanished (a dangling link), a FIFO, a file and a folder that cannot be read;
* an odd study that scores normally although its reader warns (invalid UIDs quoting a
  planted name).

``radfusion score`` runs on it as a user runs it (a subprocess, two worker processes),
then runs again (resume)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from radfusion.dicom import find_studies
from radfusion.errors import StudyOverBudgetError, UploadTooLargeError, ZipBombError
from radfusion.limits import MAX_ZIP_RATIO, StudyBudget
from radfusion.runtime import OnnxModel
from radfusion.serving.patient_data import PatientData
from radfusion.serving.patients import PatientTables
from radfusion.serving.scoring import prepare, sources
from radfusion.serving.scoring.local_engine import LocalEngine
from radfusion.serving.scoring.prepare import prepare_study
from radfusion.serving.scoring.progress import Progress
from radfusion.serving.scoring.rows import TIMING_COLUMNS, error_kind, output_schema
from radfusion.serving.scoring.score import score_archive
from radfusion.serving.scoring.sources import ScanUnit, StudyRef, list_units, local_study_files, scan_unit
from radfusion.serving.scoring.writer import PartWriter
from radfusion.serving.study_files import _CHUNK, BadArchiveError, Budget, extract_members
from tests.support.paths import PROJECT_ROOT as ROOT

MIB = 1024 * 1024
MAX_FILES = 40  # --study-max-files: the tiny studies have 11 files, the crowded one 44
# Which error each hostile study must end with; None: any specific kind (the core's).
HOSTILE = {
    "DOE^JOHN_1960": None,  # unknown VR (Modality) in every file
    "ROE^JANE_1971": None,  # 5000-deep sequence after the identifiers in every file
    "POE^EDGAR_1949": "bad_archive",  # a zip whose members fail their CRC
    "LOE^MARY_1982": "bad_archive",  # a zip whose members' deflated data is corrupt
    "BOMB^BERTHA_1990": "zip_bomb",  # a 3 MB zip bomb
    "CROWD^CARL_1955": "upload_too_large",  # more files than --study-max-files
    "HUGE^HUGO_1966": {"invalid_value", "non_finite_output"},  # genomics of 1e39
}
ODD = "WARN^WALTER_1977"  # invalid UIDs quoting the planted name: scored all the same
ORPHANS = (
    "VR^VICTOR_1961",
    "DEEP^DORA_1962",
    "DEFLATE^DAN_1963",
    "ZIPPED^ZOE_1964",
    "NESTED^NED_1965",
    "BROKEN^BEN_1967",
    "GONE^GUS_1968",
    "FIFO^FAY_1969",
    "LOCKED^LOU_1970",
)
UNREADABLE_BY_SCORER = "setpriv"  # how a root test run drops its right to read any file


# ---- hostile bytes ------------------------------------------------------------------

_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}


def split_file(data: bytes) -> tuple[bytes, bytes]:
    """(preamble + file meta, dataset) of a Part 10 file."""
    group_length = struct.unpack_from("<I", data, 132 + 8)[0]
    start = 132 + 12 + group_length
    return data[:start], data[start:]


def element_offset(body: bytes, tag: int) -> int:
    """Offset of the first top-level element of an explicit VR LE ``body`` at or past ``tag``."""
    pos = 0
    while pos < len(body):
        group, element, vr = struct.unpack_from("<HH2s", body, pos)
        if (group << 16 | element) >= tag:
            return pos
        if vr in _LONG_VRS:
            pos += 12 + struct.unpack_from("<I", body, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", body, pos + 6)[0]
    return pos


def flip_vr(data: bytes, tag: int) -> bytes:
    """Two bytes changed: the element's VR becomes 'QQ', which no reader knows."""
    head, body = split_file(data)
    at = element_offset(body, tag)
    assert struct.unpack_from("<HH", body, at) == (tag >> 16, tag & 0xFFFF)
    return head + body[: at + 4] + b"QQ" + body[at + 6 :]


def deep_sequence(tag: int, depth: int = 5000) -> bytes:
    start = struct.pack("<HH2s2xI", tag >> 16, tag & 0xFFFF, b"SQ", 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    sequence_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return (start + item) * depth + (item_end + sequence_end) * depth


def insert_deep(data: bytes, tag: int) -> bytes:
    head, body = split_file(data)
    at = element_offset(body, tag)
    return head + body[:at] + deep_sequence(tag) + body[at:]


def claim_deflated(data: bytes) -> bytes:
    """The file meta says Deflated Explicit VR Little Endian; the dataset is not deflated."""
    _, body = split_file(data)
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue() + body


def padded(data: bytes, seed: int, size: int = 48 * 1024) -> bytes:
    """The file with a private element of compressible noise after the identifiers:
    large enough that discovery, which reads a member's first kilobytes, never reaches
    its end (where zipfile checks the CRC)."""
    head, body = split_file(data)
    at = element_offset(body, 0x00291010)
    words = np.random.default_rng(seed).choice([b"alpha", b"beta", b"gamma", b"delta", b"omega"], size // 5)
    noise = b"".join(words)[:size]
    private = struct.pack("<HH2sH", 0x0029, 0x0010, b"LO", 8) + b"RADFUSE "
    private += struct.pack("<HH2s2xI", 0x0029, 0x1010, b"OB", len(noise)) + noise
    return head + body[:at] + private + body[at:]


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def break_crcs(path: Path) -> None:
    """Every member's CRC-32 wrong, in its local header and in the central directory."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    central = data.rindex(b"PK\x05\x06")
    cd_offset = struct.unpack_from("<I", data, central + 16)[0]
    for info in infos:
        struct.pack_into("<I", data, info.header_offset + 14, info.CRC ^ 0xFFFFFFFF)
    pos = cd_offset
    while data[pos : pos + 4] == b"PK\x01\x02":
        crc = struct.unpack_from("<I", data, pos + 16)[0]
        struct.pack_into("<I", data, pos + 16, crc ^ 0xFFFFFFFF)
        name, extra, comment = struct.unpack_from("<HHH", data, pos + 28)
        pos += 46 + name + extra + comment
    path.write_bytes(bytes(data))


def corrupt_tails(path: Path) -> None:
    """The last quarter of every member's deflated data overwritten with 0xFF bytes
    (invalid deflate codes), its first kilobytes intact."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    for info in infos:
        name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
        start = info.header_offset + 30 + name_length + extra_length
        end = start + info.compress_size
        cut = start + max(4096, info.compress_size * 3 // 4)
        data[cut:end] = b"\xff" * (end - cut)
    path.write_bytes(bytes(data))


def zip_bomb(path: Path, header: bytes, n_mib: int, member: str = "bomb/000.dcm") -> int:
    """A zip with one deflated member: ``header`` (a DICOM file's elements up to its
    pixel data) then a PixelData element of ``n_mib`` MiB of zeros. Built from one
    compressed MiB repeated (each piece a self-contained run of deflate blocks), so
    that a 3 GiB member costs a second to write. Its CRC is left at 0: the member must
    be refused from its header, long before its end. Returns its declared size."""
    pixel_bytes = n_mib * MIB
    prefix = header + struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OW", pixel_bytes)

    def piece(data: bytes) -> bytes:
        deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
        return deflate.compress(data) + deflate.flush(zlib.Z_FULL_FLUSH)

    zeros = piece(b"\0" * MIB)
    final_block = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    size = len(prefix) + pixel_bytes
    name = member.encode()
    with open(path, "wb") as out:
        local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0x21, 0, 0, size, len(name), 0)
        out.write(local + name)
        compressed = out.write(piece(prefix))
        for _ in range(n_mib):
            compressed += out.write(zeros)
        compressed += out.write(final_block)
        central_at = out.tell()
        fields = (20, 20, 0, 8, 0, 0x21, 0, compressed, size, len(name), 0, 0, 0, 0, 0, 0)
        central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", *fields)
        out.write(central + name)
        end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(name), central_at, 0)
        out.write(end)
        # The local header's sizes, now known (zipfile reads them from the central directory).
        out.seek(18)
        out.write(struct.pack("<II", compressed, size))
    return size


def explicit_header(source: Path | io.BytesIO) -> bytes:
    """The file's elements before its pixel data, as an explicit VR LE Part 10 file."""
    ds = pydicom.dcmread(source)
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# ---- the archive ----------------------------------------------------------------------


# Every UID, name and ID written into the archive's files (some cannot be read back).
PLANTED: set[str] = set()


def retagged(paths: list[Path], folder: str) -> list[bytes]:
    """The files of a study as a new study of the patient ``folder`` is named after
    (new UIDs, the planted name and ID)."""
    study_uid, series_uids = generate_uid(), {}
    files = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uids.setdefault(ds.SeriesInstanceUID, generate_uid())
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientName, ds.PatientID = folder.split("_")[0], planted_id(folder)
        PLANTED.update(
            (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, str(ds.PatientName), ds.PatientID)
        )
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        files.append(out.getvalue())
    return files


def planted_id(folder: str) -> str:
    return "PID-" + folder.replace("^", "-")


def write_files(folder: Path, files: list[bytes]) -> None:
    folder.mkdir(parents=True)
    for i, data in enumerate(files):
        (folder / f"{i:03d}.dcm").write_bytes(data)


def build_archive(cohort: Path, root: Path) -> None:
    dicom = cohort / "dicom"
    studies = sorted(find_studies(dicom).studies.values(), key=lambda s: s.study_uid)
    for study in studies:  # the good studies, under folders named like their patients
        top = study.instances[0].path.relative_to(dicom).parts[0]
        shutil.copytree(dicom / top, root / f"GOOD^{study.patient_id}_1950" / top)
    source = [h.path for h in studies[0].instances]

    write_files(root / "DOE^JOHN_1960" / "ct", [flip_vr(f, 0x00080060) for f in retagged(source, "DOE^JOHN_1960")])
    write_files(root / "ROE^JANE_1971" / "ct", [insert_deep(f, 0x00400275) for f in retagged(source, "ROE^JANE_1971")])
    for folder, damage in (("POE^EDGAR_1949", break_crcs), ("LOE^MARY_1982", corrupt_tails)):
        (root / folder).mkdir()
        members = {f"ct/{i:03d}.dcm": padded(f, i) for i, f in enumerate(retagged(source, folder))}
        write_zip(root / folder / "study.zip", members)
        damage(root / folder / "study.zip")
    (root / "BOMB^BERTHA_1990").mkdir()
    header = explicit_header(io.BytesIO(retagged(source[:1], "BOMB^BERTHA_1990")[0]))
    zip_bomb(root / "BOMB^BERTHA_1990" / "scan.zip", header, 3000)
    write_files(root / "CROWD^CARL_1955" / "ct", retagged(source * 4, "CROWD^CARL_1955"))
    write_files(root / "HUGE^HUGO_1966" / "ct", retagged(source, "HUGE^HUGO_1966"))
    odd = []
    with warnings.catch_warnings():  # pydicom warns of the invalid UIDs: the scorer must hide that
        warnings.simplefilter("ignore")
        for i, data in enumerate(retagged(source, ODD)):
            ds = pydicom.dcmread(io.BytesIO(data))
            ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{i + 1}.{ODD.split('_')[0]}"
            PLANTED.add(ds.SOPInstanceUID)
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            odd.append(out.getvalue())
    write_files(root / ODD / "ct", odd)
    write_orphans(root, source)


def write_orphans(root: Path, source: list[Path]) -> None:
    def one(folder: str) -> bytes:
        return retagged(source[:1], folder)[0]

    for folder in ORPHANS:
        (root / folder).mkdir()
    (root / "VR^VICTOR_1961" / "a.dcm").write_bytes(flip_vr(one("VR^VICTOR_1961"), 0x0020000D))
    (root / "DEEP^DORA_1962" / "a.dcm").write_bytes(insert_deep(one("DEEP^DORA_1962"), 0x00081115))
    (root / "DEFLATE^DAN_1963" / "a.dcm").write_bytes(claim_deflated(one("DEFLATE^DAN_1963")))
    zipped = root / "ZIPPED^ZOE_1964" / "a.zip"
    write_zip(zipped, {"ct/000.dcm": one("ZIPPED^ZOE_1964")})
    data = bytearray(zipped.read_bytes())
    data[40:60] = b"\xff" * 20  # the member's first deflated bytes (after 30 + 10 of header)
    zipped.write_bytes(bytes(data))
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("ct/000.dcm", one("NESTED^NED_1965"))
    write_zip(root / "NESTED^NED_1965" / "outer.zip", {"inner.zip": inner.getvalue()})
    (root / "BROKEN^BEN_1967" / "b.zip").write_bytes(b"PK\x03\x04" + os.urandom(300))
    os.symlink(root / "GOOD^gone" / "x.dcm", root / "GONE^GUS_1968" / "a.dcm")
    os.mkfifo(root / "FIFO^FAY_1969" / "a.dcm")
    locked = root / "LOCKED^LOU_1970"
    (locked / "a.dcm").write_bytes(one("LOCKED^LOU_1970"))
    (locked / "a.dcm").chmod(0)
    (locked / "inner").mkdir()
    (locked / "inner" / "b.dcm").write_bytes(one("LOCKED^LOU_1970"))
    (locked / "inner").chmod(0)


def identifiers(root: Path) -> set[str]:
    """Every UID, patient name and ID in the archive, and every path below its root."""
    found = set(PLANTED)
    for path in root.rglob("*"):
        found |= {str(path), str(path.relative_to(root))}
    for path in (root).glob("GOOD^*/**/*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found |= {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.PatientID, str(ds.PatientName)}
    for folder in [*HOSTILE, *ORPHANS, ODD]:
        found |= {folder, folder.split("_")[0]}
    return {f for f in found if len(f) > 3}


def unreadable_prefix() -> list[str]:
    """As root every file is readable: the scorer then runs without the capability."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which(UNREADABLE_BY_SCORER)
    if setpriv is None:
        pytest.skip("running as root without setpriv: a file cannot be made unreadable")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]


@pytest.fixture(scope="module")
def hostile(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("hostile")
    root = work / "archive"
    root.mkdir()
    build_archive(tiny_cohort, root)
    genomics = pd.read_parquet(tiny_cohort / "genomics.parquet")
    huge = genomics.iloc[[0]].copy()
    huge["patient_id"] = planted_id("HUGE^HUGO_1966")
    for column in huge.columns[huge.dtypes == "float64"]:
        huge[column] = 1e39  # finite in float64, beyond float32 once z-scored
    pd.concat([genomics, huge]).to_parquet(work / "genomics.parquet", index=False)
    return work, root


def reference(tiny_cohort: Path, model: Path, out: Path) -> pd.DataFrame:
    score_archive(
        tiny_cohort / "dicom",
        model,
        out,
        genomics=tiny_cohort / "genomics.parquet",
        device="cpu",
        progress=False,
        workers=0,
    )
    return pd.read_parquet(out).drop(columns=list(TIMING_COLUMNS)).set_index("study_instance_uid")


class TempWatch:
    """The largest size the files under ``folder`` reached while it watched."""

    def __init__(self, folder: Path):
        self.folder, self.peak, self._stop = folder, 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _size(self) -> int:
        total = 0
        for dirpath, _, names in os.walk(self.folder):
            for name in names:
                with contextlib.suppress(OSError):  # removed while counted
                    total += os.lstat(os.path.join(dirpath, name)).st_size
        return total

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._size())
            time.sleep(0.01)

    def __enter__(self) -> TempWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_scorer(work: Path, root: Path, model: Path, out: Path) -> tuple[subprocess.CompletedProcess, int]:
    temp = work / "tmp"
    temp.mkdir(exist_ok=True)
    command = [
        *unreadable_prefix(),
        sys.executable,
        "-m",
        "radfusion.cli",
        "score",
        "--archive",
        str(root),
        "--genomics",
        str(work / "genomics.parquet"),
        "--model",
        str(model),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--workers",
        "2",
        "--batch-size",
        "4",
        "--study-max-files",
        str(MAX_FILES),
    ]
    with TempWatch(temp) as watch:
        done = subprocess.run(
            command, cwd=ROOT, env={**os.environ, "TMPDIR": str(temp)}, capture_output=True, text=True, timeout=600
        )
    return done, watch.peak


def test_hostile_files_never_stop_the_archive_and_leave_no_identifier_in_the_log(
    hostile, tiny_cohort: Path, tiny_onnx_model: Path, tmp_path: Path
) -> None:
    work, root = hostile
    expected = reference(tiny_cohort, tiny_onnx_model, tmp_path / "reference.parquet")
    out = tmp_path / "scores.parquet"
    done, temp_peak = run_scorer(work, root, tiny_onnx_model, out)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)

    rows = pd.read_parquet(out).drop(columns=list(TIMING_COLUMNS)).set_index("study_instance_uid")
    n_studies = len(expected) + len(HOSTILE) + 1
    assert len(rows) == summary["studies"] == n_studies and rows.index.is_unique
    # The good studies: exactly what a run without the hostile files gives.
    pd.testing.assert_frame_equal(rows.loc[expected.index], expected, check_exact=True)

    by_patient = rows.reset_index().set_index("patient_id")
    for folder, kind in HOSTILE.items():
        found = error_kind(by_patient.loc[planted_id(folder), "error"])
        assert found not in (None, "unprocessable_study"), (folder, found)
        assert kind is None or found in ({kind} if isinstance(kind, str) else kind), (folder, found)
    bomb = by_patient.loc[planted_id("BOMB^BERTHA_1990"), "error"]
    assert f"at most {MAX_ZIP_RATIO}" in bomb
    assert f"more than {MAX_FILES} files" in by_patient.loc[planted_id("CROWD^CARL_1955"), "error"]
    assert pd.isna(by_patient.loc[planted_id(ODD), "error"])  # odd, not hostile: scored
    assert temp_peak < _CHUNK  # the 3 GiB bomb wrote nothing; the broken zips at most a member

    scored = rows[rows["error"].isna()]
    assert len(scored) == len(expected) + 1
    probabilities = scored[[c for c in rows.columns if c.startswith("prob_")]].to_numpy(dtype=float)
    assert np.isfinite(probabilities).all()

    # The files of no study: counted by reason in the summary, none lost.
    reasons = summary["skipped_by_reason"]
    assert reasons["corrupt_dicom: file: an unknown value representation or encoding (NotImplementedError)"] == 1
    assert reasons["corrupt_dicom: file: elements nested too deeply (RecursionError)"] == 1
    assert reasons["corrupt_dicom: file: deflated data that cannot be inflated (zlib.error)"] == 2  # DEFLATE, ZIPPED
    assert reasons["a zip inside a zip archive: not read"] == 1
    assert reasons["not a regular file (a FIFO, socket or device)"] == 1
    assert reasons["corrupt_dicom: file: unreadable (FileNotFoundError)"] == 1
    assert reasons["corrupt_dicom: file: unreadable (PermissionError)"] == 1
    assert reasons["bad_archive: not a readable zip archive (BadZipFile)"] == 1
    assert summary["skipped_files"] == sum(reasons.values()) == 9
    assert summary["failed_units"] == {
        "a folder could not be listed (PermissionError)": 1,
        "bad_archive: not a readable zip archive (BadZipFile)": 1,
    }

    # Nothing in the log names a patient, a UID of the archive or a path below its root.
    leaked = sorted(i for i in identifiers(root) if i in done.stderr)
    assert leaked == [], leaked
    assert "Invalid value for VR UI: <value>" in done.stderr  # the odd study's warnings, rewritten
    assert "Traceback" not in done.stderr

    # A rerun resumes: every row is taken over, nothing stops it.
    again, _ = run_scorer(work, root, tiny_onnx_model, out)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads(again.stdout)
    assert (resumed["studies"], resumed["taken_from_earlier_runs"], resumed["processed_this_run"]) == (
        n_studies,
        n_studies,
        0,
    )
    assert sorted(i for i in identifiers(root) if i in again.stderr) == []


# ---- discovery, unit by unit ------------------------------------------------------------


def test_discovery_never_raises_and_finds_no_study_in_the_files_of_none(hostile) -> None:
    _, root = hostile
    units = list(list_units(root))
    results = [scan_unit(unit) for unit in units]
    assert [r.index for r in results] == list(range(len(units)))
    readable = os.geteuid() == 0  # root reads the locked files (the CLI test drops the right)
    for unit, result in zip(units, results, strict=True):
        folder = Path(unit.path).relative_to(root).parts[0]
        if folder in ORPHANS and not (readable and folder.startswith("LOCKED")):
            assert result.found == [] and (result.skipped or result.failed), folder
    found = {uid for r in results for uid, _, _, _ in r.found}
    assert len(found) == 10 + len(HOSTILE) + 1 + (2 if readable else 0)


def test_a_file_that_vanishes_after_the_walk_is_skipped(tmp_path: Path, tiny_cohort: Path) -> None:
    source = sorted((tiny_cohort / "dicom").rglob("*.dcm"))[:2]
    for i, path in enumerate(source):
        shutil.copy(path, tmp_path / f"{i}.dcm")
    (unit,) = list_units(tmp_path)
    (tmp_path / "0.dcm").unlink()
    result = scan_unit(unit)
    assert len(result.found) == 1 and result.skipped == ["corrupt_dicom: file: unreadable (FileNotFoundError)"]


def test_an_encrypted_zip_member_is_skipped_and_its_neighbours_read(tmp_path: Path, tiny_cohort: Path) -> None:
    source = sorted((tiny_cohort / "dicom").rglob("*.dcm"))[0]
    archive = tmp_path / "a.zip"
    write_zip(archive, {"a.dcm": source.read_bytes(), "b.dcm": source.read_bytes()})
    data = bytearray(archive.read_bytes())
    data[6] |= 1  # "encrypted", in the first member's local header and central record
    data[data.index(b"PK\x01\x02") + 8] |= 1
    archive.write_bytes(bytes(data))
    result = scan_unit(ScanUnit("zip", str(archive)))
    assert [ref.member for _, _, ref, _ in result.found] == ["b.dcm"]
    assert result.skipped == [
        "bad_archive: a zip member is encrypted or uses an unsupported compression (RuntimeError)"
    ]


def test_discovery_reads_a_deflated_bomb_only_as_far_as_its_identifiers(tmp_path: Path, tiny_cohort: Path) -> None:
    """A real Deflated file holding 512 MiB of zeros after its identifiers: pydicom would
    inflate all of it before reading the first element."""
    source = sorted((tiny_cohort / "dicom").rglob("*.dcm"))[0]
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    head = explicit_header(source)
    _, body = split_file(head)
    body += struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OW", 512 * MIB)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    zipped = deflate.compress(body)
    for _ in range(512):
        zipped += deflate.compress(b"\0" * MIB)
    zipped += deflate.flush()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = io.BytesIO()
    meta.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    (tmp_path / "deflated.dcm").write_bytes(meta.getvalue() + zipped)

    tracemalloc.start()
    result = scan_unit(ScanUnit("dir", str(tmp_path), names=("deflated.dcm",)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [(uid, pid) for uid, pid, _, _ in result.found] == [(ds.StudyInstanceUID, ds.PatientID)]
    assert peak < 4 * MIB


def test_a_header_that_points_past_the_limit_is_refused_before_it_is_read(tmp_path: Path, tiny_cohort: Path) -> None:
    """A PatientID declaring 3 GiB: discovery refuses it without reading it."""
    source = sorted((tiny_cohort / "dicom").rglob("*.dcm"))[0]
    head, body = split_file(source.read_bytes())
    at = element_offset(body, 0x00100020)
    length = struct.unpack_from("<H", body, at + 6)[0]
    # LO has a 2-byte length: a long VR (UT, 4-byte length) declares the huge value.
    huge = struct.pack("<HH2s2xI", 0x0010, 0x0020, b"UT", 3 * 1024**3) + b"x" * 100
    (tmp_path / "a.dcm").write_bytes(head + body[:at] + huge + body[at + 8 + length :])
    result = scan_unit(ScanUnit("dir", str(tmp_path), names=("a.dcm",)))
    assert result.found == []
    assert result.skipped == ["upload_too_large: the file's elements or deflated body go beyond 16 MiB"]


# ---- zip members under the byte budget ---------------------------------------------------


def test_a_zip_bomb_is_refused_from_its_header_before_anything_is_written(tmp_path: Path, tiny_cohort: Path) -> None:
    source = sorted((tiny_cohort / "dicom").rglob("*.dcm"))[0]
    bomb = tmp_path / "bomb.zip"
    declared = zip_bomb(bomb, explicit_header(source), 3000)
    assert bomb.stat().st_size < 4 * MIB and declared > 2.9 * 1024**3  # a 3 MB zip of 3 GB
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ZipBombError, match="would expand") as refused:
        extract_members(bomb, [(0, "bomb/000.dcm")], dest, Budget.of(4 * 1024**3, 10))
    assert refused.value.kind == "zip_bomb" and refused.value.http_status == 413
    assert list(dest.iterdir()) == []


def test_a_member_that_declares_more_than_the_study_has_left_is_refused_before_writing(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    write_zip(archive, {"0.dcm": os.urandom(1000), "1.dcm": os.urandom(3000)})
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(UploadTooLargeError, match="a zip member declares 3,000 bytes; the study may take 2,000 more"):
        extract_members(archive, [(0, "0.dcm"), (1, "1.dcm")], dest, Budget.of(2000, 10))
    assert list(dest.iterdir()) == []


def test_members_that_declare_more_than_the_budget_in_all_are_refused_before_writing(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    write_zip(archive, {f"{i}.dcm": os.urandom(3000) for i in range(4)})
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(UploadTooLargeError, match="zip members declare 12,000 bytes"):
        extract_members(archive, [(i, f"{i}.dcm") for i in range(4)], dest, Budget.of(10_000, 10))
    assert list(dest.iterdir()) == []


def test_a_member_whose_header_lies_is_cut_at_its_declared_size(tmp_path: Path) -> None:
    """Declared 1 MiB, inflates to 64 MiB: no more than the declared size is written
    before the member fails (zipfile stops there; the budget counts what is written)."""
    archive = tmp_path / "liar.zip"
    write_zip(archive, {"a.dcm": b"\0" * (64 * MIB)})
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("a.dcm")
    struct.pack_into("<I", data, info.header_offset + 22, MIB)
    central = data.rindex(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, MIB)
    archive.write_bytes(bytes(data))
    dest = tmp_path / "out"
    dest.mkdir()
    budget = Budget.of(1024**3, 10)
    with pytest.raises(BadArchiveError):
        extract_members(archive, [(0, "a.dcm")], dest, budget)
    assert sum(p.stat().st_size for p in dest.iterdir()) <= MIB
    assert 1024**3 - budget.bytes_left <= MIB


def test_a_member_that_cannot_be_inflated_is_a_bad_archive(hostile) -> None:
    _, root = hostile
    zipped = root / "LOE^MARY_1982" / "study.zip"
    result = scan_unit(ScanUnit("zip", str(zipped)))
    files = tuple(ref for _, _, ref, _ in result.found)
    assert len(files) == 11
    study = StudyRef(result.found[0][0], result.found[0][1], len(files), files=files)
    with pytest.raises(BadArchiveError), local_study_files(study):
        pass


# ---- the per-study budget ------------------------------------------------------------------


def test_the_study_budget_reaches_the_workers(tiny_onnx_model: Path, tiny_cohort: Path, tmp_path: Path) -> None:
    """--study-max-seconds 0: every study over its budget of seconds, in the workers."""
    out = tmp_path / "none.parquet"
    summary = score_archive(
        tiny_cohort / "dicom",
        tiny_onnx_model,
        out,
        device="cpu",
        progress=False,
        workers=1,
        study_budget=StudyBudget(max_seconds=0.0),
    )
    assert summary["failed_by_reason"] == {StudyOverBudgetError.kind: 10}


def test_a_study_over_its_byte_budget_is_its_own_row(tiny_cohort: Path, tiny_contract, tmp_path: Path) -> None:
    paths = sorted(next(iter(find_studies(tiny_cohort / "dicom").studies.values())).instances, key=lambda h: h.path)
    archive = tmp_path / "study.zip"
    write_zip(archive, {f"ct/{i:03d}.dcm": h.path.read_bytes() for i, h in enumerate(paths)})
    result = scan_unit(ScanUnit("zip", str(archive)))
    files = tuple(ref for _, _, ref, _ in result.found)
    study = StudyRef(result.found[0][0], result.found[0][1], len(files), files=files)
    small = prepare_study(tiny_contract, study, PatientData(), StudyBudget(max_bytes=1000))
    assert small.inputs is None and small.row["error"].startswith("upload_too_large: ")
    few = prepare_study(tiny_contract, study, PatientData(), StudyBudget(max_files=3))
    assert few.inputs is None and few.row["error"] == "upload_too_large: study holds more than 3 files"
    whole = prepare_study(tiny_contract, study, PatientData(), StudyBudget())
    assert whole.inputs is not None and whole.row["error"] is None


STUCK_ENV = "RADFUSION_TEST_STUCK_STUDY"


def stuck_prepare(study, patient):
    """Runs in the worker: hangs like a decoder in an endless loop on the chosen study."""
    if study.study_uid == os.environ.get(STUCK_ENV):
        time.sleep(3600)
    return prepare.prepare_task(study, patient)


def test_a_study_stuck_inside_one_call_is_stopped_alone(
    tiny_cohort: Path, tiny_onnx_model: Path, tmp_path: Path, monkeypatch
) -> None:
    victim = sorted(find_studies(tiny_cohort / "dicom").studies)[4]
    monkeypatch.setenv(STUCK_ENV, victim)
    model = OnnxModel(tiny_onnx_model, device="cpu")
    writer = PartWriter(tmp_path / "scores.parquet", output_schema(model.contract), {"test": "stuck"})
    engine = LocalEngine(model, workers=2, batch_size=4, prepare_fn=stuck_prepare, stuck_after=4)
    patients = PatientTables.from_paths(model.contract, tiny_cohort / "genomics.parquet")
    started = time.monotonic()
    engine.run(str(tiny_cohort / "dicom"), patients, writer, Progress(enabled=False))
    rows = writer.finish().to_pandas().set_index("study_instance_uid")
    assert time.monotonic() - started < 120
    assert len(rows) == 10
    assert rows.loc[victim, "error"] == "study_over_budget: reading it took more than 4 s"
    assert rows["error"].notna().sum() == 1


def test_a_unit_whose_scan_kills_its_worker_does_not_stall_the_walk(
    tiny_cohort: Path, tiny_onnx_model: Path, tmp_path: Path, monkeypatch
) -> None:
    """The units after it are still released in order, and the run finishes."""
    archive = tmp_path / "archive"
    shutil.copytree(tiny_cohort / "dicom", archive)
    first_unit = next(iter(list_units(archive)))
    left = {
        uid
        for uid, study in find_studies(archive).studies.items()
        if any(str(h.path.parent) != first_unit.path for h in study.instances)
    }
    monkeypatch.setenv(KILL_UNIT_ENV, first_unit.path)
    monkeypatch.setattr(prepare, "scan_task", killing_scan)
    model = OnnxModel(tiny_onnx_model, device="cpu")
    writer = PartWriter(tmp_path / "scores.parquet", output_schema(model.contract), {"test": "scan"})
    engine = LocalEngine(model, workers=1, batch_size=4)
    stats = engine.run(str(archive), PatientTables.from_paths(model.contract), writer, Progress(enabled=False))
    rows = writer.finish()
    assert len(left) >= 9 and set(rows.column("study_instance_uid").to_pylist()) == left
    assert stats.skipped_files == len(first_unit.names)
    assert stats.failed_units == {"worker_crashed: the process preparing this unit died": 1}


KILL_UNIT_ENV = "RADFUSION_TEST_KILL_UNIT"


def killing_scan(unit: ScanUnit):
    if unit.path == os.environ.get(KILL_UNIT_ENV):
        os._exit(70)
    return sources.scan_unit(unit)
