"""What the server keeps of a federated run, in its run folder:

- received.jsonl: everything the sites sent, as the server got it (moments; per round
  the arrays' shapes, patient counts and metrics), the audit of what left each site;
- state.npz: the global weights after the last finished round, to resume from;
- best.npz: the global weights of the round that scored best on the sites' validation
  parts (the weighted mean of the task's metric, which `radfusion train` picks its
  best epoch by), with that round and score;
- policy.json: the pooled panel and missing-data policy;
- checkpoints/best.ckpt: the model of that best round (of the last one where the
  configs ask for ``model.checkpoint: last``), an ordinary radfusion checkpoint whose
  contract carries the federation's provenance;
- federation.json: the provenance and each round's aggregated metrics."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import lightning
import numpy as np
import torch
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import Strategy

from radfusion.pooled_policy import PooledPolicy, policy_document, pool_policy
from radfusion.training.cv.fold import build_cli
from radfusion.training.federated.job import FederatedJob
from radfusion.training.federated.weights import set_weights
from radfusion.training.module import CONTRACT_KEY
from radfusion.training.tasks import DiscreteHazardTask


class FederationRecord:
    def __init__(self, out: Path, job: FederatedJob):
        self.out, self.job = out, job
        out.mkdir(parents=True, exist_ok=True)
        self.rounds: list[dict] = []
        self.sites: list[dict] = []
        self.monitor: str | None = None
        self._last: list[np.ndarray] | None = None

    def received(self, kind: str, content, server_round: int = 0) -> None:
        with (self.out / "received.jsonl").open("a") as f:
            f.write(json.dumps({"round": server_round, "kind": kind, "content": content}) + "\n")

    def agreed(self, moments: list[dict]) -> PooledPolicy:
        """The policy pooled from the sites' moments, once they agree on the settings and
        together cover every modality the model uses."""
        settings = {json.dumps(m["settings"], sort_keys=True) for m in moments}
        if len(settings) > 1:
            raise RuntimeError("the sites run different data settings (the federation's configs differ)")
        first = moments[0]["settings"]
        policy = pool_policy(
            moments,
            max_imputed=first["max_imputed_fraction"],
            min_level_count=first["min_level_count"],
            treatment=first["treatment"],
        )
        self.sites = [
            {"train": m["coverage"]["train"], "with_image": m["coverage"]["image"], "blocks": sorted(m["omics"])}
            for m in moments
        ]
        self.cohort_hash = hashlib.sha256(json.dumps(sorted(m["cohort_hash"] for m in moments)).encode()).hexdigest()[
            :16
        ]
        (self.out / "policy.json").write_text(json.dumps(policy_document(policy), indent=1))
        return policy

    def check_coverage(self, modalities: list[str]) -> None:
        """Each modality the model uses must have training cases at some site (the check
        `radfusion train` makes on one site's data)."""
        if "image" in modalities and not any(s["with_image"] for s in self.sites):
            raise RuntimeError("the model uses images, which no site's training part has")

    def recording(self, strategy: Strategy, done: int, keys: list[str]) -> Strategy:
        return _Recording(strategy, self, done, keys)

    def save_round(self, server_round: int, weights: list[np.ndarray], metrics: dict) -> None:
        _save(self.out / "state.npz", weights, round=server_round)
        self._last = weights
        self.rounds.append({"round": server_round, "fit": metrics})

    def evaluated(self, server_round: int, metrics: dict) -> None:
        """Round ``server_round``'s global weights kept as the best when their validation
        ``monitor`` (higher is better) beats every earlier round's. A round whose fit did
        not finish (SecAgg+ halted) evaluated the weights before it: not a round of its own."""
        if self.monitor is None or not self.rounds or self.rounds[-1]["round"] != server_round:
            return
        value = float(metrics.get(self.monitor, np.nan))
        best = self.chosen()
        if self._last is not None and np.isfinite(value) and (best is None or value > best[2]):
            _save(self.out / "best.npz", self._last, round=server_round, value=value, monitor=self.monitor)

    def resume_from(self) -> tuple[list[np.ndarray], int] | None:
        state = self._load("state.npz")
        return None if state is None else (state[0], int(state[1]["round"]))

    def chosen(self) -> tuple[list[np.ndarray], int, float] | None:
        """(weights, round, validation score) of the best round; None without one (no
        round scored, or the folder's best was chosen by another metric)."""
        best = self._load("best.npz") if self.monitor is not None else None
        if best is None or str(best[1].get("monitor")) != self.monitor:
            return None
        return best[0], int(best[1]["round"]), float(best[1]["value"])

    def _load(self, name: str) -> tuple[list[np.ndarray], dict] | None:
        path = self.out / name
        if not path.is_file():
            return None
        with np.load(path) as state:
            n = len([k for k in state.files if k.startswith("arr_")])
            return [state[f"arr_{i}"] for i in range(n)], {k: state[k] for k in state.files if not k.startswith("arr_")}

    def provenance(self, rounds: int, eps: float) -> dict:
        job = self.job
        chosen = self.chosen()
        return {
            "training": "federated",
            "framework": "flower",
            "sites": len(self.sites),
            "site_patients": [s["train"] for s in self.sites],
            "rounds": rounds,
            # The round whose model the checkpoint holds, and the validation score it was chosen by.
            "model_round": chosen[1] if chosen else rounds,
            "model_chosen_by": {self.monitor: chosen[2]} if chosen else "last round",
            "local_epochs": job.local_epochs,
            "strategy": job.strategy,
            "secure_aggregation": "secagg+" if job.secagg else "none",
            "differential_privacy": (
                {"noise_multiplier": job.dp_noise, "clip": job.dp_clip, "epsilon": eps, "delta": job.dp_delta}
                if job.dp_noise
                else None
            ),
            "cohort_hash": self.cohort_hash,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


class _Recording(Strategy):
    """The strategy as configured, plus the record: what each round received and the
    global weights after it."""

    def __init__(self, inner: Strategy, record: FederationRecord, done: int, keys: list[str]):
        self.inner, self.record, self.done, self.keys = inner, record, done, keys

    def initialize_parameters(self, client_manager):
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round, parameters, client_manager):
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        received = [
            {
                "arrays": [list(a.shape) for a in parameters_to_ndarrays(res.parameters)],
                # Under SecAgg+ every result carries the same unmasked sum: equal digests.
                "digest": hashlib.sha256(b"".join(res.parameters.tensors)).hexdigest()[:16],
                "num_examples": res.num_examples,
                "metrics": dict(res.metrics),
            }
            for _, res in results
        ]
        self.record.received("fit", received, self.done + server_round)
        parameters, metrics = self.inner.aggregate_fit(server_round, results, failures)
        if parameters is None:
            raise RuntimeError(f"round {self.done + server_round}: no update to aggregate ({len(failures)} failures)")
        weights = floor_variances(parameters_to_ndarrays(parameters), self.keys)
        self.record.save_round(self.done + server_round, weights, metrics)
        return ndarrays_to_parameters(weights), metrics

    def configure_evaluate(self, server_round, parameters, client_manager):
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        received = [
            {"num_examples": res.num_examples, "loss": res.loss, "metrics": dict(res.metrics)} for _, res in results
        ]
        self.record.received("evaluate", received, self.done + server_round)
        loss, metrics = self.inner.aggregate_evaluate(server_round, results, failures)
        self.record.evaluated(self.done + server_round, metrics)
        if self.record.rounds:
            self.record.rounds[-1]["evaluate"] = {"loss": loss, **metrics}
        return loss, metrics

    def evaluate(self, server_round, parameters):
        return self.inner.evaluate(server_round, parameters)


def _save(path: Path, weights: list[np.ndarray], **values) -> None:
    np.savez(path.with_suffix(".tmp.npz"), *weights, **values)
    path.with_suffix(".tmp.npz").replace(path)  # never half a file


VARIANCE_FLOOR = 1e-5


def floor_variances(weights: list[np.ndarray], keys: list[str]) -> list[np.ndarray]:
    """Differential privacy's noise can push a BatchNorm running variance to zero or
    below (NaN at inference): floored, a post-processing that leaves the privacy
    guarantee as it was. Without noise the averages of variances are positive already."""
    return [
        np.maximum(w, VARIANCE_FLOOR).astype(w.dtype) if k.endswith("running_var") else w
        for w, k in zip(weights, keys, strict=True)
    ]


def server_model(job: FederatedJob, out: Path):
    """The module the federation trains, built from its configs and the pooled policy
    (policy.json) with no data (data.cohort_dir ""), as every site builds it."""
    policy = out / "policy.json"
    cli = build_cli(
        [
            *job.cli_configs(),
            "--data.cohort_dir",
            "",
            "--data.policy",
            str(policy),
            "--trainer.default_root_dir",
            str(out),
            "--seed_everything",
            str(job.seed),
        ]
    )
    module, dm = cli.model, cli.datamodule
    if module.network_config.treatment_interaction or isinstance(module.task, DiscreteHazardTask):
        raise ValueError("federated training does not fit treatment interaction terms or discrete-time survival bins")
    dm.omics, dm.clinical = dm.policy
    return module, dm


def write_checkpoint(module, dm, weights: list[np.ndarray], provenance: dict, history: list[dict]) -> Path:
    """checkpoints/best.ckpt in the form `radfusion train` writes (what load_module,
    evaluate and export read) and federation.json beside it."""
    set_weights(module, weights)
    parts = module.contract_of(dm)
    parts["cohort_hash"] = provenance["cohort_hash"]
    parts["provenance"] = provenance
    out = Path(dm.hparams.policy).parent
    path = out / "checkpoints" / "best.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            # The policy itself, not the server's file: the checkpoint travels alone.
            "datamodule_hyper_parameters": {**dm.hparams, "policy": json.loads(Path(dm.hparams.policy).read_text())},
            CONTRACT_KEY: parts,
            "epoch": provenance["model_round"],
            "global_step": 0,
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    document = {**provenance, "history": history, "checkpoint": "checkpoints/best.ckpt"}
    (out / "federation.json").write_text(json.dumps(document, indent=1))
    return path
