"""``radfusion settings``: the RADFUSION_* settings of the HTTP service and the DICOM
listener with their defaults, from the settings dataclasses:
``radfusion settings --markdown > docs/settings.md``."""

from __future__ import annotations

import argparse

from radfusion.errors import UserError


def add_settings_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("settings", help="the RADFUSION_* settings of the service and the listener (default, meaning)")
    p.add_argument("--markdown", action="store_true", help="print the table of docs/settings.md")
    p.add_argument(
        "--check",
        action="store_true",
        help="read every RADFUSION_* variable of this environment as the service and the listener would: exit 1"
        " naming a bad one",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    from dataclasses import fields

    from radfusion.serving.settings import (
        DeclaredSettings,
        LaunchSettings,
        ServiceSettings,
        check_environment,
        listener_only_fields,
        settings_markdown,
    )

    if args.check:
        problems = check_environment()
        if problems:
            raise UserError("; ".join(problems), "fix the variables or unset them (radfusion settings lists them)")
        print("settings: every RADFUSION_* variable set here is valid")
        return
    if args.markdown:
        print(settings_markdown(), end="")
        return
    for f in [*fields(LaunchSettings), *fields(DeclaredSettings), *fields(ServiceSettings), *listener_only_fields()]:
        print(f"{f.metadata['env']}\t{f.default}\t{f.metadata['meaning']}")
