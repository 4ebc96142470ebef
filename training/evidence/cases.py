"""Held-out cases as tensors, and the model's scores for them.

Every analysis needs the same thing: the preprocessed inputs of one split of the
cohort (exactly as training saw them, through the data module) and the model's
positive-class log-odds. Collecting them once keeps the analyses consistent."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from radfusion.explain import log_odds


@dataclass
class Cases:
    """One split's inputs (batch axis first) with patient ids and labels."""

    patient_ids: list[str]
    image: torch.Tensor
    genomics: torch.Tensor
    clinical: torch.Tensor
    presence: torch.Tensor
    label: torch.Tensor
    files: list[list[str]]
    # Survival outcome per case (the data module's time and event columns; NaN time: unknown).
    time: torch.Tensor | None = None
    event: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.patient_ids)

    def subset(self, index) -> Cases:
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        pick = torch.as_tensor(index, dtype=torch.long)
        return Cases(
            [self.patient_ids[i] for i in index],
            self.image[pick],
            self.genomics[pick],
            self.clinical[pick],
            self.presence[pick],
            self.label[pick],
            [self.files[i] for i in index],
            None if self.time is None else self.time[pick],
            None if self.event is None else self.event[pick],
        )

    def has(self, net, modality: str) -> np.ndarray:
        """Which cases have ``modality`` present (and the model uses it)."""
        if not net.uses(modality) and modality != "genomics":
            return np.zeros(len(self), dtype=bool)
        names = net.modality_names
        if modality == "genomics":
            cols = [i for i, n in enumerate(names) if n in net.omics_sizes and net.uses(n)]
        else:
            cols = [names.index(modality)]
        return (self.presence[:, cols].sum(dim=1) > 0).numpy() if cols else np.zeros(len(self), dtype=bool)


def collect_cases(dm, part: str = "test") -> Cases:
    """Every case of a split, with presence limited to what the data says (the model's
    own unused modalities are zeroed by ``used_presence``)."""
    ids, images, genomics, clinical, presence, labels, times, events = [], [], [], [], [], [], [], []
    for batch in dm._loader(part, shuffle=False):
        ids += list(batch["patient_id"])
        images.append(batch["image"])
        genomics.append(batch["genomics"])
        clinical.append(batch["clinical"])
        presence.append(batch["presence"])
        labels.append(batch["label"])
        times.append(batch["time"])
        events.append(batch["event"])
    if not ids:
        raise ValueError(f"the {part} split holds no cases")
    files = {r["patient_id"]: r["image"] for r in dm.records[part]}
    return Cases(
        ids,
        torch.cat(images),
        torch.cat(genomics),
        torch.cat(clinical),
        torch.cat(presence),
        torch.cat(labels),
        [files[i] for i in ids],
        torch.cat(times),
        torch.cat(events),
    )


def used_presence(net, presence: torch.Tensor) -> torch.Tensor:
    """Presence limited to the modalities the model uses (as training fed it)."""
    return presence * torch.tensor(net.used_mask(), dtype=presence.dtype)


def positive_log_odds(logits: torch.Tensor) -> np.ndarray:
    """The positive (last) label's log-odds per row: radfusion.explain.log_odds, the
    one definition, on the logits converted to numpy."""
    return log_odds(logits.detach().cpu().numpy()).astype(np.float32)


def log_odds_torch(logits: torch.Tensor) -> torch.Tensor:
    """radfusion.explain.log_odds (last label, temperature 1) on a torch tensor, for
    the one caller that needs its gradient (Integrated Gradients): log p - log(1 - p)
    of the softmax, the same formula (tests/training/test_evidence_units.py checks
    they agree)."""
    log_p = torch.log_softmax(logits, dim=1)
    return log_p[:, -1] - torch.logsumexp(log_p[:, :-1], dim=1)


@torch.no_grad()
def predict_logits(
    net, cases: Cases, presence: torch.Tensor | None = None, clinical: torch.Tensor | None = None, batch_size: int = 64
) -> torch.Tensor:
    """Raw logits for every case, in batches; ``presence``/``clinical`` override the cases'."""
    net.eval()
    presence = used_presence(net, cases.presence if presence is None else presence)
    clinical = cases.clinical if clinical is None else clinical
    out = []
    for start in range(0, len(cases), batch_size):
        s = slice(start, start + batch_size)
        out.append(net(cases.image[s], cases.genomics[s], clinical[s], presence[s]))
    return torch.cat(out)


def clinical_frame(dm, patient_ids: list[str]) -> pd.DataFrame:
    """The cohort's clinical table rows (outcomes, sex, age, site) for these patients."""
    return dm._clinical_table().loc[patient_ids]
