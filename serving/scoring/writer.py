"""Parquet output that survives interruption: rows are committed in part files, and a
finished run compacts them into the one output file.

While a run is going, rows live in ``<out>.parts/part-NNNNNN.parquet``. Each part is
written under a temporary name, flushed to disk and then renamed: a part file either
exists whole or not at all, so the set of part files *is* the commit log (a SIGKILL
loses at most the rows not yet committed, which the next run scores again).

Exactly one row per study: a rerun of the same command reads the committed rows and
skips their studies (unless the study has since gained instances, or its error is worth
a retry, see rows.RETRY_ON_RESUME); compaction keeps only the latest committed row of
each study, sorts by study UID and writes ``<out>`` atomically (temporary file, flush,
rename), then removes the parts. A completed output is itself resumable: run the same
command again and it is taken over as committed rows. A run refuses to resume from
rows made by another model, and a lock file stops two runs writing the same output.

A row is one study (key ``study_instance_uid``) in an archive run, one patient (key
``patient_id``) in a table-only run: ``key`` names the column, and everything above
holds for either."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from radfusion.serving.scoring.rows import RETRY_ON_RESUME, error_kind
from radfusion.serving.scoring.sources import StudyRef

log = logging.getLogger(__name__)

METADATA_KEY = b"radfusion.scorer"
RUN_FILE = "run.json"
# Test-only: pause after each committed part, so that a test can interrupt a run mid-way.
COMMIT_DELAY_ENV = "RADFUSION_SCORER_COMMIT_DELAY_S"


class ResumeError(RuntimeError):
    """The output cannot be resumed (other model, other run writing, foreign file)."""


def parts_dir(out: Path) -> Path:
    return out.parent / f"{out.name}.parts"


class PartWriter:
    def __init__(
        self,
        out: Path,
        schema: pa.Schema,
        identity: dict,
        *,
        chunk_size: int = 256,
        commit_seconds: float = 30.0,
        fresh: bool = False,
        key: str = "study_instance_uid",
    ):
        self.out, self.schema, self.identity, self.key = Path(out), schema, identity, key
        self.chunk_size, self.commit_seconds = chunk_size, commit_seconds
        self.parts = parts_dir(self.out)
        created = not self.parts.exists()
        self.parts.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.parts)
        try:
            self._open(fresh)
        except ResumeError:
            self.close()
            if created:
                shutil.rmtree(self.parts, ignore_errors=True)
            raise
        self.previous = self._committed()
        self._next = 1 + max((int(p.stem.split("-")[1]) for p in self.parts.glob("part-*.parquet")), default=-1)
        self._buffer: list[dict] = []
        self._last_commit = time.monotonic()
        self.committed_this_run = 0

    def _open(self, fresh: bool) -> None:
        if fresh:
            for path in self.parts.glob("part-*.parquet"):
                path.unlink()
            (self.parts / RUN_FILE).unlink(missing_ok=True)
        self._check_identity()
        for leftover in self.parts.glob(".*.tmp"):  # a part that was being written when killed
            leftover.unlink()
        if not fresh and self.out.exists() and not any(self.parts.glob("part-*.parquet")):
            self._take_over_output()

    def should_score(self, study: StudyRef) -> bool:
        return self.needs(study.study_uid, study.n_instances)

    def needs(self, key: str, n_instances: int = 0) -> bool:
        """Whether the row of ``key`` (a study UID, or a patient id in a table run) is
        still to be made: none committed, the study grew, or its error is worth a retry."""
        previous = self.previous.get(key)
        if previous is None:
            return True
        committed_instances, kind = previous
        return committed_instances != n_instances or kind in RETRY_ON_RESUME

    def add(self, row: dict) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.chunk_size or time.monotonic() - self._last_commit >= self.commit_seconds:
            self.commit()

    def commit(self) -> None:
        """Make the buffered rows durable as one part file."""
        self._last_commit = time.monotonic()
        if not self._buffer:
            return
        table = pa.Table.from_pylist(self._buffer, schema=self.schema)
        final = self.parts / f"part-{self._next:06d}.parquet"
        _write_durably(table, final, self.parts / f".{final.name}.tmp")
        self._next += 1
        self.committed_this_run += len(self._buffer)
        self._buffer.clear()
        if delay := float(os.environ.get(COMMIT_DELAY_ENV, "0") or 0):
            time.sleep(delay)

    def finish(self) -> pa.Table:
        """Commit what is left, compact every part into ``out``, remove the parts."""
        self.commit()
        table = self._compacted()
        schema = self.schema.with_metadata({METADATA_KEY: json.dumps(self.identity).encode()})
        _write_durably(
            table.replace_schema_metadata(schema.metadata),
            self.out,
            self.out.parent / f".{self.out.name}.{os.getpid()}.tmp",
        )
        self.close()
        shutil.rmtree(self.parts, ignore_errors=True)
        return table

    def close(self) -> None:
        if not self._lock.closed:
            self._lock.close()

    @contextlib.contextmanager
    def guarded(self) -> Iterator[PartWriter]:
        """A scoring run's body: on Ctrl-C the rows finished so far are committed (the
        same command resumes after them); on any failure the output lock is released."""
        try:
            yield self
        except KeyboardInterrupt:
            self.commit()  # what is finished stays finished
            self.close()
            log.warning(
                "interrupted: %d rows committed this run; run the same command again to resume", self.committed_this_run
            )
            raise
        except BaseException:
            self.close()
            raise

    # ---- internals -------------------------------------------------------------------

    def _check_identity(self) -> None:
        run_file = self.parts / RUN_FILE
        if run_file.exists():
            stored = json.loads(run_file.read_text())
            if stored != self.identity:
                raise ResumeError(
                    f"{self.parts} holds rows of model {stored.get('model')} "
                    f"(sha256 {(stored.get('model_sha256') or '')[:12]}) "
                    f"made with another {_differences(stored, self.identity)}; run with the same model and tables "
                    "to resume, or pass --fresh to start over"
                )
        else:
            run_file.write_text(json.dumps(self.identity))

    def _take_over_output(self) -> None:
        try:
            stored = json.loads(pq.read_schema(self.out).metadata[METADATA_KEY])
        except Exception:  # noqa: BLE001 - not Parquet, or not written by this scorer
            stored = None
        if stored != self.identity:
            what = "with this model" if stored is None else f"with this run's {_differences(stored, self.identity)}"
            raise ResumeError(
                f"{self.out} exists and was not written by this scorer {what}; pass --fresh to replace it"
            )
        shutil.copyfile(self.out, self.parts / ".part-000000.parquet.tmp")
        os.replace(self.parts / ".part-000000.parquet.tmp", self.parts / "part-000000.parquet")

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet"))

    def _committed(self) -> dict[str, tuple[int, str | None]]:
        """The latest committed (n_instances, error kind) of every row's key."""
        done: dict[str, tuple[int, str | None]] = {}
        for path in self._part_files():
            table = pq.read_table(path, columns=[self.key, "n_instances", "error"])
            for uid, n, error in zip(*(table.column(i).to_pylist() for i in range(3)), strict=True):
                done[uid] = (n, error_kind(error))
        return done

    def _compacted(self) -> pa.Table:
        tables = [pq.read_table(p, schema=self.schema) for p in self._part_files()]
        if not tables:
            return self.schema.empty_table()
        table = pa.concat_tables(tables)
        keys = np.asarray(table.column(self.key).to_pylist(), dtype=object)
        # np.unique on the reversed column finds each key's last row, in key order.
        _, first_in_reversed = np.unique(keys[::-1], return_index=True)
        return table.take(len(keys) - 1 - first_in_reversed)


def _differences(stored: dict, identity: dict) -> str:
    """Which parts of a run's identity (model, tables, archive) differ, by key."""
    return ", ".join(k for k in sorted({*stored, *identity}) if stored.get(k) != identity.get(k))


def _lock(folder: Path):
    handle = open(folder / "lock", "w")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ResumeError(f"another run is writing {folder.parent / folder.name.removesuffix('.parts')}") from None
    return handle


def _write_durably(table: pa.Table, final: Path, tmp: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself must survive a crash
    finally:
        os.close(directory)
