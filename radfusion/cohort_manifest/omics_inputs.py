"""The cohort's omics files -> patient-indexed blocks, with what each step reported
(reader notes, non-finite values, unmapped samples, patients with several samples)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from radfusion.omics import (
    GeneBlock,
    PatientBlock,
    map_to_patients,
    read_expression,
    read_gene_annotation,
    read_maf,
    read_segments,
    read_vcf,
    segments_to_genes,
)


@dataclass
class OmicsSources:
    """Which omics files a cohort has; all optional. ``genes``: the BED/GTF gene
    annotation that copy-number segments (and VCFs without consequences) need."""

    expression: Path | None = None
    expression_scale: str = "log"
    expression_orientation: str = "auto"
    maf: Path | None = None
    vcf: Path | None = None
    cnv: Path | None = None
    genes: Path | None = None

    def __post_init__(self) -> None:
        if self.maf is not None and self.vcf is not None:
            raise ValueError("give mutation calls as a MAF or as VCFs, not both")
        if self.cnv is not None and self.genes is None:
            raise ValueError("copy-number segments need a gene annotation (--genes BED/GTF)")


def read_blocks(sources: OmicsSources, sample_map: pd.DataFrame) -> list[GeneBlock]:
    annotation = read_gene_annotation(sources.genes) if sources.genes is not None else None
    blocks = []
    if sources.expression is not None:
        blocks.append(
            read_expression(
                sources.expression,
                sources.expression_scale,
                sources.expression_orientation,
                sample_ids=set(sample_map["sample_id"]),
            )
        )
    if sources.maf is not None:
        blocks.append(read_maf(sources.maf))
    if sources.vcf is not None:
        blocks.append(read_vcf(sources.vcf, annotation))
    if sources.cnv is not None:
        assert annotation is not None
        blocks.append(segments_to_genes(read_segments(sources.cnv), annotation, Path(sources.cnv).name))
    return blocks


def block_report(block: GeneBlock, mapped: PatientBlock) -> dict:
    """JSON-ready: the block's source and notes, counts, and the detail lists."""
    patient_of = {s: p for p, s in mapped.sample_of.items()}
    nonfinite = [{**entry, "patient_id": patient_of.get(entry["sample_id"])} for entry in block.nonfinite()]
    return {
        "source": block.source,
        "notes": block.notes,
        "features": int(block.values.shape[1]),
        "samples": int(block.values.shape[0]),
        "patients": len(mapped.sample_of),
        "unmapped_samples": mapped.unmapped,
        "samples_with_nonfinite_values": nonfinite,
        "duplicates": {p: {"kept": s[0], "dropped": s[1:]} for p, s in mapped.duplicates.items()},
    }


def map_blocks(blocks: list[GeneBlock], sample_map: pd.DataFrame) -> list[PatientBlock]:
    return [map_to_patients(block, sample_map) for block in blocks]
