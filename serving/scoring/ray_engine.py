"""The Ray engine (``radfusion score --engine ray``): the same per-study functions as the
local engine, on Ray Data, for archives too big for one machine.

    read (the studies still to score) -> map(prepare_study) -> map_batches(InferenceActor)

``prepare_study`` (fetch, decode, preprocess) runs as Ray tasks on any node's CPUs; a
fixed pool of ``actors`` actors each holds one ONNX Runtime session (loaded once, with
``gpus_per_actor`` GPUs each, fractions allowed) and runs ``infer_batch``. The rows
stream back to the driver, which writes them with the same PartWriter as the local
engine: same Parquet output, same resume behaviour.

Where it runs: an already initialised Ray (``ray.init`` in your code), else the cluster
named by ``RAY_ADDRESS`` (e.g. ``RAY_ADDRESS=ray://head:10001`` or ``auto`` on a
cluster node), else a local Ray instance on this machine. On a cluster, every node
needs radfusion installed (with the ``cpu`` or ``gpu`` extra) and must reach the
archive: a shared file system path, or a DICOMweb URL. The model file is shipped to
the actors through Ray's object store, so it need only exist on the driver.

Discovery (reading the headers) runs in the driver; studies go to Ray Data in chunks of
``RayEngine.CHUNK``, so the driver's memory stays flat on archives of millions."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from radfusion import log_privacy
from radfusion.contract import ModelContract
from radfusion.limits import StudyBudget
from radfusion.predictor import pack, packed_width, unpack
from radfusion.preprocess import ModelInputs
from radfusion.serving.patients import PatientTables
from radfusion.serving.scoring.inference import infer_batch
from radfusion.serving.scoring.local_engine import EngineStats
from radfusion.serving.scoring.prepare import PreparedStudy, prepare_study
from radfusion.serving.scoring.progress import Progress
from radfusion.serving.scoring.sources import StudyAssembler, StudyRef, is_dicomweb, list_units, scan_unit
from radfusion.serving.scoring.writer import PartWriter


def prepare_row(item: dict, contract: ModelContract, budget: StudyBudget | None = None) -> dict:
    """Ray task: one study -> its row (pickled) and its packed model inputs."""
    log_privacy.install()  # Ray forwards the task's log lines and warnings to the driver
    study, patient = pickle.loads(item["task"])
    prepared = prepare_study(contract, study, patient, budget)
    packed = pack([prepared.inputs])[0] if prepared.inputs is not None else np.zeros(packed_width(contract), np.float32)
    return {"row": pickle.dumps(prepared.row), "ok": prepared.inputs is not None, "inputs": packed}


class InferenceActor:
    """Holds one ONNX Runtime session for its whole life; infers batches of rows."""

    def __init__(self, model_bytes, device: str = "auto"):
        import ray

        from radfusion.runtime import OnnxModel

        if isinstance(model_bytes, ray.ObjectRef):
            model_bytes = ray.get(model_bytes)
        folder = Path(tempfile.mkdtemp(prefix="radfusion-model-"))
        (folder / "model.onnx").write_bytes(model_bytes)
        self.model = OnnxModel(folder / "model.onnx", device=device)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [pickle.loads(r) for r in batch["row"]]
        contract = self.model.contract
        images, genomics, clinical, presence = unpack(np.asarray(batch["inputs"], dtype=np.float32), contract)
        ready = [
            PreparedStudy(
                row,
                ModelInputs(
                    images[i],
                    genomics[i],
                    clinical[i],
                    presence[i],
                    [m for m, p in zip(contract.modalities, presence[i], strict=True) if p > 0],
                ),
            )
            for i, row in enumerate(rows)
            if batch["ok"][i]
        ]
        infer_batch(self.model, ready)
        return {"row": np.array([pickle.dumps(r) for r in rows], dtype=object)}


class RayEngine:
    # Studies per Ray Data pipeline: the driver holds one chunk's file lists at a time.
    CHUNK = 10_000

    def __init__(
        self,
        model_file: Path,
        contract: ModelContract,
        batch_size: int,
        actors: int = 1,
        gpus_per_actor: float = 0.0,
        device: str = "auto",
        budget: StudyBudget | None = None,
    ):
        self.model_file, self.contract = Path(model_file), contract
        self.batch_size, self.actors, self.gpus_per_actor, self.device = batch_size, actors, gpus_per_actor, device
        self.budget = budget or StudyBudget()

    def run(self, archive: str, patients: PatientTables, writer: PartWriter, progress: Progress) -> EngineStats:
        import ray

        if not ray.is_initialized():
            # Nothing leaves the host: a Ray started here sends no usage statistics.
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            # ray.init() joins the cluster in RAY_ADDRESS; options like the dashboard
            # belong to a cluster being started, so they are given only for a local one.
            ray.init() if os.environ.get("RAY_ADDRESS") else ray.init(include_dashboard=False)
        self._model = ray.put(self.model_file.read_bytes())  # shipped once to every actor's node
        stats = EngineStats()
        assembler = StudyAssembler(archive.rstrip("/") if is_dicomweb(archive) else None)
        chunk: list[StudyRef] = []
        for study in self._discover(archive, assembler):
            stats.discovered += 1
            if not writer.should_score(study):
                stats.already_done += 1
                continue
            chunk.append(study)
            progress.found(1)
            if len(chunk) >= self.CHUNK:
                self._score(chunk, patients, writer, progress)
                chunk = []
        progress.discovery_finished()
        self._score(chunk, patients, writer, progress)
        stats.skipped_files = assembler.skipped_files
        stats.skipped_by_reason = dict(sorted(assembler.skipped_by_reason.items()))
        stats.failed_units = dict(sorted(assembler.failed_units.items()))
        return stats

    def _score(self, studies: list[StudyRef], patients: PatientTables, writer: PartWriter, progress: Progress) -> None:
        import ray

        if not studies:
            return
        # Looked up in the driver: the tables stay there, each task carries its patient's values.
        items = [{"task": pickle.dumps((s, patients.lookup(s.patient_id)))} for s in studies]
        dataset = (
            ray.data.from_items(items)
            # Ray types map()'s fn as taking the row alone, though fn_kwargs adds arguments.
            .map(prepare_row, fn_kwargs={"contract": self.contract, "budget": self.budget})  # type: ignore[arg-type]
            .map_batches(
                InferenceActor,
                fn_constructor_kwargs={"model_bytes": self._model, "device": self.device},
                batch_size=self.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=self.actors),
                num_gpus=self.gpus_per_actor,
            )
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            rows = [pickle.loads(r) for r in batch["row"]]
            for row in rows:
                writer.add(row)
            progress.advance(rows)

    @staticmethod
    def _discover(archive: str, assembler: StudyAssembler):
        for unit in list_units(archive):
            yield from assembler.add(scan_unit(unit))
        yield from assembler.finish()
