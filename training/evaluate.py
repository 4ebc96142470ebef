"""`radfusion evaluate`: held-out (test split) metrics for one or more checkpoints,
overall and per modality-presence pattern, as JSON and a Markdown table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc

from training.checkpoints import load_datamodule, load_module

# Presence patterns forced at evaluation time: what a model gives when a hospital
# can supply only part of a case.
PATTERNS = {"observed": None, "image_only": (1.0, 0.0), "genomics_only": (0.0, 1.0)}


@torch.no_grad()
def predict_split(module, dm, part: str = "test", pattern: tuple[float, float] | None = None):
    probs, labels, masks = [], [], []
    for batch in dm._loader(part, shuffle=False):
        presence = module._presence(batch)
        if pattern is not None:
            presence = presence * torch.tensor(pattern)
        logits = module(batch["image"], batch["genomics"], presence)
        probs.append(torch.softmax(logits, dim=-1)[:, -1])
        labels.append(batch["label"])
        masks.append(presence)
    return torch.cat(probs), torch.cat(labels), torch.cat(masks)


def evaluate_checkpoint(checkpoint: Path) -> dict:
    module = load_module(checkpoint)
    dm = load_datamodule(checkpoint)
    result: dict = {"checkpoint": str(checkpoint), "modalities": list(module.hparams.modalities)}
    for name, pattern in PATTERNS.items():
        probs, labels, presence = predict_split(module, dm, "test", pattern)
        # Cases with nothing the model can use are excluded from that pattern.
        usable = presence.sum(dim=1) > 0
        if name == "observed":
            usable = torch.ones_like(usable)
        if usable.sum() < 2 or labels[usable].unique().numel() < 2:
            continue
        result[f"auroc_{name}"] = float(binary_auroc(probs[usable], labels[usable]))
        result[f"n_{name}"] = int(usable.sum())
    # NaN when the test split holds one class only (tiny cohorts): undefined, not 0.5.
    result["auroc"] = result.get("auroc_observed", float("nan"))
    return result


def evaluate(checkpoints: dict[str, Path], out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {name: evaluate_checkpoint(Path(path)) for name, path in checkpoints.items()}
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    (out_dir / "metrics.md").write_text(markdown_table(results))
    return results


def markdown_table(results: dict) -> str:
    lines = [
        "| model | modalities | test AUROC | AUROC image only | AUROC genomics only | n test |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        cells = [_fmt(r.get(k)) for k in ("auroc", "auroc_image_only", "auroc_genomics_only")]
        lines.append(f"| {name} | {'+'.join(r['modalities'])} | {' | '.join(cells)} | {r.get('n_observed', '')} |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"
