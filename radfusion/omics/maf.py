"""MAF (Mutation Annotation Format) -> gene-level mutation flags ``<GENE>_mut``.

A gene is mutated in a sample when the sample has at least one non-silent call in it
(radfusion.omics.consequences) that passed filtering (a FILTER column, when present,
must be PASS or empty). Every sample with any row in the MAF, silent calls included,
counts as profiled, with 0 for genes without a call: a MAF lists calls, not samples,
and an exome always carries some silent calls."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.errors import OmicsFormatError
from radfusion.omics.block import GeneBlock, feature_names
from radfusion.omics.consequences import NON_SILENT_MAF

REQUIRED = ("Hugo_Symbol", "Variant_Classification", "Tumor_Sample_Barcode")
_PASSING = {"PASS", ".", ""}


def read_maf(path: Path | str, genes: Sequence[str] | None = None) -> GeneBlock:
    """``genes``: the panel to report (0 where never mutated); default: every gene
    with a non-silent call in the file, sorted."""
    path = Path(path)
    calls = _read_calls(path)
    samples = sorted(calls["Tumor_Sample_Barcode"].unique())
    kept = calls[calls["Variant_Classification"].isin(NON_SILENT_MAF)]
    kept = kept[~kept["Hugo_Symbol"].isin(["", "Unknown"])]
    if "FILTER" in kept.columns:
        kept = kept[kept["FILTER"].fillna("").isin(_PASSING)]
    panel = list(genes) if genes is not None else sorted(kept["Hugo_Symbol"].unique())
    flags = pd.DataFrame(0.0, index=pd.Index(samples, name="sample_id"), columns=panel)
    hits = kept[kept["Hugo_Symbol"].isin(panel)][["Tumor_Sample_Barcode", "Hugo_Symbol"]].drop_duplicates()
    for sample, gene in hits.itertuples(index=False):
        flags.loc[sample, gene] = 1.0
    flags.columns = feature_names("mutation", panel)
    notes = [
        f"{len(calls)} calls, {len(calls) - len(kept)} silent or filtered ignored",
        f"{len(samples)} profiled samples (any call in the MAF)",
    ]
    return GeneBlock("mutation", flags.astype(np.float64), path.name, notes)


def _read_calls(path: Path) -> pd.DataFrame:
    skip = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.startswith("#"):
                break
            skip += 1  # "#version 2.4" and other comment lines precede the header
    try:
        calls = pd.read_csv(path, sep="\t", skiprows=skip, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise OmicsFormatError(f"{path.name}: not a readable MAF ({type(exc).__name__})") from exc
    missing = [c for c in REQUIRED if c not in calls.columns]
    if missing:
        raise OmicsFormatError(f"{path.name}: MAF columns missing: {', '.join(missing)}")
    calls["Tumor_Sample_Barcode"] = calls["Tumor_Sample_Barcode"].str.strip()
    calls["Hugo_Symbol"] = calls["Hugo_Symbol"].str.strip()
    if (calls["Tumor_Sample_Barcode"] == "").any():
        raise OmicsFormatError(f"{path.name}: calls without Tumor_Sample_Barcode")
    return calls
