"""Mutation calls -> <GENE>_mut flags: VCFs written as plain text (read by cyvcf2) with
several samples, failed filters and silent calls; a VCF without consequences resolved
through a BED gene annotation; a MAF with silent, filtered and unknown-gene rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from radfusion.errors import OmicsFormatError
from radfusion.omics import read_gene_annotation, read_maf, read_vcf

HEADER = """##fileformat=VCFv4.2
##contig=<ID=chr7,length=160000000>
##contig=<ID=chr12,length=140000000>
##contig=<ID=chr17,length=90000000>
##FILTER=<ID=PASS,Description="All filters passed">
##FILTER=<ID=LowQual,Description="Low quality">
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
"""
CSQ = (
    '##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. '
    'Format: Allele|Consequence|IMPACT|SYMBOL|Gene">\n'
)
COLUMNS = "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t{samples}\n"

# EGFR missense in T1 and T2 (T3 hom-ref); KRAS stop_gained in T3 but LowQual;
# TP53 synonymous in T1 (silent); TP53 frameshift in T2 (PASS written as "."); a
# splice-region-only call in BRAF (not protein-altering) in T3.
CSQ_RECORDS = [
    ("chr7", 55191822, "T", "G", "PASS", "CSQ=G|missense_variant|MODERATE|EGFR|ENSG00000146648", "0/1", "0/1", "0/0"),
    ("chr12", 25245350, "C", "A", "LowQual", "CSQ=A|stop_gained|HIGH|KRAS|ENSG00000133703", "0/0", "0/0", "0/1"),
    ("chr17", 7675088, "C", "T", "PASS", "CSQ=T|synonymous_variant|LOW|TP53|ENSG00000141510", "0/1", "0/0", "0/0"),
    (
        "chr17",
        7674220,
        "CA",
        "C",
        ".",
        "CSQ=-|frameshift_variant&splice_region_variant|HIGH|TP53|ENSG00000141510",
        "0/0",
        "1/1",
        "./.",
    ),
    (
        "chr7",
        140753336,
        "A",
        "T",
        "PASS",
        "CSQ=T|splice_region_variant&intron_variant|LOW|BRAF|ENSG00000157764",
        "0/0",
        "0/0",
        "0/1",
    ),
]


def write_vcf(path: Path, samples: list[str], records: list[tuple], annotated: bool = True) -> Path:
    lines = [HEADER, CSQ if annotated else "", COLUMNS.format(samples="\t".join(samples))]
    for chrom, pos, ref, alt, filt, info, *gts in records:
        lines.append(
            f"{chrom}\t{pos}\t.\t{ref}\t{alt}\t50\t{filt}\t{info if annotated else '.'}\tGT\t" + "\t".join(gts) + "\n"
        )
    path.write_text("".join(lines))
    return path


def test_vcf_with_csq_counts_passing_non_silent_calls_per_sample(tmp_path: Path) -> None:
    block = read_vcf(write_vcf(tmp_path / "cohort.vcf", ["T1", "T2", "T3"], CSQ_RECORDS))
    assert block.name == "mutation"
    assert list(block.values.index) == ["T1", "T2", "T3"]
    # KRAS (LowQual), the synonymous TP53 call and the splice-region BRAF call count for nothing.
    assert list(block.values.columns) == ["EGFR_mut", "TP53_mut"]
    assert block.values.to_dict("index") == {
        "T1": {"EGFR_mut": 1.0, "TP53_mut": 0.0},
        "T2": {"EGFR_mut": 1.0, "TP53_mut": 1.0},
        "T3": {"EGFR_mut": 0.0, "TP53_mut": 0.0},
    }
    assert "5 records in 1 file(s): 1 not PASS, 2 silent or outside genes" in block.notes[0]


def test_vcf_folder_with_a_panel_reports_every_panel_gene(tmp_path: Path) -> None:
    folder = tmp_path / "vcfs"
    folder.mkdir()
    write_vcf(folder / "a.vcf", ["T1", "T2"], [r[:6] + r[6:8] for r in CSQ_RECORDS])
    write_vcf(folder / "b.vcf", ["T3"], [r[:6] + r[8:] for r in CSQ_RECORDS])
    (folder / "notes.txt").write_text("not a VCF")
    block = read_vcf(folder, genes=["TP53", "KRAS", "EGFR", "BRAF"])
    assert list(block.values.columns) == ["TP53_mut", "KRAS_mut", "EGFR_mut", "BRAF_mut"]
    assert block.values.loc["T2"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert block.values.loc["T3"].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_vcf_without_consequences_uses_the_gene_annotation(tmp_path: Path) -> None:
    bed = tmp_path / "genes.bed"
    # EGFR holds 55191822 (0-based 55191821); TP53 ends just before 7675088 (half-open).
    bed.write_text("chr7\t55019016\t55211628\tEGFR\n17\t7661778\t7675087\tTP53\nchr12\t25205245\t25250929\tKRAS\n")
    vcf = write_vcf(tmp_path / "plain.vcf", ["T1", "T2", "T3"], CSQ_RECORDS, annotated=False)
    with pytest.raises(OmicsFormatError, match="no CSQ/ANN consequence field"):
        read_vcf(vcf)
    block = read_vcf(vcf, annotation=read_gene_annotation(bed))
    assert block.values.to_dict("index") == {
        "T1": {"EGFR_mut": 1.0, "TP53_mut": 0.0},  # the TP53 call at 7675088 lies outside the interval
        "T2": {"EGFR_mut": 1.0, "TP53_mut": 1.0},
        "T3": {"EGFR_mut": 0.0, "TP53_mut": 0.0},  # KRAS is LowQual, BRAF is not annotated
    }
    assert any("silent calls cannot be told apart" in note for note in block.notes)


def test_snpeff_ann_field_is_read_too(tmp_path: Path) -> None:
    ann = (
        '##INFO=<ID=ANN,Number=.,Type=String,Description="Functional annotations: '
        "'Allele | Annotation | Annotation_Impact | Gene_Name | Gene_ID '\">\n"
    )
    path = tmp_path / "snpeff.vcf"
    path.write_text(
        HEADER
        + ann
        + COLUMNS.format(samples="T1\tT2")
        + (
            "chr7\t1\t.\tA\tT\t50\tPASS\t"
            "ANN=T|missense_variant|MODERATE|EGFR|x,T|upstream_gene_variant|MODIFIER|LINC1|y\tGT\t0/1\t0/0\n"
        )
    )
    block = read_vcf(path)
    assert block.values.to_dict("index") == {"T1": {"EGFR_mut": 1.0}, "T2": {"EGFR_mut": 0.0}}


MAF_ROWS = [
    ("EGFR", "Missense_Mutation", "TCGA-01", "PASS"),
    ("TP53", "Silent", "TCGA-01", "PASS"),
    ("TP53", "Nonsense_Mutation", "TCGA-02", "PASS"),
    ("KRAS", "Missense_Mutation", "TCGA-02", "common_variant"),
    ("PIK3CA", "Intron", "TCGA-03", "PASS"),
    ("Unknown", "Missense_Mutation", "TCGA-03", "PASS"),
    ("BRAF", "Frame_Shift_Del", "TCGA-03", ""),
]


def write_maf(
    path: Path, rows=MAF_ROWS, columns=("Hugo_Symbol", "Variant_Classification", "Tumor_Sample_Barcode", "FILTER")
) -> Path:
    frame = pd.DataFrame(rows, columns=list(columns))
    with open(path, "w") as handle:
        handle.write("#version 2.4\n#annotation.spec=test\n")
        frame.to_csv(handle, sep="\t", index=False)
    return path


def test_maf_counts_non_silent_passing_calls_and_profiles_every_listed_sample(tmp_path: Path) -> None:
    block = read_maf(write_maf(tmp_path / "calls.maf"))
    assert list(block.values.columns) == ["BRAF_mut", "EGFR_mut", "TP53_mut"]  # KRAS filtered, PIK3CA intronic
    assert block.values.to_dict("index") == {
        "TCGA-01": {"BRAF_mut": 0.0, "EGFR_mut": 1.0, "TP53_mut": 0.0},
        "TCGA-02": {"BRAF_mut": 0.0, "EGFR_mut": 0.0, "TP53_mut": 1.0},
        "TCGA-03": {"BRAF_mut": 1.0, "EGFR_mut": 0.0, "TP53_mut": 0.0},
    }
    panel = read_maf(tmp_path / "calls.maf", genes=["KRAS", "TP53"])
    assert panel.values["KRAS_mut"].sum() == 0 and panel.values["TP53_mut"].tolist() == [0.0, 1.0, 0.0]


def test_maf_without_required_columns_names_them(tmp_path: Path) -> None:
    path = write_maf(tmp_path / "bad.maf", [("EGFR", "Missense_Mutation")], ("Hugo_Symbol", "Variant_Classification"))
    with pytest.raises(OmicsFormatError, match="MAF columns missing: Tumor_Sample_Barcode"):
        read_maf(path)
