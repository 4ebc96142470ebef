"""Omics files as gene-level blocks: expression matrices, mutation calls (MAF, VCF) and
copy-number segments, each read into a samples x features table whose column names
say their block (``EGFR``, ``EGFR_mut``, ``EGFR_cn``, as radfusion.genomics splits
them). Sample IDs become PatientIDs only through an explicit sample map."""

from radfusion.omics.annotation import GeneAnnotation, read_gene_annotation
from radfusion.omics.block import GeneBlock, join_patient_blocks
from radfusion.omics.expression import read_expression
from radfusion.omics.maf import read_maf
from radfusion.omics.samples import PatientBlock, map_to_patients, read_sample_map
from radfusion.omics.segments import read_segments, segments_to_genes
from radfusion.omics.vcf import read_vcf

__all__ = [
    "GeneAnnotation",
    "GeneBlock",
    "PatientBlock",
    "join_patient_blocks",
    "map_to_patients",
    "read_expression",
    "read_gene_annotation",
    "read_maf",
    "read_sample_map",
    "read_segments",
    "read_vcf",
    "segments_to_genes",
]
