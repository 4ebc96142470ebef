"""``radfusion errors``: the catalogue of error kinds, from the classes themselves.

The error classes live in the core and in serving; this command sits above both (as
only the CLI may), imports every module that defines one, and prints the catalogue:
``radfusion errors --markdown > docs/errors.md``."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterable

from radfusion.errors import error_catalogue, markdown_table

# Modules that define error classes outside radfusion.errors.
ERROR_MODULES = (
    "radfusion.deid.errors",
    "radfusion.prediction",
    "radfusion.serving.study_files",
    "radfusion.serving.dicomweb",
    "radfusion.serving.patient_data",
    "radfusion.serving.scoring.rows",
    "radfusion.serving.scoring.sources",
    "radfusion.serving.http.auth",
    "radfusion.serving.http.cases",
    "radfusion.serving.http.connections",
    "radfusion.serving.http.overload",
    "radfusion.serving.http.parsing",
    "radfusion.serving.http.stow",
    "radfusion.serving.http.service",
    "radfusion.serving.pacs.completeness",
)


def import_error_modules(modules: Iterable[str] = ERROR_MODULES) -> None:
    """Import the modules that define error classes, so that the catalogue is whole."""
    for name in modules:
        importlib.import_module(name)


def add_errors_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("errors", help="the error kinds (HTTP status, retryable, meaning)")
    p.add_argument("--markdown", action="store_true", help="print the table of docs/errors.md")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    import_error_modules()
    entries = error_catalogue()
    if args.markdown:
        print(markdown_table(entries), end="")
        return
    for e in entries:
        print(f"{e.kind}\t{e.http_status}\t{'retryable' if e.retryable else '-'}")
