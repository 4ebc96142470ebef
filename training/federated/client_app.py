"""The Flower ClientApp a SuperNode runs for radfusion: the site's cohort and work
folder come from the SuperNode's own node config (`radfusion federate site`), the
model and the training from the run's config."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from flwr.app import Context, Message
from flwr.client import ClientApp
from flwr.client.mod import secaggplus_mod
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log as flwr_log
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from radfusion.training.federated.job import FederatedJob
from radfusion.training.federated.privacy import privatise
from radfusion.training.federated.secagg import check_secagg_range


def client_fn(context: Context):
    # Here, not at the top: Flower starts a process per message, and SecAgg+'s key
    # exchange messages never reach the client, so they need not load torch.
    from radfusion.training.federated.site import SiteClient

    job = FederatedJob.from_run_config(dict(context.run_config))
    node = context.node_config
    return SiteClient(job, Path(str(node["cohort"])), Path(str(node["work"]))).to_client()


def secagg_when_asked(msg: Message, context: Context, call_next):
    """SecAgg+ for runs whose server asks for it (its setup record), plain fit otherwise."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def differential_privacy(msg: Message, context: Context, call_next):
    """Clip the update and add noise (privacy.py) when the run asks for it. Inside
    SecAgg+: the noised update is what gets masked."""
    job = FederatedJob.from_run_config(dict(context.run_config))
    if not job.dp_noise or msg.metadata.message_type != "train":
        return call_next(msg, context)
    ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    res = compat.recorddict_to_fitres(reply.content, keep_input=True)
    old = parameters_to_ndarrays(ins.parameters)
    rng = np.random.default_rng()  # fresh OS entropy: noise that a seed could replay protects nothing
    noised, norm = privatise(parameters_to_ndarrays(res.parameters), old, job.dp_clip, job.dp_noise, rng)
    if job.secagg:
        check_secagg_range(noised, job.secagg_clip)
    res.parameters = ndarrays_to_parameters(noised)
    # The norm before clipping is the site's own: sent, un-noised, it would spend privacy
    # the budget does not count. Flower's logger: the one its ClientApp process prints.
    flwr_log(logging.INFO, "update norm %.4g before clipping to %.4g", norm, job.dp_clip)
    reply.content = compat.fitres_to_recorddict(res, keep_input=True)
    return reply


app = ClientApp(client_fn=client_fn, mods=[secagg_when_asked, differential_privacy])
