"""`radfusion federate` for real: a SuperLink and three SuperNodes on loopback (TLS and
site authentication on, SecAgg+ on), 3 rounds over three synthetic hospitals (two with
images and omics, one without omics), then the checkpoint exported to ONNX (parity
checked) and served.

Flower runs in its own environment (.venv-federate, `make federate-venv`): the
federation runs there as the command a site would run; export and serving run here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.paths import CONFIGS, PROJECT_ROOT

pytestmark = pytest.mark.slow

FEDERATE_PYTHON = Path(os.environ.get("RADFUSION_FEDERATE_PYTHON", PROJECT_ROOT / ".venv-federate" / "bin" / "python"))
CONFIG_FILES = [
    CONFIGS / "trainer" / "cpu.yaml",
    CONFIGS / "data" / "synthetic.yaml",
    CONFIGS / "model" / "fusion_cpu.yaml",
    CONFIGS / "experiment" / "demo.yaml",
]
ROUNDS = 3


def _radfusion(python: Path, *args, env: dict | None = None, timeout: float = 900) -> str:
    out = subprocess.run(
        [str(python), "-m", "radfusion.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert out.returncode == 0, f"radfusion {args[0]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    if not FEDERATE_PYTHON.exists():
        pytest.fail(f"no Flower environment at {FEDERATE_PYTHON}: make federate-venv")
    root = tmp_path_factory.mktemp("federation")
    _radfusion(
        Path(sys.executable), "synth", "--sites", 3, "--patients", 30, "--slices", 16, "--size", 48,
        "--pixel-spacing", 6, "--site-without-omics", 3, "--seed", 5, "--out", root / "sites",
    )  # fmt: skip
    sites = [f"--site=s{i}={root / 'sites' / f'site-{i}'}" for i in (1, 2, 3)]
    configs = [a for c in CONFIG_FILES for a in ("--config", c)]
    _radfusion(
        FEDERATE_PYTHON, "federate", "simulate", *sites, *configs, "--rounds", ROUNDS, "--out", root / "run",
        env={"RADFUSION_CACHE_DIR": str(root / "cache")}, timeout=1500,
    )  # fmt: skip
    return root


def _received(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "received.jsonl").read_text().splitlines()]


def test_three_sites_three_rounds_under_secagg(federation):
    run = federation / "run"
    provenance = json.loads((run / "federation.json").read_text())
    assert provenance["training"] == "federated" and provenance["framework"] == "flower"
    assert provenance["sites"] == 3 and provenance["rounds"] == ROUNDS
    assert provenance["secure_aggregation"] == "secagg+" and provenance["differential_privacy"] is None
    assert [r["round"] for r in provenance["history"]] == [1, 2, 3]
    assert all(np.isfinite(r["evaluate"]["loss"]) for r in provenance["history"])
    # The checkpoint holds the round that scored best on the sites' validation parts, as
    # `radfusion train` keeps its best epoch.
    scores = [r["evaluate"].get("val_auroc", -np.inf) for r in provenance["history"]]
    assert provenance["model_round"] == 1 + scores.index(max(scores)) and np.isfinite(max(scores))
    assert provenance["model_chosen_by"] == {"val_auroc": max(scores)}
    # TLS and site authentication were on: the SuperLink had certificates and only
    # registered keys.
    commands = (run / "logs" / "commands.txt").read_text().splitlines()
    superlink = next(c for c in commands if c.startswith("superlink:"))
    assert "--ssl-certfile" in superlink and "--enable-supernode-auth" in superlink and "--insecure" not in superlink
    nodes = [c for c in commands if c.startswith("site-")]
    assert len(nodes) == 3 and all("--root-certificates" in c and "--auth-supernode-private-key" in c for c in nodes)
    assert (run / "pki" / "ca.crt").is_file() and len(list((run / "pki" / "sites").glob("*.pub"))) == 3


def test_the_server_receives_moments_and_one_aggregate_per_round(federation):
    """What left the sites, as the server got it: first round, aggregated moments (no
    rows); then per round each site's patient count and loss with the update, which
    under SecAgg+ is the sum of the three (the same bytes in every result, never a
    site's own), shaped as the model; and each site's validation metrics."""
    import torch

    run = federation / "run"
    received = _received(run)
    moments = [r for r in received if r["kind"] == "moments"]
    assert len(moments) == 1 and len(moments[0]["content"]) == 3
    by_site = moments[0]["content"]
    assert sum(bool(m["omics"]) for m in by_site) == 2  # site 3 has no omics
    for m in by_site:
        assert set(m) <= {"version", "n_rows", "omics", "clinical", "labels", "coverage", "cohort_hash", "settings"}
        for block in m["omics"].values():
            assert set(block) == {"features", "rows", "n", "mean", "m2"}
    fits = [r for r in received if r["kind"] == "fit"]
    assert [r["round"] for r in fits] == [1, 2, 3]
    state = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    shapes = [list(v.shape) for v in state.values() if v.is_floating_point()]
    for fit in fits:
        results = fit["content"]
        assert len(results) == 3
        assert len({r["digest"] for r in results}) == 1  # the sum, the same for all three
        assert all(r["arrays"] == shapes for r in results)
        assert sorted(r["num_examples"] for r in results) == sorted(m["coverage"]["train"] for m in by_site)
        assert all(set(r["metrics"]) <= {"train_loss"} for r in results)
    evaluations = [r for r in received if r["kind"] == "evaluate"]
    assert len(evaluations) == ROUNDS and all(len(e["content"]) == 3 for e in evaluations)
    for e in evaluations:
        for site in e["content"]:
            assert set(site["metrics"]) <= {"val_loss", "val_auroc"}


def test_no_patient_identifier_reaches_the_server(federation):
    run = federation / "run"
    ids = set()
    for i in (1, 2, 3):
        ids |= set(pd.read_csv(federation / "sites" / f"site-{i}" / "clinical.csv", dtype=str)["patient_id"])
    assert len(ids) == 90
    server_side = [run / "received.jsonl", run / "policy.json", run / "federation.json", run / "server.log"]
    server_side += sorted((run / "logs").glob("superlink*.log"))
    for path in server_side:
        text = path.read_text()
        leaked = [pid for pid in ids if pid in text]
        assert not leaked, f"{path.name} holds {len(leaked)} patient id(s)"


def test_pooled_panel_is_the_union_of_the_sites_panels(federation):
    from radfusion.genomics import load_genomics_table

    policy = json.loads((federation / "run" / "policy.json").read_text())
    features = {f for block in policy["omics"] for f in block["features"]}
    panels = [set(load_genomics_table(federation / "sites" / f"site-{i}" / "genomics.parquet").columns) for i in (1, 2)]
    assert all(panel <= features for panel in panels)
    assert panels[0] != panels[1]  # the synthetic hospitals' panels differ, and both are covered


def test_the_federated_model_exports_with_parity_and_serves(federation, tmp_path):
    from radfusion.cli.demo import exercise_service
    from radfusion.contract import read_contract_from_onnx

    model = tmp_path / "model.onnx"
    site = federation / "sites" / "site-1"
    _radfusion(
        Path(sys.executable), "export", "--checkpoint", federation / "run" / "checkpoints" / "best.ckpt",
        "--cohort", site, "--out", model, "--no-register",
        env={"RADFUSION_CACHE_DIR": str(federation / "cache")},
    )  # fmt: skip
    report = json.loads(model.with_suffix(".export.json").read_text())
    assert report["onnx_max_abs_diff"] < 1e-4
    contract = read_contract_from_onnx(model)
    assert contract.provenance["training"] == "federated"
    assert contract.provenance["rounds"] == ROUNDS and contract.provenance["sites"] == 3
    service = exercise_service(model, site)
    assert service["service_requests_ok"] == service["service_requests_sent"] > 0
    assert service["service_max_abs_diff_vs_inprocess"] < 1e-4


def test_privacy_budget_grows_with_rounds_and_shrinks_with_noise():
    code = (
        "from radfusion.training.federated.privacy import epsilon as e; "
        "print(e(0.0, 3, 1e-5), e(1.0, 3, 1e-5), e(1.0, 12, 1e-5), e(2.0, 3, 1e-5))"
    )
    out = subprocess.run([str(FEDERATE_PYTHON), "-c", code], capture_output=True, text=True, check=True, timeout=120)
    none, base, longer, noisier = map(float, out.stdout.split())
    assert none == float("inf")
    assert 0 < noisier < base < longer < 100


def test_the_best_round_by_validation_is_kept_across_a_restart(tmp_path):
    """best.npz follows the highest validation score over the rounds, a later worse
    round leaves it, a restarted server (a new record over the same folder) keeps it, a
    round whose fit did not finish is not one, and a run asked for its last weights (or
    scored by another metric) keeps none."""
    code = f"""
import numpy as np
from pathlib import Path
from radfusion.training.federated.job import FederatedJob
from radfusion.training.federated.outcome import FederationRecord
out = Path({str(tmp_path)!r})
job = FederatedJob(configs=(), out=str(out))
record = FederationRecord(out, job)
record.monitor = "val_auroc"
for r, score in [(1, 0.6), (2, 0.8), (3, 0.7)]:
    record.save_round(r, [np.full(3, float(r))], {{}})
    record.evaluated(r, {{"val_auroc": score, "val_loss": 0.5}})
weights, r, score = record.chosen()
assert (r, score) == (2, 0.8) and np.array_equal(weights[0], np.full(3, 2.0)), (r, score)
again = FederationRecord(out, job)
again.monitor = "val_auroc"
again.save_round(4, [np.full(3, 4.0)], {{}})
again.evaluated(4, {{"val_auroc": float("nan")}})
assert again.chosen()[1] == 2 and again.resume_from()[1] == 4
again.evaluated(4, {{"val_auroc": 0.9}})
assert again.chosen()[1] == 4
again.evaluated(5, {{"val_auroc": 0.95}})  # round 5's fit never finished (SecAgg+ halted)
assert again.chosen()[1] == 4
again.monitor = "val_cindex"  # the folder's best was chosen by another metric
assert again.chosen() is None
again.monitor = None
assert again.chosen() is None
print("ok")
"""
    out = subprocess.run([str(FEDERATE_PYTHON), "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_with_dp_a_site_sends_its_noised_update_and_loss_only():
    """The DP mod as a SuperNode runs it on a train reply: the update is clipped to the
    clip norm and noised, and the norm before clipping (the site's own, un-noised)
    stays at the site: the reply's metrics are the training's."""
    code = """
import numpy as np
from flwr.app import Context, Message, Metadata, RecordDict
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from radfusion.training.federated.client_app import differential_privacy
from radfusion.training.federated.job import FederatedJob

job = FederatedJob(configs=(), out="x", dp_noise=0.01, dp_clip=1.0, secagg=False)
old = [np.zeros(4, np.float32), np.zeros((2, 2), np.float32)]
new = [np.full(4, 3.0, np.float32), np.full((2, 2), 3.0, np.float32)]  # an update of norm 8.5
ins = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(old), {}), keep_input=True)
# As the SuperNode hands it over: metadata set by the SuperLink.
metadata = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=1, reply_to_message_id="", group_id="1",
                    created_at=0.0, ttl=3600.0, message_type="train")
msg = Message(content=ins, metadata=metadata)
context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=job.run_config())

def fit(m, c):
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(new), 10, {"train_loss": 0.5})
    return Message(content=compat.fitres_to_recorddict(res, keep_input=True), reply_to=m)

res = compat.recorddict_to_fitres(differential_privacy(msg, context, fit).content, keep_input=True)
assert set(res.metrics) == {"train_loss"} and res.num_examples == 10, (res.metrics, res.num_examples)
update = np.concatenate([(s - o).ravel() for s, o in zip(parameters_to_ndarrays(res.parameters), old)])
assert abs(np.linalg.norm(update) - 1.0) < 0.1, np.linalg.norm(update)
clipped = np.concatenate([(n - o).ravel() for n, o in zip(new, old)]) / np.sqrt(8 * 9.0)
assert np.abs(update - clipped).max() > 1e-4, "no noise added"
print("ok")
"""
    out = subprocess.run([str(FEDERATE_PYTHON), "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
    # The norm stays at the site, in its log (Flower's logger prints the ClientApp's lines).
    assert "update norm 8.485 before clipping to 1" in out.stdout + out.stderr


def test_a_restarted_run_resumes_from_its_last_round(federation):
    """Submitting the finished 3-round run again with 4 rounds (as after a server crash,
    here without SecAgg+ and TLS to keep it short, and with FedProx) trains round 4 only,
    from round 3's weights. Last in this file: it changes the run the tests above read."""
    run = federation / "run"
    before = _received(run)
    sites = [f"--site=s{i}={federation / 'sites' / f'site-{i}'}" for i in (1, 2, 3)]
    configs = [a for c in CONFIG_FILES for a in ("--config", c)]
    _radfusion(
        FEDERATE_PYTHON, "federate", "simulate", *sites, *configs, "--rounds", ROUNDS + 1, "--out", run,
        "--no-secagg", "--insecure", "--strategy", "fedprox",
        env={"RADFUSION_CACHE_DIR": str(federation / "cache")}, timeout=900,
    )  # fmt: skip
    added = _received(run)[len(before) :]
    assert [r["round"] for r in added if r["kind"] == "fit"] == [ROUNDS + 1]
    provenance = json.loads((run / "federation.json").read_text())
    assert provenance["rounds"] == ROUNDS + 1 and provenance["strategy"] == "fedprox"
    assert [r["round"] for r in provenance["history"]] == [ROUNDS + 1]
    # Without SecAgg+ the server sees each site's own update: three different ones.
    (fit,) = [r for r in added if r["kind"] == "fit"]
    assert len({r["digest"] for r in fit["content"]}) == 3
