"""GeneBlock: one omics block read from one source, samples as rows. The report of
non-finite values (which samples, which genes) is computed here once for every reader."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from radfusion.genomics import BLOCK_SUFFIXES, EXPRESSION, ID_COLUMN

SUFFIX_OF_BLOCK = {EXPRESSION: "", **{block: suffix for suffix, block in BLOCK_SUFFIXES.items()}}


@dataclass
class GeneBlock:
    """``values``: index = sample IDs (str), columns = features named for the block
    (``TP53`` / ``TP53_mut`` / ``TP53_cn``), float64. ``notes`` record what the reader
    decided (orientation, transform, ignored columns) so the manifest report shows it."""

    name: str
    values: pd.DataFrame
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def genes(self) -> list[str]:
        suffix = SUFFIX_OF_BLOCK[self.name]
        return [c[: len(c) - len(suffix)] if suffix else c for c in self.values.columns]

    def nonfinite(self) -> list[dict]:
        """One entry per sample with NaN or inf values: the sample and the genes."""
        return nonfinite_cells(self.values, "sample_id")


def feature_names(block: str, genes: list[str]) -> list[str]:
    return [f"{g}{SUFFIX_OF_BLOCK[block]}" for g in genes]


def nonfinite_cells(values: pd.DataFrame, id_name: str) -> list[dict]:
    matrix = values.to_numpy(dtype=np.float64)
    nan, inf = np.isnan(matrix), np.isinf(matrix)
    out = []
    for i in np.flatnonzero((nan | inf).any(axis=1)):
        entry: dict[str, str | list[str]] = {id_name: str(values.index[i])}
        if nan[i].any():
            entry["nan"] = [str(c) for c in values.columns[nan[i]]]
        if inf[i].any():
            entry["inf"] = [str(c) for c in values.columns[inf[i]]]
        out.append(entry)
    return out


def join_patient_blocks(blocks: list[pd.DataFrame]) -> pd.DataFrame:
    """Patient-indexed blocks -> the wide genomics table (outer join; a patient without
    a block has NaN across it, which preprocess reads as "block absent"). Infinite
    values become NaN: they were reported when read, and a model cannot use them."""
    if not blocks:
        return pd.DataFrame(index=pd.Index([], name=ID_COLUMN, dtype=str))
    seen: set[str] = set()
    for block in blocks:
        clash = seen & set(block.columns)
        if clash:
            raise ValueError(f"feature columns in two blocks: {sorted(clash)[:10]}")
        seen |= set(block.columns)
    table = pd.concat(blocks, axis=1, join="outer", sort=True)
    table.index.name = ID_COLUMN
    return table.replace([np.inf, -np.inf], np.nan)
