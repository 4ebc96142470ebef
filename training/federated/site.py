"""One hospital's side of a federated run: a Flower client over radfusion's own data
module and FusionModule, built from the federation's configs and the site's cohort.

What it sends: the moments of its training part (first round), its model weights
after local training (each round), the number of training patients and validation
metrics. Never rows, identifiers or paths."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from flwr.client import NumPyClient
from lightning.pytorch.callbacks import Callback

from radfusion.pooled_policy import site_moments
from radfusion.training.cv.fold import build_cli
from radfusion.training.federated.job import FederatedJob
from radfusion.training.federated.secagg import check_secagg_range
from radfusion.training.federated.weights import get_weights, set_weights

log = logging.getLogger(__name__)


class ProximalTerm(Callback):
    """FedProx: the gradient of mu/2 * ||w - w_global||^2 added after each backward pass
    (the same as adding the term to the loss), pulling local steps toward the round's
    global weights."""

    def __init__(self, mu: float, module: torch.nn.Module):
        self.mu = mu
        self.anchor = [p.detach().clone() for p in module.parameters()]

    def on_after_backward(self, trainer, pl_module) -> None:
        for p, anchor in zip(pl_module.parameters(), self.anchor, strict=True):
            if p.grad is not None:
                p.grad.add_(p.detach() - anchor, alpha=self.mu)


@contextmanager
def errors_without_paths(*folders: Path) -> Iterator[None]:
    """A failure's message goes to the server: the site's folders (which may name a
    patient or a department) are replaced there, the full error stays in the site's log."""
    try:
        yield
    except Exception as exc:
        log.exception("this site's part of the round failed")
        text = f"{type(exc).__name__}: {exc}"
        for folder in folders:
            text = text.replace(str(folder.resolve()), "<site folder>").replace(str(folder), "<site folder>")
        raise RuntimeError(text) from None


class SiteClient(NumPyClient):
    def __init__(self, job: FederatedJob, cohort: Path, work: Path):
        self.job, self.cohort, self.work = job, cohort, work
        work.mkdir(parents=True, exist_ok=True)

    def get_properties(self, config):
        with errors_without_paths(self.cohort, self.work):
            return self._moments()

    def fit(self, parameters, config):
        with errors_without_paths(self.cohort, self.work):
            return self._fit(parameters, config)

    def evaluate(self, parameters, config):
        with errors_without_paths(self.cohort, self.work):
            return self._evaluate(parameters, config)

    def _cli(self, policy: str | None, seed: int):
        args = [*self.job.cli_configs(), "--data.cohort_dir", str(self.cohort)]
        args += ["--trainer.default_root_dir", str(self.work), "--seed_everything", str(seed)]
        if policy is not None:
            path = self.work / "policy.json"
            path.write_text(policy)
            args += ["--data.policy", str(path)]
        return build_cli(args)

    def _moments(self):
        """The first round: the moments of this site's training part."""
        dm = self._cli(None, self.job.seed).datamodule
        fitted = dm._fitted
        train = fitted.assignment.index[fitted.assignment == "train"]
        table = fitted.table.loc[train]
        rows = pd.concat([table, dm.genomics.reindex(train)], axis=1)
        h = dm.hparams
        moments = site_moments(
            rows, dm.block_features, list(h.clinical_numeric), list(h.clinical_categorical), h.target
        )
        has_image = (
            table["files"].map(lambda f: isinstance(f, (list, np.ndarray)) and len(f) > 0) if "files" in table else []
        )
        moments["coverage"] = {"train": len(train), "image": int(np.sum(has_image))}
        moments["cohort_hash"] = dm.cohort_hash
        # The same configs give the same settings everywhere; the server checks it.
        moments["settings"] = {
            k: h[k] for k in ("target", "labels", "max_imputed_fraction", "min_level_count", "treatment")
        }
        moments["settings"]["labels"] = list(h.labels)
        return {"moments": json.dumps(moments)}

    def _module(self, parameters, config):
        cli = self._cli(str(config["policy"]), self.job.seed + int(config.get("server_round", 0)))
        set_weights(cli.model, parameters)
        return cli

    def _fit(self, parameters, config):
        cli = self._module(parameters, config)
        module, dm = cli.model, cli.datamodule
        callbacks = [ProximalTerm(float(config["proximal_mu"]), module)] if float(config.get("proximal_mu", 0)) else []
        trainer = L.Trainer(
            max_epochs=self.job.local_epochs,
            accelerator=cli.trainer.accelerator,
            precision=cli.trainer.precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            callbacks=callbacks,
            default_root_dir=str(self.work),
        )
        trainer.fit(module, datamodule=dm)
        weights = get_weights(module)
        if self.job.secagg and not self.job.dp_noise:
            check_secagg_range(weights, self.job.secagg_clip)
        loss = trainer.callback_metrics.get("train/loss")
        metrics = {"train_loss": float(loss)} if loss is not None else {}
        return weights, len(dm.records["train"]), metrics

    def _evaluate(self, parameters, config):
        """The global model on this site's validation part: loss and the task's metric."""
        cli = self._module(parameters, config)
        module, dm = cli.model, cli.datamodule
        trainer = L.Trainer(
            logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator=cli.trainer.accelerator
        )
        (results,) = trainer.validate(module, datamodule=dm, verbose=False)
        loss = float(results.get("val/loss", np.nan))
        metrics = {k.replace("/", "_"): float(v) for k, v in results.items() if np.isfinite(float(v))}
        return (loss if np.isfinite(loss) else 0.0), len(dm.records["val"]), metrics
