"""Copy-number segments -> gene-level <GENE>_cn: length-weighted means of the
segments overlapping each gene (numbers worked out by hand), SEG's 1-based inclusive
coordinates against BED's 0-based half-open ones, "chr" prefixes ignored, GTF
annotations read the same as BED, uncovered genes reported as NaN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radfusion.errors import OmicsFormatError
from radfusion.omics import read_gene_annotation, read_segments, segments_to_genes

BED = (
    "chr1\t1000\t2000\tGENEA\n"
    "chr1\t1200\t1300\tGENEB\n"
    "chr1\t1400\t1800\tGENEC\n"
    "chr2\t100\t200\tGENED\n"
    "chr1\t2900\t3100\tGENEE\n"
)
GTF = "".join(
    f'{c}\ttest\tgene\t{int(s) + 1}\t{e}\t.\t+\t.\tgene_id "G{i}"; gene_name "{n}";\n'
    f'{c}\ttest\texon\t{int(s) + 1}\t{e}\t.\t+\t.\tgene_id "G{i}"; gene_name "{n}";\n'
    for i, (c, s, e, n) in enumerate(line.split("\t") for line in BED.strip().split("\n"))
)
# X: [0,1500) at +1.0 and [1500,3000) at -1.0; Y: all of chr1 at 0.5 (named "1"), a
# chr2 segment whose mean is not a number; Z: a segment exactly on GENEB's bases.
SEG = """ID\tchrom\tloc.start\tloc.end\tnum.mark\tseg.mean
X\tchr1\t1\t1500\t15\t1.0
X\tchr1\t1501\t3000\t15\t-1.0
Y\t1\t1\t5000\t50\t0.5
Y\tchr2\t1\t1000\t10\tNA
Z\tchr1\t1201\t1300\t3\t2.0
"""


@pytest.fixture(params=["genes.bed", "genes.gtf"])
def annotation(tmp_path: Path, request: pytest.FixtureRequest):
    path = tmp_path / request.param
    path.write_text(BED if request.param.endswith(".bed") else GTF)
    return read_gene_annotation(path)


def test_gene_values_are_length_weighted_segment_means(tmp_path: Path, annotation) -> None:
    (tmp_path / "cn.seg").write_text(SEG)
    block = segments_to_genes(read_segments(tmp_path / "cn.seg"), annotation, "cn.seg")
    assert block.name == "copy_number"
    assert list(block.values.columns) == ["GENEA_cn", "GENEB_cn", "GENEC_cn", "GENED_cn", "GENEE_cn"]
    x = block.values.loc["X"]
    assert x["GENEA_cn"] == pytest.approx(0.0)  # 500 bp at +1, 500 bp at -1
    assert x["GENEB_cn"] == pytest.approx(1.0)  # inside the first segment
    assert x["GENEC_cn"] == pytest.approx((100 * 1.0 + 300 * -1.0) / 400)  # cut at base 1500
    assert np.isnan(x["GENED_cn"])  # no segment on chr2
    assert x["GENEE_cn"] == pytest.approx(-1.0)  # only its covered 100 bp count
    y = block.values.loc["Y"]
    assert y[["GENEA_cn", "GENEB_cn", "GENEC_cn", "GENEE_cn"]].tolist() == [0.5] * 4
    assert np.isnan(y["GENED_cn"])  # its only segment has no mean
    z = block.values.loc["Z"]
    assert z["GENEB_cn"] == 2.0 and z["GENEA_cn"] == 2.0 and np.isnan(z["GENEC_cn"])
    assert "1 segment(s) without a numeric mean left out" in block.notes
    assert block.nonfinite() == [
        {"sample_id": "X", "nan": ["GENED_cn"]},
        {"sample_id": "Y", "nan": ["GENED_cn"]},
        {"sample_id": "Z", "nan": ["GENEC_cn", "GENED_cn", "GENEE_cn"]},
    ]


def test_seg_header_spellings_and_missing_columns(tmp_path: Path) -> None:
    gdc = tmp_path / "gdc.seg"
    gdc.write_text("GDC_Aliquot\tChromosome\tStart\tEnd\tNum_Probes\tSegment_Mean\nA1\t7\t100\t200\t5\t0.25\n")
    seg = read_segments(gdc)
    assert seg.iloc[0][["sample", "chrom", "start", "end", "mean"]].tolist() == ["A1", "7", 99, 200, 0.25]
    bad = tmp_path / "bad.seg"
    bad.write_text("ID\tchrom\tloc.start\tloc.end\nA\t1\t1\t10\n")
    with pytest.raises(OmicsFormatError, match="SEG columns missing: mean"):
        read_segments(bad)


def test_annotation_rejects_bad_intervals(tmp_path: Path) -> None:
    path = tmp_path / "bad.bed"
    path.write_text("chr1\t500\t400\tGENEA\n")
    with pytest.raises(OmicsFormatError, match="end <= start"):
        read_gene_annotation(path)
    short = tmp_path / "short.bed"
    short.write_text("chr1\t1\t2\n")
    with pytest.raises(OmicsFormatError, match="needs chrom, start, end, name"):
        read_gene_annotation(short)
