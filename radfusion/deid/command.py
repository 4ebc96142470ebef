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
        help="de-identify a DICOM folder tree (PS3.15 Basic Profile, modified dates)",
        description="Write every DICOM file under --in, de-identified, under --out. "
        f"The key comes from --key, --key-file or ${KEY_ENV} (a file or the variable keeps it out of ps).",
    )
    p.add_argument("--in", dest="src", required=True, help="input folder (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (must not be inside --in)")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--key", help="pseudonymisation key (at least 16 bytes)")
    key.add_argument("--key-file", help="file holding the key")
    p.add_argument("--mapping", help="patient map CSV (default: <out>-patients.csv beside --out)")
    p.add_argument("--report", help="per-file report CSV (default: <out>-files.csv beside --out)")
    p.set_defaults(func=run_deid_command)


def run_deid_command(args: argparse.Namespace) -> None:
    from radfusion.deid.errors import DeidKeyError
    from radfusion.deid.keys import DeidKey
    from radfusion.deid.run import deidentify_tree
    from radfusion.errors import RadfusionInputError

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
        )
    except RadfusionInputError as exc:
        sys.exit(f"radfusion deid: {exc.message}")
    print(json.dumps(summary.to_dict(), indent=2))
    if summary.failed:
        sys.exit(1)  # the others were written; a script should still notice
