"""The synthetic cohort's omics as the raw files a sequencing core delivers, beside
the ready-made genomics table: an expression matrix with genes as rows, a MAF of
mutation calls, copy-number segments (SEG) with a gene annotation (BED), and a
sample map from sample barcodes (which are not PatientIDs) to PatientIDs.

Only patients with released genomics get samples, and only the genes the cohort measures
appear (a site's panel may lack some; those keep their coordinates, which every site
shares, and are left out of the BED as well). Expression values are the table's
(same text, same doubles); the MAF holds each patient's mutation flags as non-silent
calls plus silent calls and calls that failed filtering, which readers must ignore.
Copy number is new: chromosome k's first segment carries the mean activity of
expression module k-1 (modules 0-8; the driver program is left out), cut at a random
breakpoint, so the block has structure without touching the outcome model, which was
drawn before any of this. Gene coordinates are synthetic: panel genes are dealt over
ten chromosomes in panel order. Randomness comes from its own stream, so the other
outputs are unchanged by this writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.synth.genomics_model import DRIVER_MODULE, EXPRESSION_DECIMALS, MUTATION_GENES
from radfusion.synth.patients import SimulatedCohort
from radfusion.synth.random_streams import stream

# Stream purpose for the omics files (random_streams numbers 1-5 are taken).
OMICS_FILES = 6
N_CHROMOSOMES = 10
GENE_SLOT_BP = 200_000
CHROM_MARGIN_BP = 1_000_000
CN_SCALE = 0.35  # log2 ratio per unit of module activity
NON_SILENT = ("Missense_Mutation", "Nonsense_Mutation", "Frame_Shift_Del", "In_Frame_Del")
SILENT = ("Silent", "Intron", "3'UTR")
FILTERED_SHARE = 0.2  # patients with one call that failed filtering
MAF_COLUMNS = (
    "Hugo_Symbol",
    "Chromosome",
    "Start_Position",
    "End_Position",
    "Variant_Classification",
    "Variant_Type",
    "Reference_Allele",
    "Tumor_Seq_Allele2",
    "Tumor_Sample_Barcode",
    "FILTER",
)


def write_omics_files(cohort: SimulatedCohort, out: Path) -> Path:
    """Write out/omics/{expression.tsv, mutations.maf, copy_number.seg, genes.bed,
    sample_map.csv}; returns the folder."""
    folder = Path(out) / "omics"
    folder.mkdir(parents=True, exist_ok=True)
    rng = stream(cohort.seed, OMICS_FILES)
    released = [p for p in cohort.patients if p.has_genomics]
    samples = _sample_ids(len(released), rng)
    genes = gene_coordinates(cohort.genes)
    if len(cohort.measured_genes) < len(cohort.genes):
        genes = genes[genes["name"].isin(cohort.measured_genes)].reset_index(drop=True)
    genes.to_csv(folder / "genes.bed", sep="\t", header=False, index=False)
    pd.DataFrame({"sample_id": samples, "patient_id": [p.patient_id for p in released]}).sort_values(
        "sample_id"
    ).to_csv(folder / "sample_map.csv", index=False)
    _write_expression(cohort, released, samples, folder / "expression.tsv")
    _write_maf(cohort, released, samples, genes, rng, folder / "mutations.maf")
    _write_segments(cohort, released, samples, genes, rng, folder / "copy_number.seg")
    return folder


def _sample_ids(n: int, rng: np.random.Generator) -> list[str]:
    tokens = rng.choice(16**8, n, replace=False)
    return [f"RFS-{int(t):08X}-01A" for t in tokens]


def gene_coordinates(genes: list[str]) -> pd.DataFrame:
    """BED rows (chrom, start, end, name): gene i on chromosome (i mod 10) + 1."""
    index = np.arange(len(genes))
    chrom = [f"chr{i % N_CHROMOSOMES + 1}" for i in index]
    start = CHROM_MARGIN_BP + (index // N_CHROMOSOMES) * GENE_SLOT_BP
    length = 20_000 + (index * 7919) % 60_000
    return pd.DataFrame({"chrom": chrom, "start": start, "end": start + length, "name": genes})


def chromosome_length(n_genes: int) -> int:
    slots = -(-n_genes // N_CHROMOSOMES)
    return 2 * CHROM_MARGIN_BP + slots * GENE_SLOT_BP


def _write_expression(cohort: SimulatedCohort, released, samples: list[str], path: Path) -> None:
    rows = [p.index for p in released]
    text = np.char.mod(f"%.{EXPRESSION_DECIMALS}f", cohort.measured_expression(rows).T)
    matrix = pd.DataFrame(text, index=pd.Index(cohort.measured_genes, name="gene"), columns=samples)
    matrix.to_csv(path, sep="\t")


def _write_maf(cohort, released, samples, genes: pd.DataFrame, rng: np.random.Generator, path: Path) -> None:
    at = genes.set_index("name")
    panel = list(cohort.measured_genes)

    def call(gene: str, sample: str, kind: str, passed: str = "PASS") -> dict:
        chrom, start, end = at.loc[gene, ["chrom", "start", "end"]]
        position = int(start) + 1 + int(rng.integers(int(end) - int(start)))
        deletion = kind in ("Frame_Shift_Del", "In_Frame_Del")
        return dict(
            zip(
                MAF_COLUMNS,
                (
                    gene,
                    chrom,
                    position,
                    position,
                    kind,
                    "DEL" if deletion else "SNP",
                    "A",
                    "-" if deletion else "T",
                    sample,
                    passed,
                ),
                strict=True,
            )
        )

    rows = []
    filtered = rng.random(len(released)) < FILTERED_SHARE
    for i, (patient, sample) in enumerate(zip(released, samples, strict=True)):
        for gene in MUTATION_GENES:
            if patient.mutations[gene]:
                rows.append(call(gene, sample, NON_SILENT[int(rng.integers(len(NON_SILENT)))]))
        # Every exome has silent calls, here also in the mutation genes themselves.
        for gene in rng.choice([*MUTATION_GENES, *panel[:40]], 2, replace=False):
            rows.append(call(str(gene), sample, SILENT[int(rng.integers(len(SILENT)))]))
        if filtered[i]:
            wild = [g for g in MUTATION_GENES if not patient.mutations[g]] or list(MUTATION_GENES)
            rows.append(call(wild[int(rng.integers(len(wild)))], sample, "Missense_Mutation", "germline_risk"))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("#version 2.4\n")
        pd.DataFrame(rows, columns=list(MAF_COLUMNS)).to_csv(handle, sep="\t", index=False)


def module_activity(cohort: SimulatedCohort, rows: list[int]) -> np.ndarray:
    """(patients, modules): mean standardised expression of each module's genes."""
    panel = cohort.panel
    z = (cohort.expression[rows] - panel.means) / panel.scales
    activity = np.zeros((len(rows), DRIVER_MODULE))
    for module in range(DRIVER_MODULE):
        members = panel.module_of == module
        if members.any():
            activity[:, module] = z[:, members].mean(axis=1)
    return activity


def _write_segments(cohort, released, samples, genes: pd.DataFrame, rng: np.random.Generator, path: Path) -> None:
    activity = module_activity(cohort, [p.index for p in released])
    length = chromosome_length(len(cohort.genes))
    rows = []
    for i, sample in enumerate(samples):
        for k in range(N_CHROMOSOMES):
            breakpoint = int(rng.integers(CHROM_MARGIN_BP, length - CHROM_MARGIN_BP))
            gained = CN_SCALE * activity[i, k] if k < DRIVER_MODULE else 0.0
            rows.append((sample, f"chr{k + 1}", 1, breakpoint, 1 + breakpoint // 10_000, round(gained, 4)))
            rows.append((sample, f"chr{k + 1}", breakpoint + 1, length, 1 + (length - breakpoint) // 10_000, 0.0))
    columns = ["ID", "chrom", "loc.start", "loc.end", "num.mark", "seg.mean"]
    pd.DataFrame(rows, columns=columns).to_csv(path, sep="\t", index=False)
