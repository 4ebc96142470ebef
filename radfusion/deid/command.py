"""The `radfusion deid` subcommand: arguments here, work in run.py (imported on use, so
building the parser for other subcommands loads nothing)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

KEY_ENV = "RADFUSION_DEID_KEY"


def add_deid_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deid",
        help="de-identify a DICOM folder tree (PS3.15 Basic Profile and its options)",
        description="Write every DICOM file under --dicom, de-identified, under --out: the Basic "
        "Application Level Confidentiality Profile of PS3.15 Annex E with the options chosen below, "
        "each recorded in the output's Deidentification Method Code Sequence. "
        f"The key comes from --key, --key-file or ${KEY_ENV} (a file or the variable keeps it out of ps).",
    )
    # --dicom, as cohort build and score name a DICOM input; --in, its earlier name, still works.
    p.add_argument("--dicom", "--in", dest="src", required=True, help="input DICOM folder (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (must not be inside --dicom)")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--key", help="pseudonymisation key (at least 16 bytes)")
    key.add_argument("--key-file", help="file holding the key")
    p.add_argument("--mapping", help="patient map CSV (default: <out>-patients.csv beside --out)")
    p.add_argument("--report", help="per-file report CSV (default: <out>-files.csv beside --out)")
    opts = p.add_argument_group("PS3.15 E.3 options")
    opts.add_argument(
        "--dates",
        choices=["modified", "full", "removed"],
        default="modified",
        help="modified (default): Retain Longitudinal Temporal Information with Modified Dates, every date "
        "of a patient moved by one keyed offset; full: ... with Full Dates, dates kept; removed: neither "
        "option, dates emptied or replaced as the Basic Profile says",
    )
    opts.add_argument(
        "--retain-patient-characteristics",
        action="store_true",
        help="keep age, sex, size, weight, ethnic group, smoking and pregnancy status; clean allergies, "
        "patient state, pre-medication and special needs",
    )
    opts.add_argument(
        "--clean-descriptors",
        action="store_true",
        help="keep descriptions and comments (series description, protocol name, ...) with names, IDs, "
        "dates, e-mail addresses and long digit runs removed from them",
    )
    opts.add_argument(
        "--clean-structured-content",
        action="store_true",
        help="keep SR and acquisition context content, text cleaned like descriptors (without it the "
        "content keeps its structure, codes and numbers, its text replaced by a dummy)",
    )
    opts.add_argument("--retain-device-identity", action="store_true", help="keep device serial numbers, station names")
    opts.add_argument("--retain-institution-identity", action="store_true", help="keep institution names and addresses")
    opts.add_argument("--retain-uids", action="store_true", help="keep the original UIDs instead of remapping them")
    p.set_defaults(func=run_deid_command)


def options_from_args(args: argparse.Namespace):
    from radfusion.deid.options import Dates, DeidOptions

    return DeidOptions(
        dates=Dates(args.dates),
        patient_characteristics=args.retain_patient_characteristics,
        clean_descriptors=args.clean_descriptors,
        clean_structured_content=args.clean_structured_content,
        device_identity=args.retain_device_identity,
        institution_identity=args.retain_institution_identity,
        uids=args.retain_uids,
    )


def run_deid_command(args: argparse.Namespace) -> None:
    from radfusion.deid.errors import DeidKeyError
    from radfusion.deid.keys import DeidKey
    from radfusion.deid.run import deidentify_tree
    from radfusion.errors import RadfusionInputError, writable

    writable("--out", args.out)
    try:
        if args.key_file:
            key = DeidKey.from_file(Path(args.key_file))
        elif args.key or os.environ.get(KEY_ENV):
            key = DeidKey.from_text(args.key or os.environ[KEY_ENV])
        else:
            raise DeidKeyError(f"give --key, --key-file or set {KEY_ENV}")
        summary = deidentify_tree(
            Path(args.src),
            Path(args.out),
            key,
            mapping=Path(args.mapping) if args.mapping else None,
            report=Path(args.report) if args.report else None,
            options=options_from_args(args),
        )
    except RadfusionInputError as exc:
        sys.exit(f"radfusion deid: {exc.message}")
    print(json.dumps(summary.to_dict(), indent=2))
    if summary.failed:
        sys.exit(1)  # the others were written; a script should still notice
