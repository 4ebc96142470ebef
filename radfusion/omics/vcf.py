"""VCF mutation calls (read with cyvcf2) -> gene-level mutation flags ``<GENE>_mut``.

Genes come from the variant's consequence annotation when the VCF has one (VEP's CSQ
or SnpEff's ANN INFO field): a gene counts when one of the variant's consequences in
it is non-silent (radfusion.omics.consequences). Without such a field a gene
annotation (BED/GTF) must be given, and every passing variant inside a gene's
interval counts, because without consequences silent calls cannot be told apart.

Only PASS (or unfiltered, ".") records count. A sample carries a variant when its
genotype holds a non-reference allele; at a multi-allelic site the variant's genes
are counted for a carrier of any alternate allele. Every sample named in a VCF header
is profiled (0 for genes without a call). A folder of VCFs (one per sample or
several samples each) is read file by file; a sample in two files is the union."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.errors import OmicsFormatError
from radfusion.omics.annotation import GeneAnnotation
from radfusion.omics.block import GeneBlock, feature_names
from radfusion.omics.consequences import is_non_silent_so

VCF_SUFFIXES = (".vcf", ".vcf.gz", ".bcf")
# INFO field -> (consequence field name, gene field name, their default positions).
_ANNOTATION_FIELDS = {"CSQ": ("Consequence", "SYMBOL", 1, 3), "ANN": ("Annotation", "Gene_Name", 1, 3)}


def vcf_files(path: Path | str) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.lower().endswith(VCF_SUFFIXES))
        if not files:
            raise OmicsFormatError(f"{path.name}: no VCF files (.vcf, .vcf.gz, .bcf) in the folder")
        return files
    if not path.exists():
        raise OmicsFormatError(f"{path.name}: no such VCF file or folder")
    return [path]


def read_vcf(
    path: Path | str,
    annotation: GeneAnnotation | None = None,
    genes: Sequence[str] | None = None,
) -> GeneBlock:
    """``path``: a VCF file or a folder of them. ``genes``: the panel to report (0
    where never mutated); default: every gene with a counted call, sorted."""
    carriers: dict[str, set[str]] = {}
    counts = {"records": 0, "filtered": 0, "silent_or_intergenic": 0}
    notes: list[str] = []
    files = vcf_files(path)
    for file in files:
        _read_one(file, annotation, carriers, counts, notes)
    found = sorted({g for hit in carriers.values() for g in hit})
    panel = list(genes) if genes is not None else found
    samples = sorted(carriers)
    flags = pd.DataFrame(0.0, index=pd.Index(samples, name="sample_id"), columns=panel)
    wanted = set(panel)
    for sample, hit in carriers.items():
        for gene in hit & wanted:
            flags.loc[sample, gene] = 1.0
    flags.columns = feature_names("mutation", panel)
    notes.insert(
        0,
        f"{counts['records']} records in {len(files)} file(s): {counts['filtered']} not PASS, "
        f"{counts['silent_or_intergenic']} silent or outside genes",
    )
    source = Path(path).name
    return GeneBlock("mutation", flags, source, notes)


def _read_one(
    file: Path,
    annotation: GeneAnnotation | None,
    carriers: dict[str, set[str]],
    counts: dict[str, int],
    notes: list[str],
) -> None:
    from cyvcf2 import VCF  # on use: a compiled htslib binding that most commands never need

    try:
        vcf = VCF(str(file), gts012=True)  # 0 hom-ref, 1 het, 2 hom-alt, 3 unknown
    except (OSError, RuntimeError) as exc:
        raise OmicsFormatError(f"{file.name}: not a readable VCF ({exc.__class__.__name__})") from exc
    try:
        samples = list(vcf.samples)
        if not samples:
            raise OmicsFormatError(f"{file.name}: the VCF has no sample columns")
        for sample in samples:
            if sample in carriers:
                notes.append(f"a sample appears in more than one VCF ({file.name}); its calls are united")
            carriers.setdefault(sample, set())
        field = _consequence_field(vcf)
        if field is None and annotation is None:
            raise OmicsFormatError(f"{file.name}: no CSQ/ANN consequence field; give a gene annotation (BED/GTF)")
        if field is None:
            notes.append(
                f"{file.name}: no consequence field, genes from the annotation's intervals "
                "(silent calls cannot be told apart)"
            )
        for variant in vcf:
            counts["records"] += 1
            if variant.FILTER is not None:  # cyvcf2: None means PASS or "."
                counts["filtered"] += 1
                continue
            genes = _genes_of(variant, field, annotation)
            if not genes:
                counts["silent_or_intergenic"] += 1
                continue
            gt = variant.gt_types
            for i in np.flatnonzero((gt == 1) | (gt == 2)):
                carriers[samples[i]] |= genes
    finally:
        vcf.close()


def _consequence_field(vcf) -> tuple[str, int, int] | None:
    """(INFO key, consequence position, gene position) from the header's Format text."""
    for key, (csq_name, gene_name, csq_at, gene_at) in _ANNOTATION_FIELDS.items():
        try:
            header = vcf.get_header_type(key)
        except KeyError:
            continue
        description = str(header.get("Description", ""))
        match = re.search(r"Format:\s*'?([^'\"]+)|'([^']+)'", description)
        if match:
            names = [n.strip() for n in (match.group(1) or match.group(2)).split("|")]
            csq_at = names.index(csq_name) if csq_name in names else csq_at
            gene_at = names.index(gene_name) if gene_name in names else gene_at
        return key, csq_at, gene_at
    return None


def _genes_of(variant, field: tuple[str, int, int] | None, annotation: GeneAnnotation | None) -> set[str]:
    if field is not None:
        key, csq_at, gene_at = field
        value = variant.INFO.get(key)
        if value is None:
            return set()
        genes = set()
        for entry in str(value).split(","):
            parts = entry.split("|")
            if len(parts) > max(csq_at, gene_at) and parts[gene_at] and is_non_silent_so(parts[csq_at]):
                genes.add(parts[gene_at])
        return genes
    assert annotation is not None
    return set(annotation.genes_at(variant.CHROM, variant.start))
