"""The fuzz harness: drive corpus items (tests/support/mutations.py) through one input
path, judge every answer against the item's expectation, and print one table of what
happened (item, mutation, path, outcome, kind, what is wrong) so that a failing run
says which items broke which promise.

Shared by the tests (tests/fuzz/test_fuzz_*.py) and ``make fuzz`` (bench/fuzz.py).
The promises, from issue 14: no aborted run, no 5xx, no non-finite number in a scored
row or a 200 answer, every failure with a specific kind (at most 1% "unprocessable"),
the kind the item expects where it is certain, bounded memory, and no planted name,
patient ID, corpus UID or path below the archive root in any log."""

from __future__ import annotations

import functools
import json
import math
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pydicom
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from radfusion.limits import StudyBudget
from radfusion.prediction import prob_column
from tests.support.mutations import (
    BATCH,
    LISTENER,
    NONE,
    ONE,
    PATIENT_ID_MARK,
    PLANTED,
    PREDICT,
    SCORER,
    UID_ROOT,
    Corpus,
    Item,
)
from tests.support.paths import PROJECT_ROOT

# "<kind>: <reason>", the form of every error row and listener error.
ERROR_TEXT = re.compile(r"^([a-z][a-z_]*): \S", re.S)
# The root of the hierarchy says only "bad input": not a specific kind.
NOT_SPECIFIC = frozenset({"bad_input"})
UNPROCESSABLE = "unprocessable_study"
MAX_UNPROCESSABLE_SHARE = 0.01
MIB = 1024**2

# The scorer's per-study budget in the fuzz runs: small enough that a study which
# escapes its checks shows in the workers' peak memory, large enough for every
# legitimate corpus study (11 files of 32 x 32, or 6 of 128 x 128).
SCORER_BUDGET = StudyBudget(
    max_files=64, max_bytes=16 * MIB, max_decoded_bytes=32 * MIB, max_voxels=2 * MIB, max_seconds=60.0
)
# Python's allocator and pydicom's per-file objects on top of the arrays the budget
# bounds: what a worker may hold beyond baseline + budget before it counts as unbounded.
MEMORY_SLACK = 64 * MIB


@functools.cache
def specific_kinds() -> frozenset[str]:
    """Every kind of the catalogue (radfusion errors), less the generic root."""
    from radfusion.cli.errors import import_error_modules
    from radfusion.errors import error_catalogue

    import_error_modules()
    return frozenset(e.kind for e in error_catalogue()) - NOT_SPECIFIC


# --------------------------------------------------------------------- judging answers


@dataclass
class Outcome:
    """What one input path did with one study (or request)."""

    id: str
    mutation: str
    path: str
    study: str  # the tail of its Study Instance UID, "-" for none
    result: str  # "ok", "error", "none" (no row), "5xx", "row" (unexpected), a listener status
    kind: str | None = None
    detail: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.problems)


def judge(item: Item | None, path: str, study_uid: str | None, ok: bool, kind: str | None, detail: str) -> Outcome:
    """An answer against the item's expectation on ``path`` (a request that is no
    corpus item only needs a specific kind when it fails)."""
    outcome = Outcome(
        item.id if item else "-",
        item.mutation if item else "-",
        path,
        _tail(study_uid),
        "ok" if ok else "error",
        kind,
        detail[:120],
    )
    if not ok and kind not in specific_kinds():
        outcome.problems.append(f"no specific kind ({kind!r})")
    if item is not None:
        problem = item.expect[path].problem(ok, kind)
        if problem:
            outcome.problems.append(problem)
    return outcome


def _tail(uid: str | None) -> str:
    return f"…{uid[-8:]}" if uid else "-"


def table(outcomes: Sequence[Outcome], only_failed: bool = True) -> str:
    """One line per outcome (the failed ones by default), aligned."""
    shown = [o for o in outcomes if o.failed or not only_failed]
    header = ("item", "mutation", "path", "study", "outcome", "kind", "problem / detail")
    lines = [
        (o.id, o.mutation, o.path, o.study, o.result, o.kind or "-", "; ".join(o.problems) or o.detail) for o in shown
    ]
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(row[:-1], widths, strict=True)) + "  " + str(row[-1])
        for row in [header, *lines]
    )


def failures(outcomes: Sequence[Outcome]) -> str:
    """'' when every outcome keeps its promises, else the table of those that do not."""
    failed = [o for o in outcomes if o.failed]
    return f"{len(failed)} of {len(outcomes)} outcomes break a promise:\n{table(failed)}" if failed else ""


def assert_kept(outcomes: Sequence[Outcome]) -> None:
    """Fail the test with the table of broken promises (no assertion rewriting: the
    table is the message)."""
    import pytest

    report = failures(outcomes)
    if report:
        pytest.fail(report, pytrace=False)


def unprocessable_share(outcomes: Iterable[Outcome]) -> tuple[int, int]:
    """(unprocessable failures, answers)."""
    answered = [o for o in outcomes if o.result in ("ok", "error")]
    return sum(o.kind == UNPROCESSABLE for o in answered), len(answered)


def counts(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The numbers bench/fuzz.py records for a path."""
    kinds: dict[str, int] = {}
    for o in outcomes:
        if o.result == "error" and o.kind:
            kinds[o.kind] = kinds.get(o.kind, 0) + 1
    unprocessable, answered = unprocessable_share(outcomes)
    return {
        "outcomes": len(outcomes),
        "ok": sum(o.result == "ok" for o in outcomes),
        "error": sum(o.result == "error" for o in outcomes),
        "other": sum(o.result not in ("ok", "error") for o in outcomes),
        "broken_promises": sum(o.failed for o in outcomes),
        "unprocessable": unprocessable,
        "answered": answered,
        "kinds": dict(sorted(kinds.items())),
    }


# ----------------------------------------------------------------------------- logs


def leaks(text: str, corpus: Corpus, roots: Sequence[Path] = ()) -> list[str]:
    """Log lines holding a planted name, a corpus PatientID or UID, or a path below one
    of ``roots``. The markers catch every item's values at once (a UID under the
    corpus root, whatever its tail; a name with its ^ rewritten)."""
    needles = [PLANTED, PATIENT_ID_MARK, UID_ROOT] + [str(root).rstrip("/") + "/" for root in roots]
    found = []
    for line in text.splitlines():
        hits = [n for n in needles if n in line]
        if hits:
            found.append(f"{hits[0]!r} in: {line.strip()[:200]}")
    return found


# --------------------------------------------------------------------------- scorer


@dataclass
class ScorerRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    worker_peaks: dict[int, int]  # worker pid -> peak resident bytes (VmHWM)

    def summary(self) -> dict[str, Any]:
        return json.loads(self.stdout) if self.returncode == 0 else {}

    @property
    def peak(self) -> int:
        return max(self.worker_peaks.values(), default=0)


def budget_args(budget: StudyBudget) -> list[str]:
    return [
        "--study-max-bytes",
        str(budget.max_bytes),
        "--study-max-files",
        str(budget.max_files),
        "--study-max-decoded-bytes",
        str(budget.max_decoded_bytes),
        "--study-max-voxels",
        str(budget.max_voxels),
        "--study-max-seconds",
        str(budget.max_seconds),
    ]


def scorer_command(
    archive: Path, model: Path, out: Path, corpus: Corpus, budget: StudyBudget = SCORER_BUDGET, workers: int = 2
) -> list[str]:
    """`radfusion score` as an operator runs it, with the corpus's tables."""
    return [
        sys.executable,
        "-m",
        "radfusion.cli",
        "score",
        "--archive",
        str(archive),
        "--model",
        str(model),
        "--genomics",
        str(corpus.genomics_table),
        "--clinical",
        str(corpus.clinical_table),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--workers",
        str(workers),
        "--batch-size",
        "8",
        "--chunk-size",
        "16",
        *budget_args(budget),
    ]


def memory_allowance(budget: StudyBudget) -> int:
    """What one study may add to a worker's resident memory: its stored bytes, its
    series decoded to float32, the volume resampled to the model's spacing (float32
    voxels), and the slack."""
    return budget.max_bytes + budget.max_decoded_bytes + 4 * budget.max_voxels + MEMORY_SLACK


def run_scorer(command: list[str], log_dir: Path, timeout: float = 300.0) -> ScorerRun:
    """Run the scorer to the end, sampling its workers' peak memory meanwhile."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = log_dir / "stdout.txt", log_dir / "stderr.txt"
    started = time.monotonic()
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=stdout, stderr=stderr)
        sampler = _PeakSampler(process.pid)
        sampler.start()
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(timeout=30)
        finally:
            sampler.stop()
    return ScorerRun(code, stdout_path.read_text(), stderr_path.read_text(), time.monotonic() - started, sampler.peaks)


class _PeakSampler(threading.Thread):
    """Polls the peak resident set (VmHWM, which only grows) of every descendant of a
    process; the last reading of a worker is its peak up to ~50 ms before it exits."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peaks: dict[int, int] = {}
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                children = psutil.Process(self.pid).children(recursive=True)
            except psutil.Error:
                return
            for child in children:
                peak = _vm_hwm(child.pid)
                if peak:
                    self.peaks[child.pid] = max(peak, self.peaks.get(child.pid, 0))
            self._stopped.wait(self.interval)

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def scorer_outcomes(corpus: Corpus, rows: pd.DataFrame) -> list[Outcome]:
    """One outcome per corpus study, plus one for any row no item accounts for."""
    by_uid = {str(r["study_instance_uid"]): r for r in rows.to_dict("records")}
    prob_columns = [c for c in rows.columns if c.startswith("prob_")]
    outcomes = []
    for item in corpus.on(SCORER):
        if not item.study_uids:
            outcomes.append(Outcome(item.id, item.mutation, SCORER, "-", "none"))
        for uid in item.study_uids:
            row = by_uid.get(uid)
            if row is None:
                outcome = Outcome(item.id, item.mutation, SCORER, _tail(uid), "none")
                if item.rows == ONE:
                    outcome.problems.append("no row for this study")
                outcomes.append(outcome)
            else:
                outcomes.append(_row_outcome(item, uid, row, prob_columns))
    owned = corpus.owner()
    for uid in sorted(set(by_uid) - set(owned)):
        outcomes.append(Outcome("-", "-", SCORER, _tail(uid), "row", problems=["a row for a study no item wrote"]))
    for item in corpus.on(SCORER):
        if item.rows == NONE and any(uid in by_uid for uid in item.study_uids):
            outcomes.append(Outcome(item.id, item.mutation, SCORER, "-", "row", problems=["a row, but no study"]))
    return outcomes


def _row_outcome(item: Item, uid: str, row: dict[str, Any], prob_columns: list[str]) -> Outcome:
    error = row.get("error")
    if error is None or (isinstance(error, float) and math.isnan(error)):
        outcome = judge(item, SCORER, uid, True, None, str(row.get("predicted_label")))
        # Columns carry the labels' SQL names (radfusion.prediction.prob_column): compare so.
        label = row.get("predicted_label")
        predicted = prob_column(label)[len("prob_") :] if isinstance(label, str) else label
        outcome.problems += _non_finite({c[len("prob_") :]: row[c] for c in prob_columns}, predicted)
        return outcome
    match = ERROR_TEXT.match(str(error))
    outcome = judge(item, SCORER, uid, False, match.group(1) if match else None, str(error))
    if not match:
        outcome.problems.append("error is not '<kind>: <reason>'")
    return outcome


def _non_finite(probabilities: dict[str, Any], label: Any) -> list[str]:
    """What is wrong with a prediction's numbers (a scored row or a 200 answer)."""
    values = list(probabilities.values())
    if not values or any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
        return [f"non-finite or missing probability: {probabilities}"]
    problems = []
    if abs(sum(values) - 1.0) > 1e-4:
        problems.append(f"probabilities sum to {sum(values):.6f}")
    if label not in probabilities:
        problems.append(f"predicted label {label!r} is none of {sorted(probabilities)}")
    return problems


# -------------------------------------------------------------------------- service


def answer_outcome(item: Item | None, path: str, status: int, body: Any) -> Outcome:
    """A /predict answer (or one result of /predict/batch, with its own status): 200 is
    "ok", 4xx "error", 5xx "5xx"; the detail starts with the status."""
    uid = item.study_uids[0] if item and item.study_uids else None
    if status == 200:
        outcome = judge(item, path, uid, True, None, f"200 {body.get('predicted_label')}")
        outcome.problems += _non_finite(body.get("probabilities") or {}, body.get("predicted_label"))
        return outcome
    outcome = judge(item, path, uid, False, _kind_of(body), f"{status} {_detail_of(body)}")
    if status >= 500:
        outcome.result = "5xx"
        outcome.problems.insert(0, f"HTTP {status}")
    elif not 400 <= status < 500:
        outcome.result = str(status)
        outcome.problems.insert(0, f"HTTP {status}: neither an answer nor a 4xx")
    return outcome


def _kind_of(body: Any) -> str | None:
    kind = body.get("error") if isinstance(body, dict) else None
    return kind if isinstance(kind, str) else None


def _detail_of(body: Any) -> str:
    return str(body.get("detail", "")) if isinstance(body, dict) else str(body)[:120]


def response_body(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:200]


def predict_outcomes(client: Any, items: Sequence[Item]) -> list[Outcome]:
    """Each item as one /predict upload (zip named after the planted name)."""
    outcomes = []
    for item in items:
        name, data = item.upload()
        response = client.post("/predict", files={"study": (name, data, "application/zip")}, data=item.form_fields())
        outcomes.append(answer_outcome(item, PREDICT, response.status_code, response_body(response)))
    return outcomes


def batch_outcomes(client: Any, items: Sequence[Item], size: int = 8) -> list[Outcome]:
    """Items in /predict/batch requests of ``size`` cases: one upload per case, its
    genomics and clinical values in ``cases``. A whole request refused is every one
    of its cases' answer."""
    outcomes = []
    for start in range(0, len(items), size):
        group = items[start : start + size]
        uploads = [item.upload() for item in group]
        cases = [_case(i, item) for i, item in enumerate(group)]
        response = client.post(
            "/predict/batch",
            files=[("studies", (name, data, "application/zip")) for name, data in uploads],
            data={"cases": json.dumps(cases)},
        )
        body = response_body(response)
        if response.status_code != 200:
            outcomes += [answer_outcome(item, BATCH, response.status_code, body) for item in group]
            continue
        for item, result in zip(group, body["results"], strict=True):
            status = int(result.get("status", 200)) if "error" in result else 200
            outcomes.append(answer_outcome(item, BATCH, status, result))
    return outcomes


def _multipart(boundary: bytes) -> bytes:
    return (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="study"; filename="FUZZ^PLANTED-mp.zip"\r\n'
        b"Content-Type: application/zip\r\n\r\nPK\x03\x04 not much of a zip\r\n--" + boundary + b"--\r\n"
    )


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


DEEP = 100_000


def malformed_requests(good: tuple[str, bytes]) -> dict[str, Callable[[Any], Any]]:
    """Requests no client should send, each a function of an httpx client: every one
    must get a 4xx with a specific kind. ``good``: a study upload (name, zip bytes)."""
    study = ("study", (good[0], good[1], "application/zip"))
    json_type = {"content-type": "application/json"}
    return {
        "multipart-without-boundary": lambda c: c.post(
            "/predict", content=_multipart(b"x1"), headers={"content-type": "multipart/form-data"}
        ),
        "multipart-wrong-boundary": lambda c: c.post(
            "/predict", content=_multipart(b"x1"), headers={"content-type": "multipart/form-data; boundary=other"}
        ),
        "multipart-empty-body": lambda c: c.post(
            "/predict", content=b"", headers={"content-type": "multipart/form-data; boundary=x1"}
        ),
        "1100-file-fields": lambda c: c.post(
            "/predict",
            files=[("study", (f"FUZZ^PLANTED-field{i}.dcm", b"x", "application/dicom")) for i in range(1100)],
        ),
        "20MB-form-field": lambda c: c.post("/predict", files=[study], data={"genomics": "7" * (20 * MIB)}),
        "json-nested-100000": lambda c: c.post(
            "/predict", content=f'{{"genomics": {_nested(DEEP)}}}', headers=json_type
        ),
        "form-json-nested-100000": lambda c: c.post("/predict", files=[study], data={"genomics": _nested(DEEP)}),
        "batch-cases-nested-100000": lambda c: c.post(
            "/predict/batch", files=[("studies", study[1])], data={"cases": _nested(DEEP)}
        ),
        "json-invalid-utf8": lambda c: c.post(
            "/predict", content=b'{"genomics": {"TP53": "\xff\xfe"}}', headers=json_type
        ),
        "form-field-invalid-utf8": lambda c: c.post(
            "/predict", files=[study, ("genomics", (None, b'{"TP53": "\xff\xfe\xfd"}', "text/plain"))]
        ),
        "batch-json-invalid-utf8": lambda c: c.post(
            "/predict/batch", content=b'{"cases": [{"genomics": {"\xc3\x28": 1}}]}', headers=json_type
        ),
    }


def malformed_outcomes(client: Any, good: tuple[str, bytes]) -> list[Outcome]:
    outcomes = []
    for name, send in malformed_requests(good).items():
        response = send(client)
        outcome = answer_outcome(None, "request", response.status_code, response_body(response))
        outcome.mutation = name
        outcomes.append(outcome)
    return outcomes


def _case(index: int, item: Item) -> dict[str, Any]:
    case: dict[str, Any] = {"study": {"upload": index}}
    if item.genomics is not None:
        case["genomics"] = item.genomics
    if item.clinical is not None:
        case["clinical"] = item.clinical
    return case


# ------------------------------------------------------------------------- listener

CALLING = "FUZZSCU"  # the AE title the fuzz sends from (the listener allows it)
LISTENER_QUIET_SECONDS = 1.0
# A study whose headers show a hole (an instance the listener refused, slices without a
# position) waits this long for the rest, then is scored with what arrived.
LISTENER_MAX_WAIT_SECONDS = 5.0


def listener_args(model: Path, work: Path, corpus: Corpus, pacs_port: int) -> list[str]:
    """`radfusion listen` options of the fuzz runs: short quiet period and waits, two
    attempts, SRs to the capturing PACS."""
    return [
        "--model", str(model),
        "--work", str(work),
        "--allow-aet", CALLING,
        "--genomics", str(corpus.genomics_table),
        "--clinical", str(corpus.clinical_table),
        "--quiet-seconds", str(LISTENER_QUIET_SECONDS),
        "--max-wait-seconds", str(LISTENER_MAX_WAIT_SECONDS),
        "--poll-seconds", "0.2",
        "--max-attempts", "2",
        "--retry-seconds", "0.5",
        "--retry-cap-seconds", "1",
        "--send-to", f"PACS@127.0.0.1:{pacs_port}",
        "--device", "cpu",
    ]  # fmt: skip


@contextmanager
def _raw_sending() -> Iterator[None]:
    """pynetdicom sends a file's bytes as they are (no decode, no re-encode): a damaged
    file reaches the listener as damaged as it is on disk."""
    saved = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = saved


def send_study(port: int, files: Sequence[Path]) -> list[int | None]:
    """C-STORE every file with a readable file meta in one association; the statuses
    (None: no answer). A file without one could not be offered and is not sent."""
    metas = {}
    for path in files:
        try:
            metas[path] = pydicom.filereader.read_file_meta_info(path)
        except Exception:  # noqa: BLE001 - junk a sender could not offer either
            continue
    ae = AE(ae_title=CALLING)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    # One context per (SOP class, transfer syntax): the bytes go as they are, so the
    # accepted syntax must be the file's own.
    for pair in sorted({(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID)) for m in metas.values()}):
        ae.add_requested_context(pair[0], [pair[1]])
    assoc = ae.associate("127.0.0.1", port, ae_title="RADFUSION")
    if not assoc.is_established:
        return [None] * len(metas)
    statuses = []
    try:
        with _raw_sending():
            for path in metas:
                status = assoc.send_c_store(path)
                statuses.append(int(status.Status) if "Status" in status else None)
    finally:
        assoc.release()
    return statuses


def pacs_status(work: Path) -> dict[str, Any]:
    """`radfusion pacs-status --json --show-uids`, as an operator reads it."""
    command = [
        sys.executable, "-m", "radfusion.serving.pacs.cli", "pacs-status", "--work", str(work), "--json", "--show-uids"
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"pacs-status failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout)


def wait_settled(work: Path, uids: Sequence[str], alive: Callable[[], bool], timeout: float) -> dict[str, Any]:
    """The status report once every study in ``uids`` is sent or failed (or at the
    deadline, or when the listener died)."""
    deadline = time.monotonic() + timeout
    report = pacs_status(work)
    while not settled(report, uids) and time.monotonic() < deadline and alive():
        time.sleep(1.0)
        report = pacs_status(work)
    return report


def listener_outcomes(items: Sequence[Item], report: dict[str, Any], sr_studies: set[str]) -> list[Outcome]:
    """Each listener item's studies as the listener's status report (pacs-status
    --show-uids) has them at the end: "sent" with a prediction and an SR at the PACS is
    scored; a ``last_error`` is a failure; anything else is a study left behind."""
    rows = {r["study_instance_uid"]: r for r in report["studies"]}
    outcomes = []
    for item in items:
        for uid in item.study_uids:
            row = rows.get(uid)
            if row is None:
                outcomes.append(
                    Outcome(item.id, item.mutation, LISTENER, _tail(uid), "none", problems=["never recorded"])
                )
                continue
            outcomes.append(_status_outcome(item, uid, row, uid in sr_studies))
    return outcomes


def _status_outcome(item: Item, uid: str, row: dict[str, Any], has_sr: bool) -> Outcome:
    error = row.get("last_error")
    if error:
        match = ERROR_TEXT.match(str(error))
        return judge(item, LISTENER, uid, False, match.group(1) if match else None, f"{row['status']}: {error}")
    if row["status"] == "sent" and row.get("predicted_label") is not None:
        outcome = judge(item, LISTENER, uid, True, None, str(row.get("prediction")))
        if not has_sr:
            outcome.problems.append("marked sent, but no SR reached the PACS")
        return outcome
    return Outcome(item.id, item.mutation, LISTENER, _tail(uid), row["status"], problems=["not settled"])


def settled(report: dict[str, Any], uids: Iterable[str]) -> bool:
    rows = {r["study_instance_uid"]: r for r in report["studies"]}
    return all(uid in rows and rows[uid]["status"] in ("sent", "failed") for uid in uids)
