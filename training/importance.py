"""Which input features move the model most, written into the contract at export
(ModelContract.feature_importance, served by GET /contract): a lab that sends a
partial panel checks that it covers them, since a feature it lacks is imputed with
the training median.

Integrated Gradients (captum, as training.evidence.attribution uses it) on a bounded
subset of the validation split, over the omics and the clinical inputs together. The
path starts at the training mean (z = 0) for genes and numeric covariates, at "not
missing" for missingness indicators and, for a categorical covariate, at its levels
frequencies among the attributed cases (an all-zero row would be "no level at all",
which the model never saw, and would credit every covariate with that jump; equal
weights would credit a covariate every case shares).
What is attributed is the task's score: the positive-class log-odds (two classes),
each class's log-odds (more), each label's logit (multi-label), the risk (survival). A
clinical covariate's encoded columns are summed per case and score (a lab supplies a
covariate, not a level); a feature's importance is the mean over the cases that have
its block of its |attribution| summed over the scores."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from radfusion.contract import CLINICAL, ClinicalSpec, OmicsBlock
from radfusion.training.evidence.cases import Cases, log_odds_torch, used_presence

# Validation cases attributed at export: enough for a stable top list of a few dozen
# features, few enough that an image model's forward passes stay a small part of export.
DEFAULT_CASES = 48
DEFAULT_TOP = 30
N_STEPS = 24


@dataclass
class Importance:
    """The contract's list (most important first) and how it was found."""

    features: list[dict] = field(default_factory=list)
    cases: int = 0
    split: str = ""
    seconds: float = 0.0

    def report(self) -> dict:
        """What the export report (model.export.json) says about it."""
        return {
            "method": "integrated_gradients",
            "split": self.split,
            "cases": self.cases,
            "features": len(self.features),
            "seconds": round(self.seconds, 2),
        }


def export_importance(net, task_kind: str, dm, max_cases: int = DEFAULT_CASES, top: int = DEFAULT_TOP) -> Importance:
    """Importance of ``net``'s omics and clinical inputs on at most ``max_cases`` cases
    of the data module's validation split (its training split when it has no validation
    part). An empty list when the model uses neither input or no case has them."""
    began = time.perf_counter()
    split = next((part for part in ("val", "train") if len(dm.datasets.get(part, ()))), "")
    attributable = any(net.uses(b.name) for b in dm.omics) or (dm.clinical is not None and net.uses(CLINICAL))
    if not split or max_cases <= 0 or not attributable:
        return Importance(split=split)
    cases = first_cases(dm, split, max_cases)
    features = feature_importance(net, task_kind, cases, dm.omics, dm.clinical, top)
    return Importance(features, len(cases), split, time.perf_counter() - began)


def first_cases(dm, part: str, limit: int) -> Cases:
    """The first ``limit`` cases of a split, as the data module gives them; the rest of
    the split's images are not read (training.evidence.cases.collect_cases reads them all)."""
    from radfusion.training.data import collate

    dataset = dm.datasets[part]
    batch = collate([dataset[i] for i in range(min(limit, len(dataset)))])
    records = dm.records[part]
    return Cases(
        list(batch["patient_id"]),
        batch["image"],
        batch["genomics"].float(),
        batch["clinical"].float(),
        batch["presence"].float(),
        batch["label"],
        [records[i]["image"] for i in range(len(batch["patient_id"]))],
    )


def feature_importance(
    net,
    task_kind: str,
    cases: Cases,
    omics: list[OmicsBlock],
    clinical: ClinicalSpec | None,
    top: int = DEFAULT_TOP,
    n_steps: int = N_STEPS,
) -> list[dict]:
    """[{"feature", "block", "importance"}] of the ``top`` features, most important first."""
    omics_used = [b for b in omics if net.uses(b.name)]
    clinical_used = clinical is not None and net.uses(CLINICAL)
    if not omics_used and not clinical_used:
        return []
    from captum.attr import IntegratedGradients  # only here: importing captum is slow

    net.eval()
    presence = used_presence(net, cases.presence)
    attributed = [name for name, used in (("genomics", bool(omics_used)), (CLINICAL, clinical_used)) if used]
    forward = _Scores(net, _scores(net, task_kind), attributed)
    inputs = tuple(getattr(cases, name).clone().requires_grad_(True) for name in attributed)
    baselines = tuple(
        _clinical_baseline(clinical, x) if name == CLINICAL and clinical is not None else torch.zeros_like(x)
        for name, x in zip(attributed, inputs, strict=True)
    )
    # Per case, what each attributed input's columns are grouped into: genes stay
    # themselves, a covariate's columns are summed.
    groups = {
        name: _covariate_groups(clinical) if name == CLINICAL and clinical is not None else None for name in attributed
    }
    total: dict[str, torch.Tensor] = {}
    ig = IntegratedGradients(forward)
    for target in range(forward.n_scores):
        found = ig.attribute(
            inputs,
            baselines=baselines,
            target=target,
            additional_forward_args=(cases.image, cases.genomics, cases.clinical, presence),
            n_steps=n_steps,
            internal_batch_size=max(len(cases), 1) * 4,
        )
        for name, attribution in zip(attributed, found, strict=True):
            grouped = attribution.detach() if groups[name] is None else attribution.detach() @ groups[name]
            total[name] = total.get(name, 0) + grouped.abs()
    rows = []
    if omics_used:
        rows += _omics_rows(omics, omics_used, total["genomics"], presence, net.modality_names)
    if clinical_used:
        assert clinical is not None
        has = presence[:, net.modality_names.index(CLINICAL)] > 0
        if has.any():
            importance = total[CLINICAL][has].mean(dim=0).tolist()
            rows += [_row(name, CLINICAL, v) for name, v in zip(clinical.covariates, importance, strict=True)]
    rows.sort(key=lambda row: row["importance"], reverse=True)
    return rows[:top]


class _Scores(torch.nn.Module):
    """The attributed inputs first (``attributed``: "genomics" and/or "clinical"), then
    the fixed ones (image, genomics, clinical, presence: the cases' own, the attributed
    ones among them unused). Returns (cases, scores)."""

    def __init__(self, net, scores: Callable[[torch.Tensor], torch.Tensor], attributed: list[str]):
        super().__init__()
        self.net = net
        self.scores = scores
        self.attributed = attributed
        self.n_scores = int(scores(torch.zeros(2, net.n_outputs)).shape[1])

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        given = dict(zip(self.attributed, args, strict=False))
        image, genomics, clinical, presence = args[len(self.attributed) :]
        genomics, clinical = given.get("genomics", genomics), given.get(CLINICAL, clinical)
        return self.scores(self.net(image, genomics, clinical, presence))


def _scores(net, task_kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The task's scores of the raw outputs, one column each."""
    if task_kind == "survival_cox":
        return lambda out: out[:, :1]
    if task_kind == "survival_discrete":
        from radfusion.training.tasks import discrete_risk

        return lambda out: discrete_risk(out)[:, None]
    if task_kind == "multilabel":
        return lambda out: out
    if net.n_outputs == 2:
        return lambda out: log_odds_torch(out)[:, None]
    return lambda out: torch.stack([_class_log_odds(out, k) for k in range(out.shape[1])], dim=1)


def _class_log_odds(logits: torch.Tensor, k: int) -> torch.Tensor:
    """log p_k - log(1 - p_k) of the softmax (log_odds_torch for class k)."""
    log_p = torch.log_softmax(logits, dim=1)
    others = torch.cat([log_p[:, :k], log_p[:, k + 1 :]], dim=1)
    return log_p[:, k] - torch.logsumexp(others, dim=1)


def _omics_rows(
    omics: list[OmicsBlock], used: list[OmicsBlock], attributions: torch.Tensor, presence, names: list[str]
) -> list[dict]:
    rows, offset = [], 0
    used_names = {b.name for b in used}
    for block in omics:
        width = len(block.features)
        if block.name in used_names:
            has = presence[:, names.index(block.name)] > 0
            if has.any():
                mean = attributions[has, offset : offset + width].mean(dim=0)
                rows += [_row(f, block.name, v) for f, v in zip(block.features, mean.tolist(), strict=True)]
        offset += width
    return rows


def _column_covariates(spec: ClinicalSpec) -> list[str]:
    """The covariate of each encoded column, in ClinicalSpec.features order: the numeric
    ones, their missingness indicators, then each categorical one's levels."""
    owners = [*spec.numeric, *spec.indicators]
    for name, levels in spec.categorical.items():
        owners += [name] * len(levels)
    assert len(owners) == len(spec.features)
    return owners


def _covariate_groups(spec: ClinicalSpec) -> torch.Tensor:
    """(encoded columns, covariates) 0/1: which covariate each column belongs to, the
    covariates in ClinicalSpec.covariates order."""
    owners = _column_covariates(spec)
    return torch.tensor([[float(owner == name) for name in spec.covariates] for owner in owners])


def _clinical_baseline(spec: ClinicalSpec, like: torch.Tensor) -> torch.Tensor:
    """Where the clinical path starts: z = 0 (the training mean), indicators 0, and
    each categorical covariate's levels at their frequencies in the attributed cases
    (a covariate every case shares then moves nothing and ranks last)."""
    start = len(spec.numeric) + len(spec.indicators)
    row = torch.zeros(like.shape[-1], dtype=like.dtype)
    row[start:] = like[:, start:].mean(dim=0) if len(like) else 0.0
    return row.expand_as(like).contiguous()


def _row(feature: str, block: str, importance: float) -> dict:
    # Four significant digits: a ranking, not a measurement, and a short contract.
    return {"feature": feature, "block": block, "importance": float(f"{importance:.4g}")}
