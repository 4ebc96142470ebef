"""Copy-number segments (SEG) + gene annotation -> gene-level values ``<GENE>_cn``.

SEG is the tab-separated format of IGV, GISTIC and the GDC: one row per segment with
sample ID, chromosome, start, end, number of markers and the segment mean (a log2
ratio). Header names vary between producers; the usual spellings are accepted. SEG
coordinates are 1-based and inclusive.

A gene's value is the mean of the segment means that overlap it, weighted by the
number of bases each segment covers of the gene, so a gene cut by a breakpoint gets
the length-weighted average of its two sides. A gene no segment touches has no
value for that sample (NaN, reported); segments whose mean is not a number are left
out and counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.errors import OmicsFormatError
from radfusion.omics.annotation import GeneAnnotation, normalise_chrom
from radfusion.omics.block import GeneBlock, feature_names

# Canonical column -> accepted header spellings (compared lower-case).
_COLUMNS = {
    "sample": ("id", "sample", "sample_id", "gdc_aliquot", "tumor_sample_barcode"),
    "chrom": ("chrom", "chromosome", "chr"),
    "start": ("loc.start", "start", "start_position"),
    "end": ("loc.end", "end", "end_position"),
    "mean": ("seg.mean", "segment_mean", "log2", "seg_mean"),
}


def read_segments(path: Path | str) -> pd.DataFrame:
    """Columns sample, chrom (normalised), start (0-based), end (exclusive), mean."""
    path = Path(path)
    try:
        raw = pd.read_csv(path, sep="\t", comment="#", dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise OmicsFormatError(f"{path.name}: not a readable SEG file ({type(exc).__name__})") from exc
    lower = {c.strip().lower(): c for c in raw.columns}
    picked, missing = {}, []
    for name, spellings in _COLUMNS.items():
        found = next((lower[s] for s in spellings if s in lower), None)
        if found is None:
            missing.append(name)
        picked[name] = found
    if missing:
        raise OmicsFormatError(
            f"{path.name}: SEG columns missing: {', '.join(missing)} "
            "(expected ID, chrom, loc.start, loc.end, num.mark, seg.mean)"
        )
    seg = pd.DataFrame({name: raw[column] for name, column in picked.items()})
    try:
        seg["start"] = seg["start"].astype(np.int64) - 1
        seg["end"] = seg["end"].astype(np.int64)
    except ValueError as exc:
        raise OmicsFormatError(f"{path.name}: segment start/end must be integers") from exc
    seg["mean"] = pd.to_numeric(seg["mean"], errors="coerce")
    seg["sample"] = seg["sample"].str.strip()
    seg["chrom"] = seg["chrom"].map(normalise_chrom)
    if (seg["end"] <= seg["start"]).any():
        raise OmicsFormatError(
            f"{path.name}: {int((seg['end'] <= seg['start']).sum())} segment(s) end before they start"
        )
    return seg


def segments_to_genes(segments: pd.DataFrame, annotation: GeneAnnotation, source: str = "segments") -> GeneBlock:
    """The copy-number block: one row per sample, one column per annotated gene."""
    usable = segments[np.isfinite(segments["mean"].to_numpy(dtype=np.float64))]
    dropped = len(segments) - len(usable)
    genes = annotation.genes
    column_of = {g: i for i, g in enumerate(genes)}
    samples = sorted(segments["sample"].unique())
    out = np.full((len(samples), len(genes)), np.nan)
    by_chrom = annotation.by_chrom()
    row_of = {s: i for i, s in enumerate(samples)}
    for sample, sample_segs in usable.groupby("sample", sort=True):
        row = row_of[sample]
        for chrom, segs in sample_segs.groupby("chrom", sort=False):
            chrom_genes = by_chrom.get(chrom)
            if chrom_genes is None:
                continue
            out[row, [column_of[g] for g in chrom_genes["gene"]]] = _weighted_means(chrom_genes, segs)
    values = pd.DataFrame(out, index=pd.Index(samples, name="sample_id"), columns=feature_names("copy_number", genes))
    notes = [f"{len(segments)} segments for {len(samples)} samples, genes from {annotation.source}"]
    if dropped:
        notes.append(f"{dropped} segment(s) without a numeric mean left out")
    return GeneBlock("copy_number", values, source, notes)


def _weighted_means(genes: pd.DataFrame, segs: pd.DataFrame) -> np.ndarray:
    """Length-weighted mean of the overlapping segments per gene (NaN without overlap)."""
    g_start = genes["start"].to_numpy()[:, None]
    g_end = genes["end"].to_numpy()[:, None]
    s_start = segs["start"].to_numpy()[None, :]
    s_end = segs["end"].to_numpy()[None, :]
    overlap = np.clip(np.minimum(g_end, s_end) - np.maximum(g_start, s_start), 0, None).astype(np.float64)
    covered = overlap.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(covered > 0, overlap @ segs["mean"].to_numpy(dtype=np.float64) / covered, np.nan)
