"""``radfusion listen`` and ``radfusion pacs-status``: ``main(["listen", ...])``.

    radfusion listen --model model.onnx --work /var/lib/radfusion/pacs \\
        --ae-title RADFUSION --port 11112 --allow-aet ORTHANC \\
        --genomics genomics.parquet --clinical clinical.csv --send-to ORTHANC@pacs.local:4242
    radfusion pacs-status --work /var/lib/radfusion/pacs [--json] [--show-uids]

Also runnable as ``python -m radfusion.serving.pacs.cli listen ...``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

from radfusion import log_privacy
from radfusion.errors import UserError


def _listen_parser(sub: argparse._SubParsersAction) -> None:
    from radfusion.serving.settings import ListenerSettings, shown_default

    p = sub.add_parser(
        "listen",
        help="DICOM listener: C-STORE in, prediction SR back to the PACS",
        description="Every option but --model and --work can also be set by its RADFUSION_* variable (shown in"
        " brackets; docs/settings.md); the option wins.",
    )
    p.add_argument("--model", required=True, help="ONNX model file (with its embedded contract)")
    p.add_argument("--work", required=True, help="folder for received instances, SRs and state.sqlite")
    # One option per setting, from the settings class: its variable and default in the
    # help, no default of its own (an absent option leaves the variable's value).
    for f in fields(ListenerSettings):
        flag = f.metadata["flag"]
        if not flag:
            continue
        shown = f"[{f.metadata['env']}; default {shown_default(f.default)}]"
        if f.type in ("bool", bool) and f.default is False:
            p.add_argument(
                flag,
                dest=f.name,
                action="store_true",
                default=argparse.SUPPRESS,
                help=f"{f.metadata['meaning']} {shown}",
            )
        elif f.type in ("bool", bool):
            p.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{f.metadata['meaning']} {shown}",
            )
        elif str(f.type).startswith("tuple"):
            p.add_argument(
                flag,
                dest=f.name,
                action="append",
                default=argparse.SUPPRESS,
                metavar=flag.lstrip("-").upper().replace("-", "_"),
                help=f"{f.metadata['meaning']} {shown}",
            )
        else:
            p.add_argument(
                flag,
                dest=f.name,
                default=argparse.SUPPRESS,
                metavar=flag.lstrip("-").upper().replace("-", "_"),
                help=f"{f.metadata['meaning']} {shown}",
            )


def _status_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pacs-status", help="studies the listener received, and where each stands")
    p.add_argument("--work", required=True, help="the listener's --work folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--show-uids", action="store_true", help="include Study Instance UIDs (identifiers)")
    p.add_argument(
        "--requeue-failed", action="store_true", help="give failed studies another try (after fixing the cause)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radfusion")
    sub = parser.add_subparsers(dest="command", required=True)
    _listen_parser(sub)
    _status_parser(sub)
    return parser


def _listen(args: argparse.Namespace) -> None:
    from radfusion.serving.settings import ListenerSettings, SettingsError

    # What was given, checked before anything is imported, opened or bound: one line
    # each (radfusion listen: <problem>; <what to do>).
    given = {f.name: getattr(args, f.name) for f in fields(ListenerSettings) if hasattr(args, f.name)}
    try:
        settings = ListenerSettings.from_env(os.environ, given)
    except SettingsError as exc:
        sys.exit(f"radfusion listen: {exc}; fix the option or variable (radfusion listen --help lists them)")
    if not Path(args.model).is_file():
        sys.exit(f"radfusion listen: no model file at {args.model}; give the .onnx file radfusion export wrote")
    from radfusion.runtime import require_gpu_provider

    try:
        require_gpu_provider(settings.device)
    except UserError as exc:
        sys.exit(f"radfusion listen: {exc}")
    from radfusion.serving.modelref import ModelNotFoundError, read_model_contract

    try:
        read_model_contract(Path(args.model))
    except ModelNotFoundError as exc:
        sys.exit(f"radfusion listen: --model {exc}; give the .onnx file radfusion export wrote")
    if Path(args.work).exists() and not Path(args.work).is_dir():
        sys.exit(f"radfusion listen: --work {args.work} is a file; give a folder for the listener's state")

    from radfusion.serving.pacs.listener import ListenerConfig, run_listener
    from radfusion.serving.pacs.pipeline import RetryPolicy
    from radfusion.serving.pacs.send import DicomPeer
    from radfusion.serving.pacs.state import OnResend
    from radfusion.serving.patients import PatientTableError

    config = ListenerConfig(
        model=Path(args.model),
        work=Path(args.work),
        ae_title=settings.ae_title,
        host=settings.host,
        port=settings.port,
        allowed_calling=list(settings.allow_aet),
        genomics=Path(settings.genomics_table) if settings.genomics_table else None,
        clinical=Path(settings.clinical_table) if settings.clinical_table else None,
        quiet_seconds=settings.quiet_seconds,
        max_wait_seconds=settings.max_wait_seconds,
        report_failures=settings.report_failures,
        keep_hours=settings.keep_hours,
        budget=settings.study_budget(),
        send_to=[DicomPeer.parse(text) for text in settings.send_to],
        stow_url=settings.stow_url,
        stow_token=settings.stow_token,
        on_resend=OnResend(settings.on_resend),
        retry=RetryPolicy(settings.max_attempts, settings.retry_seconds, settings.retry_cap_seconds),
        poll_seconds=settings.poll_seconds,
        device=settings.device,
        saliency_windows=settings.saliency_windows if settings.send_saliency else None,
    )
    try:
        run_listener(config)
    except (PatientTableError, FileNotFoundError) as exc:
        sys.exit(f"radfusion listen: {exc}")


def _pacs_status(args: argparse.Namespace) -> None:
    from radfusion.serving.pacs.state import StudyState
    from radfusion.serving.pacs.status import format_table, status_report
    from radfusion.serving.pacs.storage import STATE_FILE

    path = Path(args.work) / STATE_FILE
    if not path.is_file():
        sys.exit(f"radfusion pacs-status: no listener state at {path}; give the --work folder of radfusion listen")
    state = StudyState(path)
    try:
        if args.requeue_failed:
            print(f"requeued {state.requeue_failed()} failed studies", file=sys.stderr)
        report = status_report(state, show_uids=args.show_uids)
    finally:
        state.close()
    print(json.dumps(report, indent=2) if args.json else format_table(report))


def _configure_logging() -> None:
    # Every record is rewritten before any handler sees it: no UID, path or quoted
    # header value reaches the log, whoever logs it (pydicom warnings included).
    log_privacy.install()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pynetdicom and highdicom log associations and copied attributes at INFO and
    # DEBUG, with AE titles and UIDs: keep only their warnings (unless `radfusion
    # --log-level` already chose their level).
    for noisy in ("pynetdicom", "highdicom"):
        if logging.getLogger(noisy).level == logging.NOTSET:
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    _configure_logging()
    {"listen": _listen, "pacs-status": _pacs_status}[args.command](args)


if __name__ == "__main__":
    main(sys.argv[1:])
