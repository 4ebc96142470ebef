"""The Flower ServerApp of a radfusion federation, run by the SuperLink.

Round 0 asks every site for the moments of its training part and pools them into one
panel and missing-data policy (radfusion.pooled_policy); the server builds the model
from the federation's configs and that policy (it holds no data), then runs the rounds
with Flower's strategy, under SecAgg+ when asked, saving the global weights after each
one so a restarted server resumes. The result is an ordinary radfusion checkpoint
with the federation's provenance in its contract."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from flwr.app import Context
from flwr.common import GetPropertiesIns, ndarrays_to_parameters
from flwr.common.constant import MessageTypeLegacy
from flwr.compat.common import recorddict_compat as compat
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAdam, FedAvg, FedProx, Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from radfusion.pooled_policy import policy_document
from radfusion.training.federated.job import FederatedJob
from radfusion.training.federated.outcome import FederationRecord, server_model, write_checkpoint
from radfusion.training.federated.privacy import epsilon
from radfusion.training.federated.weights import exchanged_keys, get_weights

log = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    job = FederatedJob.from_run_config(dict(context.run_config))
    record = FederationRecord(Path(job.out), job)
    nodes = wait_for_sites(grid, job.min_sites, job.site_wait)
    moments = ask_moments(grid, nodes, job.site_wait)
    record.received("moments", moments)
    policy_text = json.dumps(policy_document(record.agreed(moments)))
    module, dm = server_model(job, Path(job.out))
    record.check_coverage(list(module.network_config.modalities))
    # The task's validation metric as the sites report it (val/auroc -> val_auroc).
    record.monitor = None if module.hparams.checkpoint == "last" else module.task.monitor.replace("/", "_")
    weights, done = record.resume_from() or (get_weights(module), 0)
    if done >= job.rounds:
        log.info("the run finished all %d rounds before: writing its checkpoint", job.rounds)
    else:
        run_rounds(grid, context, job, record, weights, done, policy_text, moments, exchanged_keys(module))
    final, rounds = record.resume_from() or (weights, done)
    chosen = record.chosen()
    write_checkpoint(
        module,
        dm,
        chosen[0] if chosen else final,
        record.provenance(rounds, epsilon(job.dp_noise, rounds, job.dp_delta)),
        record.rounds,
    )


def wait_for_sites(grid: Grid, n: int, wait: float) -> list[int]:
    deadline = time.monotonic() + wait
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n:
            return nodes
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(nodes)} of {n} sites connected within {wait:.0f} s")
        time.sleep(1.0)


def ask_moments(grid: Grid, nodes: list[int], wait: float) -> list[dict]:
    """Each site's training-part moments, in node order (a site that fails fails the run:
    a policy without it would not fit its data)."""
    content = compat.getpropertiesins_to_recorddict(GetPropertiesIns(config={}))
    messages = [
        grid.create_message(content, MessageTypeLegacy.GET_PROPERTIES, node, group_id="moments") for node in nodes
    ]
    replies = list(grid.send_and_receive(messages, timeout=wait))
    failed = [r for r in replies if r.has_error()]
    if failed or len(replies) < len(nodes):
        reasons = "; ".join(r.error.reason for r in failed) or "no reply"
        raise RuntimeError(f"{len(failed) or len(nodes) - len(replies)} site(s) sent no moments: {reasons}")
    return [json.loads(str(compat.recorddict_to_getpropertiesres(r.content).properties["moments"])) for r in replies]


def run_rounds(grid, context, job, record, weights, done, policy_text, moments, keys) -> None:
    def fit_config(server_round: int) -> dict:
        return {"policy": policy_text, "server_round": done + server_round}

    sites = len(moments)
    common = {
        "fraction_fit": 1.0,
        "fraction_evaluate": 1.0,
        "min_fit_clients": sites,
        "min_evaluate_clients": sites,
        "min_available_clients": sites,
        "on_fit_config_fn": fit_config,
        "on_evaluate_config_fn": fit_config,
        "initial_parameters": ndarrays_to_parameters(weights),
        "accept_failures": False,
        "fit_metrics_aggregation_fn": weighted_mean,
        "evaluate_metrics_aggregation_fn": weighted_mean,
    }
    strategy: Strategy
    if job.strategy == "fedprox":
        strategy = FedProx(proximal_mu=job.proximal_mu, **common)
    elif job.strategy == "fedadam":
        strategy = FedAdam(eta=job.server_lr, eta_l=job.server_lr, tau=1e-3, **common)
    else:
        strategy = FedAvg(**common)
    strategy = record.recording(strategy, done, keys)
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=job.rounds - done), strategy=strategy)
    fit_workflow = None
    if job.secagg:
        largest = max(m["coverage"]["train"] for m in moments)
        fit_workflow = SecAggPlusWorkflow(
            num_shares=sites,
            reconstruction_threshold=min(sites, max(2, math.ceil(2 * sites / 3))),
            # The weight (training patients) scales the update before quantisation: the
            # largest site's count keeps the full resolution.
            max_weight=float(largest),
            clipping_range=job.secagg_clip,
        )
    DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)


def weighted_mean(metrics: list[tuple[int, dict]]) -> dict:
    """Each metric's mean weighted by patients over the sites that report it (a site
    leaves out what it cannot compute, e.g. AUROC on a validation part of one class)."""
    names = {k for _, m in metrics for k in m}
    return {
        k: sum(n * float(m[k]) for n, m in metrics if k in m) / (sum(n for n, m in metrics if k in m) or 1)
        for k in sorted(names)
    }
