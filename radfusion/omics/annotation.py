"""Gene coordinates, given as input (a BED file or a GTF/GFF), never guessed: mutation
positions and copy-number segments become gene-level values through them.

Coordinates are held 0-based half-open (BED's convention); GTF's 1-based inclusive
starts are shifted on reading. Chromosome names are compared without a "chr" prefix,
so "chr7" in one file matches "7" in another."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.errors import OmicsFormatError

_GTF_NAME = re.compile(r'gene_name "([^"]+)"|gene_name=([^;]+)')


def normalise_chrom(name: object) -> str:
    text = str(name).strip()
    return text[3:] if text.lower().startswith("chr") else text


@dataclass
class GeneAnnotation:
    """One interval per gene: columns chrom (normalised), start, end, gene."""

    table: pd.DataFrame
    source: str
    _arrays: dict | None = field(default=None, repr=False, compare=False)

    @property
    def genes(self) -> list[str]:
        return self.table["gene"].tolist()

    def by_chrom(self) -> dict[str, pd.DataFrame]:
        # Not dict(groupby): a GroupBy has a .keys attribute, so dict() would take it for a mapping.
        return {c: g for c, g in self.table.groupby("chrom", sort=False)}  # noqa: C416

    def genes_at(self, chrom: str, position: int) -> list[str]:
        """Genes whose interval holds the 0-based ``position`` (one chromosome's
        arrays are searched, not the whole table: this runs once per variant)."""
        if self._arrays is None:
            self._arrays = {
                c: (g["start"].to_numpy(), g["end"].to_numpy(), g["gene"].to_numpy())
                for c, g in self.by_chrom().items()
            }
        arrays = self._arrays.get(normalise_chrom(chrom))
        if arrays is None:
            return []
        starts, ends, names = arrays
        return names[(starts <= position) & (ends > position)].tolist()


def read_gene_annotation(path: Path | str) -> GeneAnnotation:
    """BED (chrom, start, end, name, ...) or GTF/GFF (records of type "gene" with a
    gene_name attribute). A gene listed twice keeps its first interval."""
    path = Path(path)
    name = path.name.lower().removesuffix(".gz")
    table = _read_gtf(path) if name.endswith((".gtf", ".gff", ".gff3")) else _read_bed(path)
    table["chrom"] = table["chrom"].map(normalise_chrom)
    bad = ~(table["end"] > table["start"]) | (table["start"] < 0)
    if bad.any():
        raise OmicsFormatError(f"{path.name}: {int(bad.sum())} gene interval(s) with end <= start or start < 0")
    table = table.drop_duplicates("gene", keep="first").reset_index(drop=True)
    if table.empty:
        raise OmicsFormatError(f"{path.name}: no gene intervals")
    return GeneAnnotation(table[["chrom", "start", "end", "gene"]], path.name)


def _read_bed(path: Path) -> pd.DataFrame:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 4:
                raise OmicsFormatError(
                    f"{path.name} line {number}: a BED gene annotation needs chrom, start, end, name"
                )
            try:
                rows.append((parts[0], int(parts[1]), int(parts[2]), parts[3].strip()))
            except ValueError as exc:
                raise OmicsFormatError(f"{path.name} line {number}: start and end must be integers") from exc
    return pd.DataFrame(rows, columns=["chrom", "start", "end", "gene"]).astype({"start": np.int64, "end": np.int64})


def _read_gtf(path: Path) -> pd.DataFrame:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.startswith("#") or not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 9:
                raise OmicsFormatError(f"{path.name} line {number}: a GTF/GFF record has 9 tab-separated fields")
            if parts[2] != "gene":
                continue
            match = _GTF_NAME.search(parts[8])
            if match is None:
                continue
            gene = (match.group(1) or match.group(2)).strip()
            rows.append((parts[0], int(parts[3]) - 1, int(parts[4]), gene))
    return pd.DataFrame(rows, columns=["chrom", "start", "end", "gene"]).astype({"start": np.int64, "end": np.int64})
