"""The `radfusion cohort build` subcommand: arguments here, work in build.py (imported
on use, so building the parser for other subcommands loads nothing)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_cohort_command(sub: argparse._SubParsersAction) -> None:
    cohort = sub.add_parser("cohort", help="cohort manifest: join studies, omics and outcomes")
    actions = cohort.add_subparsers(dest="cohort_command", required=True)
    p = actions.add_parser(
        "build",
        help="join patients -> studies -> omics blocks -> outcomes into a manifest and validate it",
        description="Writes <out>/manifest.parquet, <out>/genomics.parquet and <out>/report.json, "
        "and prints the validation report's counts.",
    )
    p.add_argument("--dicom", required=True, help="DICOM folder tree (zip archives and DICOMDIR inside are read)")
    p.add_argument("--clinical", required=True, help="clinical/outcome table (CSV, TSV or Parquet) with patient_id")
    p.add_argument("--sample-map", help="CSV sample_id,patient_id mapping omics samples to DICOM PatientID")
    p.add_argument("--expression", help="expression matrix (CSV, TSV or Parquet; samples as rows or columns)")
    p.add_argument(
        "--expression-scale",
        choices=["counts", "log"],
        default="log",
        help="counts: raw read counts, turned into log2(CPM+1); log: kept as they are",
    )
    p.add_argument("--expression-orientation", choices=["auto", "samples_as_rows", "genes_as_rows"], default="auto")
    mutations = p.add_mutually_exclusive_group()
    mutations.add_argument("--maf", help="mutation calls as a MAF")
    mutations.add_argument("--vcf", help="mutation calls as a VCF or a folder of VCFs")
    p.add_argument("--cnv", help="copy-number segments (SEG: ID, chrom, loc.start, loc.end, num.mark, seg.mean)")
    p.add_argument("--genes", help="gene annotation (BED or GTF) for --cnv and for VCFs without CSQ/ANN")
    p.add_argument("--outcome", action="append", help="outcome column(s) a patient must have (default: response)")
    p.add_argument("--modality", action="append", help="image modalities a main series may have (default: CT)")
    p.add_argument("--min-slices", type=int, default=8, help="fewest slices a main series may have")
    p.add_argument(
        "--verify-pixels",
        action="store_true",
        help="also read every chosen series to check its geometry (slow: reads all pixels)",
    )
    p.add_argument("--contract", help="an exported model (ONNX): report genes of its panels the cohort lacks")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--json", action="store_true", help="print the counts as JSON (no identifiers) instead of text")
    p.set_defaults(func=run_cohort_build)


def run_cohort_build(args: argparse.Namespace) -> None:
    from radfusion.cohort_manifest import ManifestInputs, OmicsSources, build_manifest, summary_text, write_manifest
    from radfusion.cohort_manifest.report import summary_counts
    from radfusion.dicom import SelectionRules
    from radfusion.errors import RadfusionInputError

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    check_inputs(args)
    try:
        inputs = ManifestInputs(
            dicom=Path(args.dicom),
            clinical=Path(args.clinical),
            sample_map=path(args.sample_map),
            omics=OmicsSources(
                expression=path(args.expression),
                expression_scale=args.expression_scale,
                expression_orientation=args.expression_orientation,
                maf=path(args.maf),
                vcf=path(args.vcf),
                cnv=path(args.cnv),
                genes=path(args.genes),
            ),
            outcomes=tuple(args.outcome or ["response"]),
            rules=SelectionRules(modalities=tuple(args.modality or ["CT"]), min_slices=args.min_slices),
            verify_pixels=args.verify_pixels,
            contract=path(args.contract),
        )
        manifest = build_manifest(inputs)
    except (RadfusionInputError, ValueError, FileNotFoundError) as exc:
        sys.exit(f"radfusion cohort build: {exc}")
    if manifest.report["studies"]["found"] == 0:
        skipped = sum(manifest.report["studies"]["skipped_files_by_reason"].values())
        sys.exit(
            f"radfusion cohort build: no DICOM study under --dicom {args.dicom} ({skipped} files skipped); "
            "give the folder that holds the cohort's DICOM files"
        )
    out = write_manifest(manifest, Path(args.out))
    if args.json:
        print(json.dumps({**summary_counts(manifest.report), "out": str(out)}, indent=2))
        return
    print(summary_text(manifest.report))
    print(f"manifest, genomics table and full report (with IDs) written to {out}")


def check_inputs(args: argparse.Namespace) -> None:
    """Every input named on the command line exists, before anything is read: a
    mistyped --dicom would otherwise give a manifest of no studies."""
    from radfusion.errors import UserError, writable

    dicom = Path(args.dicom)
    if not dicom.is_dir():
        raise UserError(
            f"--dicom {dicom} {'is not a folder' if dicom.exists() else 'does not exist'}",
            "give the folder that holds the cohort's DICOM files (zip archives and DICOMDIR inside are read)",
        )
    for flag, value in (
        ("--clinical", args.clinical),
        ("--sample-map", args.sample_map),
        ("--expression", args.expression),
        ("--maf", args.maf),
        ("--vcf", args.vcf),
        ("--cnv", args.cnv),
        ("--genes", args.genes),
        ("--contract", args.contract),
    ):
        if value and not Path(value).exists():
            raise UserError(f"{flag} {value} does not exist", "check the path")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a file, not a folder", "give a folder for the manifest")
    writable("--out", args.out)
