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
from pathlib import Path

from radfusion import log_privacy
from radfusion.errors import UserError
from radfusion.explain import ExplainSettings

STOW_TOKEN_ENV = "RADFUSION_STOW_TOKEN"


def _listen_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("listen", help="DICOM listener: C-STORE in, prediction SR back to the PACS")
    p.add_argument("--model", required=True, help="ONNX model file (with its embedded contract)")
    p.add_argument("--work", required=True, help="folder for received instances, SRs and state.sqlite")
    p.add_argument("--ae-title", default="RADFUSION", help="this listener's AE title (default RADFUSION)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all; default loopback)")
    p.add_argument("--port", type=int, default=11112, help="DICOM port (default 11112)")
    p.add_argument(
        "--allow-aet",
        action="append",
        default=[],
        metavar="AET",
        help="calling AE title allowed to associate (repeat; default: any)",
    )
    p.add_argument("--genomics", help="genomics table (Parquet/CSV) looked up by PatientID; without it: no genomics")
    p.add_argument(
        "--clinical",
        help="clinical covariates (Parquet/CSV: patient_id + the model's covariate columns) "
        "looked up by PatientID, for a model with a clinical block",
    )
    p.add_argument(
        "--quiet-seconds",
        type=float,
        default=30.0,
        help="a study is complete after this long without a new instance, counted from the listener's"
        " start for what arrived before it (default 30)",
    )
    p.add_argument(
        "--max-wait-seconds",
        type=float,
        default=600.0,
        help="a quiet study whose headers show missing instances waits this long for them, then is scored"
        " with what arrived and the SR says so (default 600)",
    )
    p.add_argument(
        "--report-failures",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send the PACS an SR saying why a study has no result (default: on)",
    )
    p.add_argument(
        "--keep-hours",
        type=float,
        default=24.0,
        help="retention of received instances (and SR files): deleted this many hours after the study's result"
        " (prediction SR or failure report) was sent or ran out of attempts; 0: as soon as it is sent;"
        " negative: kept for ever. A restarted listener applies it to what earlier runs kept (default 24)",
    )
    p.add_argument(
        "--send-to",
        action="append",
        default=[],
        metavar="AET@HOST:PORT",
        help="C-STORE the SR to this DICOM peer (repeatable)",
    )
    p.add_argument(
        "--send-saliency",
        action="store_true",
        help="send a saliency map (DICOM Parametric Map of where the model looked, on the scored series)"
        " with each SR; costs up to 1 + --saliency-windows model rows per study (default: off)",
    )
    p.add_argument(
        "--saliency-windows",
        type=int,
        default=ExplainSettings.max_windows,
        help=f"occlusion windows of the saliency map (default {ExplainSettings.max_windows})",
    )
    p.add_argument("--stow-url", help=f"STOW-RS the SR to this DICOMweb root (bearer token from ${STOW_TOKEN_ENV})")
    p.add_argument(
        "--on-resend",
        choices=["ignore", "rescore"],
        default="ignore",
        help="instances of a scored study received again: ignore them (default) or score it again as a new"
        " SR version (instances it did not have always re-score it)",
    )
    p.add_argument(
        "--max-attempts", type=int, default=5, help="attempts to score/send before a study fails (default 5)"
    )
    p.add_argument(
        "--retry-seconds",
        type=float,
        default=10.0,
        help="first retry delay; doubles each attempt, capped at --retry-cap-seconds (default 10)",
    )
    p.add_argument("--retry-cap-seconds", type=float, default=600.0)
    p.add_argument("--poll-seconds", type=float, default=1.0, help="how often pending work is checked (default 1)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


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
    # What was given, checked before anything is imported, opened or bound: one line
    # each (radfusion listen: <problem>; <what to do>).
    if not Path(args.model).is_file():
        sys.exit(f"radfusion listen: no model file at {args.model}; give the .onnx file radfusion export wrote")
    if Path(args.work).exists() and not Path(args.work).is_dir():
        sys.exit(f"radfusion listen: --work {args.work} is a file; give a folder for the listener's state")
    for flag, table in (("--genomics", args.genomics), ("--clinical", args.clinical)):
        if table and not Path(table).is_file():
            sys.exit(f"radfusion listen: {flag} {table}: no such file; give the table's path (Parquet or CSV)")
    from radfusion.runtime import require_gpu_provider

    try:
        require_gpu_provider(args.device)
    except UserError as exc:
        sys.exit(f"radfusion listen: {exc}")

    from radfusion.serving.pacs.listener import ListenerConfig, run_listener
    from radfusion.serving.pacs.pipeline import RetryPolicy
    from radfusion.serving.pacs.send import DicomPeer
    from radfusion.serving.pacs.state import OnResend
    from radfusion.serving.patients import PatientTableError

    try:
        peers = [DicomPeer.parse(text) for text in args.send_to]
    except ValueError as exc:
        sys.exit(f"radfusion listen: --send-to {exc}")
    config = ListenerConfig(
        model=Path(args.model),
        work=Path(args.work),
        ae_title=args.ae_title,
        host=args.host,
        port=args.port,
        allowed_calling=args.allow_aet,
        genomics=Path(args.genomics) if args.genomics else None,
        clinical=Path(args.clinical) if args.clinical else None,
        quiet_seconds=args.quiet_seconds,
        max_wait_seconds=args.max_wait_seconds,
        report_failures=args.report_failures,
        keep_hours=None if args.keep_hours < 0 else args.keep_hours,
        send_to=peers,
        stow_url=args.stow_url,
        stow_token=os.environ.get(STOW_TOKEN_ENV) or None,
        on_resend=OnResend(args.on_resend),
        retry=RetryPolicy(args.max_attempts, args.retry_seconds, args.retry_cap_seconds),
        poll_seconds=args.poll_seconds,
        device=args.device,
        saliency_windows=args.saliency_windows if args.send_saliency else None,
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
