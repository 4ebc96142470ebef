"""The `radfusion` command. Each subcommand imports only what it needs: scoring and
serving never load torch; synth needs only the core."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from radfusion import log_privacy
from radfusion.cli.checks import (
    CHECKPOINT_FIX,
    EXPORT_FIRST,
    at_least,
    check_config_files,
    check_model_file,
    model_file,
    writable,
)
from radfusion.cli.failures import user_error_message
from radfusion.cli.logs import LOG_LEVELS, configure_logging, quiet_libraries
from radfusion.conformal import DEFAULT_COVERAGE

# What `radfusion export` registers in the BentoML model store (training/module.py's
# default model_name); `name:latest` is the newest export.
DEFAULT_MODEL_TAG = "radfusion-response:latest"

# Subcommands whose arguments are parsed by their own module (listed here for --help).
PACS_COMMANDS = {
    "listen": "DICOM listener: C-STORE in, prediction SR back to the PACS (see radfusion listen --help)",
    "pacs-status": "listener state: received, pending, scored, sent, failed",
}


def _synth(args: argparse.Namespace) -> None:
    from radfusion.errors import UserError
    from radfusion.synth import generate_cohort
    from radfusion.synth.cohort import MIN_GENES
    from radfusion.synth.presets import patient_counts, site_numbers, synth_options

    if args.sites is not None:
        at_least("--sites", args.sites, 1, "ask for one site or more, e.g. --sites 4")
    patients = patient_counts(args.patients, args.sites)
    for flag, value, least, fix in (
        ("--seed", args.seed, 0, "give 0 or a positive seed"),
        ("--genes", args.genes, MIN_GENES, f"ask for {MIN_GENES} genes or more, e.g. --genes 300"),
        ("--workers", args.workers, 1, "give 1 to render in this process"),
    ):
        at_least(flag, value, least, fix)
    without_omics = site_numbers("--site-without-omics", args.site_without_omics)
    without_images = site_numbers("--site-without-images", args.site_without_images)
    if args.sites is None and (without_omics or without_images or args.site_missing_genes is not None):
        raise UserError("the --site-* options need --sites", "add --sites N, e.g. --sites 3")
    # Geometry and storage: each option given, else the preset's, else the default.
    options = synth_options(
        args.preset,
        slices=args.slices,
        size=args.size,
        fov_mm=args.fov_mm,
        pixel_spacing=args.pixel_spacing,
        slice_thickness=args.slice_thickness,
        rle_fraction=args.rle_fraction,
        j2k_fraction=args.j2k_fraction,
        jpegls_fraction=args.jpegls_fraction,
    )
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a file, not a folder", "give a new or empty folder for the cohort")
    writable("--out", args.out)
    if args.sites is not None:
        from radfusion.synth.sites import DEFAULT_MISSING_GENES, generate_sites

        document = generate_sites(
            Path(args.out),
            args.sites,
            patients,
            args.seed,
            args.genes,
            missing_genes=DEFAULT_MISSING_GENES if args.site_missing_genes is None else args.site_missing_genes,
            without_omics=without_omics,
            without_images=without_images,
            workers=args.workers,
            **options,
        )
        for site in document["sites"]:  # the gene lists are in sites.json
            site["dropped_genes"] = len(site["dropped_genes"])
        print(json.dumps(document, indent=2))
        return
    assert isinstance(patients, int)  # a list needs --sites
    out = generate_cohort(
        Path(args.out), n_patients=patients, seed=args.seed, n_genes=args.genes, workers=args.workers, **options
    )
    print(json.dumps(json.loads((out / "cohort.json").read_text()), indent=2))


# LightningCLI's subcommands; `radfusion train` without one means fit.
TRAIN_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _train(rest: list[str]) -> None:
    import warnings

    subcommand, args = (rest[0], rest[1:]) if rest and rest[0] in TRAIN_SUBCOMMANDS else ("fit", rest)
    check_config_files(args)
    from radfusion.training.cli import main

    quiet_libraries()  # Lightning sets its loggers' levels on import

    # sys.argv stays the real command line: Lightning's DDP launcher starts the other
    # ranks by running it again. LightningCLI warns when it sees both argv and args.
    sys.argv = [sys.argv[0], *_global_tokens, "train", *rest]
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    main([subcommand, *args], prog="radfusion train")


def _cv(rest: list[str]) -> None:
    check_config_files(rest)
    from radfusion.training.cv.command import main

    quiet_libraries()
    main(rest)


def _evaluate(args: argparse.Namespace) -> None:
    from radfusion.errors import UserError, checkpoint_problem

    # A name given several times: one configuration trained with several seeds (one row, its spread).
    checkpoints: dict = {}
    for item in args.checkpoint:
        name, path = _named(item)
        if problem := checkpoint_problem(path):
            raise UserError(f"--checkpoint {item}: {problem}", CHECKPOINT_FIX)
        checkpoints.setdefault(name, []).append(Path(path))
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a file, not a folder", "give a folder for metrics.json")
    writable("--out", args.out)

    from radfusion.training.cv.command import parse_baselines
    from radfusion.training.evaluate import evaluate, markdown_table

    quiet_libraries()
    from radfusion.training.cv.holdout import check_names

    baselines = parse_baselines(args.baselines)
    try:
        check_names(baselines)
    except ValueError as exc:
        raise UserError(f"--baselines {args.baselines}: {exc}") from exc
    results = evaluate(checkpoints, Path(args.out), baselines=baselines)
    # --json: what metrics.json holds, for a script; else the table for a person.
    print((Path(args.out) / "metrics.json").read_text() if args.json else markdown_table(results))


def _count_or_all(text: str) -> int | None:
    """A number of cases (0: none), or "all" (None)."""
    if text.strip().lower() == "all":
        return None
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of cases (0: none) or 'all', not {text!r}")
    return int(text)


def _coverage(text: str) -> float:
    """A conformal coverage: strictly between 0 and 1, or 0 for no sets."""
    value = float(text)
    if value != 0.0 and not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"coverage must be between 0 and 1 (e.g. 0.9), or 0 for no sets, not {text}")
    return value


# What `radfusion export --model` takes: the network, or a linear classical baseline
# (training.cv.affine.AFFINE_BASELINES; listed here so that checking it loads no torch).
EXPORT_MODELS = ("network", "coxnet", "cox_ridge", "logistic")


def _export(args: argparse.Namespace) -> None:
    """Training exports and checks the model; serving registers it (the CLI is the one
    layer that may join them)."""
    from radfusion.errors import UserError, checkpoint_problem

    if args.model not in EXPORT_MODELS:
        raise UserError(
            f"only linear baselines can be exported ({', '.join(EXPORT_MODELS[1:])}), not {args.model!r}",
            "leave out --model to export the network, or name one of them",
        )
    if problem := checkpoint_problem(args.checkpoint):
        raise UserError(f"--checkpoint {args.checkpoint}: {problem}", CHECKPOINT_FIX)
    if Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a folder", "give the path of the .onnx file to write, e.g. model.onnx")
    writable("--out", args.out, folder=False)
    if args.cohort is not None and not Path(args.cohort).is_dir():
        raise UserError(f"--cohort {args.cohort} is not a folder", "give a cohort folder radfusion synth wrote")

    from radfusion.training.cv.affine import BaselineExportError
    from radfusion.training.export import export, write_export_report

    quiet_libraries()
    out = Path(args.out)
    try:
        report = export(
            Path(args.checkpoint),
            out,
            calibrate=not args.no_calibrate,
            model=args.model,
            conformal_coverage=args.coverage or None,
            tune_runtime=args.tune_runtime,
            cohort_dir=Path(args.cohort) if args.cohort else None,
        )
    except BaselineExportError as exc:
        sys.exit(f"radfusion export: {exc}")
    report["bento_tag"] = None
    if not args.no_register:
        from radfusion.serving.modelref import register_model

        report["bento_tag"] = register_model(out)
    write_export_report(out, report)
    print(json.dumps(report, indent=2))


def _score(args: argparse.Namespace) -> None:
    model = _check_score_args(args)
    from radfusion.limits import StudyBudget
    from radfusion.serving.scoring.score import PatientTableError, ResumeError, score_archive

    if not args.archive:
        _score_table(args, model)
        return
    budget = StudyBudget(
        max_files=args.study_max_files,
        max_bytes=args.study_max_bytes,
        max_decoded_bytes=args.study_max_decoded_bytes,
        max_voxels=args.study_max_voxels,
        max_seconds=args.study_max_seconds,
    )
    if args.engine == "ray":
        import ray  # noqa: F401 - sets its logger's level on import: quieted again below

        quiet_libraries()
    try:
        summary = score_archive(
            archive=args.archive,
            model_path=model,
            out=Path(args.out),
            genomics=Path(args.genomics) if args.genomics else None,
            clinical=Path(args.clinical) if args.clinical else None,
            batch_size=args.batch_size,
            device=args.device,
            workers=args.workers,
            engine=args.engine,
            chunk_size=args.chunk_size,
            fresh=args.fresh,
            threads=args.threads,
            ray_actors=args.actors,
            gpus_per_actor=args.gpus_per_actor,
            study_budget=budget,
        )
    except (ResumeError, PatientTableError, FileNotFoundError) as exc:
        sys.exit(f"radfusion score: {exc}")
    except KeyboardInterrupt:
        _interrupted()
    print(json.dumps(summary, indent=2))


def _interrupted() -> NoReturn:
    print("interrupted: committed rows are kept; run the same command again to resume", file=sys.stderr)
    sys.exit(130)


def _check_score_args(args: argparse.Namespace) -> Path:
    """The archive, tables, model and device, checked before anything is opened or
    written; returns the model's ONNX file."""
    from radfusion.errors import UserError
    from radfusion.serving.scoring.sources import is_dicomweb

    if args.engine != "local" and not args.archive:
        raise UserError(
            "--engine ray scores an archive, and no --archive was given (a table run is local)",
            "give --archive, or leave out --engine ray",
        )
    if args.archive and not is_dicomweb(args.archive) and not Path(args.archive).exists():
        raise UserError(
            f"--archive {args.archive} does not exist",
            "give a folder of DICOM files, a .zip or a DICOMweb root URL (http(s)://...)",
        )
    for flag, value in (("--genomics", args.genomics), ("--clinical", args.clinical)):
        if value and not Path(value).is_file():
            raise UserError(f"{flag} {value}: no such file", "give the table's path (Parquet or CSV)")
    if Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a folder", "give the path of the Parquet file to write")
    writable("--out", args.out, folder=False)
    at_least("--batch-size", args.batch_size, 1, "give the studies per ONNX Runtime call, e.g. --batch-size 16")
    from radfusion.runtime import require_gpu_provider

    require_gpu_provider(args.device)
    return model_file(args.model)


def _score_table(args: argparse.Namespace, model: Path) -> None:
    """No archive: one row per patient of the genomics/clinical tables (a model that
    needs no image), same schema, same resume."""
    from radfusion.serving.scoring.score import PatientTableError, ResumeError
    from radfusion.serving.scoring.table import score_table

    try:
        summary = score_table(
            model_path=model,
            out=Path(args.out),
            genomics=Path(args.genomics) if args.genomics else None,
            clinical=Path(args.clinical) if args.clinical else None,
            batch_size=args.batch_size,
            device=args.device,
            chunk_size=args.chunk_size,
            fresh=args.fresh,
            threads=args.threads,
        )
    except (ResumeError, PatientTableError, FileNotFoundError) as exc:
        sys.exit(f"radfusion score: {exc}")
    except KeyboardInterrupt:
        _interrupted()
    print(json.dumps(summary, indent=2))


def _serve(args: argparse.Namespace) -> None:
    from radfusion.errors import UserError
    from radfusion.serving.http.auth import TOKENS_ENV, AuthNotConfiguredError
    from radfusion.serving.http.launch import serve_forever
    from radfusion.serving.modelref import ModelNotFoundError
    from radfusion.serving.patients import PatientTableError
    from radfusion.serving.settings import SettingsError

    check_model_file(args.model)
    try:
        serve_forever(model=args.model, host=args.host, port=args.port)
    except ModelNotFoundError as exc:
        raise UserError(str(exc), EXPORT_FIRST) from exc
    except PatientTableError as exc:
        raise UserError(str(exc), "fix the table or RADFUSION_GENOMICS_TABLE / RADFUSION_CLINICAL_TABLE") from exc
    except SettingsError as exc:
        raise UserError(str(exc), "fix the variable or unset it (radfusion settings lists them)") from exc
    except AuthNotConfiguredError as exc:
        fix = None if "; " in str(exc) else f"set {TOKENS_ENV}, or serve on 127.0.0.1"
        raise UserError(str(exc), fix) from exc


def _report(args: argparse.Namespace) -> None:
    from radfusion.errors import UserError, checkpoint_problem

    if args.run is None and args.scores is None:
        raise UserError(
            "no --run and no --scores: nothing to report",
            "give --run RUN_FOLDER (the evidence report), --scores SCORES.parquet (a scoring run's figures), or both",
        )
    if args.run is None:
        for flag, value in (("--checkpoint", args.checkpoint), ("--cv", args.cv)):
            if value:
                raise UserError(f"{flag} belongs to the evidence report of a run", "give --run RUN_FOLDER with it")
    run = Path(args.run) if args.run is not None else None
    if run is not None and not run.is_dir():
        raise UserError(
            f"--run {run} {'is not a folder' if run.exists() else 'does not exist'}",
            "give the run folder radfusion train wrote (its --trainer.default_root_dir) or radfusion demo's --out",
        )
    if args.checkpoint and (problem := checkpoint_problem(args.checkpoint)):
        raise UserError(f"--checkpoint {args.checkpoint}: {problem}", CHECKPOINT_FIX)
    if args.cv and not Path(args.cv).exists():
        raise UserError(f"--cv {args.cv} does not exist", "give a radfusion cv output folder or its cv.json")
    if args.out:
        writable("--out", args.out)
    for flag, folder in (("--run", run), ("--scores", Path(args.scores).parent if args.scores else None)):
        if folder is not None and not args.out:
            writable(flag, folder)  # the report goes beside it

    scores_path = None
    if args.scores is not None:
        # First (seconds; a wrong --scores fails before minutes of analyses), and with no
        # torch: a serving install draws a scoring run's figures too.
        from radfusion.serving.scoring.report import write_scores_report

        scores_path, _ = write_scores_report(Path(args.scores), Path(args.out) if args.out else None)
    if run is not None:
        from radfusion.training.report.build import build_report

        quiet_libraries()
        cases = args.saliency_cases
        path = build_report(
            run,
            out=Path(args.out) if args.out else None,
            checkpoint=Path(args.checkpoint) if args.checkpoint else None,
            saliency_cases=cases,
            cv=Path(args.cv) if args.cv else None,
        )
        print(f"report: {path}")
    if scores_path is not None:
        print(f"scores report: {scores_path}")


def _demo(args: argparse.Namespace) -> None:
    at_least("--patients", args.patients, 1, "ask for one patient or more, e.g. --patients 800")
    at_least("--epochs", args.epochs, 1, "train for one epoch or more, e.g. --epochs 20")
    from radfusion.cli.demo import run_demo

    summary = run_demo(Path(args.out), patients=args.patients, epochs=args.epochs, full=args.full)
    missed = [name for name, ok in summary["checks"].items() if ok is False]
    if missed:
        sys.exit(f"radfusion demo: {len(missed)} check(s) not met: {', '.join(missed)}; see {args.out}/summary.json")


class _ServeHelp(argparse.Action):
    """`radfusion serve --help` lists the service's RADFUSION_* settings below the
    options; read only when asked (the settings module costs every other command
    most of a second to import)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace, values, option_string=None) -> NoReturn:
        from dataclasses import fields

        from radfusion.serving.settings import DeclaredSettings, LaunchSettings, ServiceSettings, shown_default

        lines = ["settings (environment variables, read and checked when the service starts):"]
        for cls in (LaunchSettings, DeclaredSettings, ServiceSettings):
            for f in fields(cls):
                lines.append(f"  {f.metadata['env']} (default {shown_default(f.default)}): {f.metadata['meaning']}")
        parser.epilog = "\n".join(lines)
        parser.print_help()
        parser.exit()


def _named(item: str) -> tuple[str, str]:
    name, sep, path = item.partition("=")
    if not sep:
        return Path(item).parent.parent.name, item
    return name, path


def _add_study_budget(p: argparse.ArgumentParser) -> None:
    """What one study may cost; a study over it is its own error row (study_over_budget
    or upload_too_large), the run goes on."""
    from radfusion.limits import StudyBudget

    default = StudyBudget()
    p.add_argument(
        "--study-max-bytes",
        type=int,
        default=default.max_bytes,
        help="stored (uncompressed) bytes of one study, zip members and DICOMweb instances included",
    )
    p.add_argument("--study-max-files", type=int, default=default.max_files, help="files (instances) of one study")
    p.add_argument(
        "--study-max-decoded-bytes",
        type=int,
        default=default.max_decoded_bytes,
        help="bytes of the chosen series' values once decoded (float32), checked before decoding",
    )
    p.add_argument(
        "--study-max-voxels",
        type=int,
        default=default.max_voxels,
        help="voxels of one study's volume resampled to the model's spacing",
    )
    p.add_argument(
        "--study-max-seconds",
        type=float,
        default=default.max_seconds,
        help="wall time to read and preprocess one study",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radfusion",
        description=__doc__,
        epilog="Exit status: 0 success, 1 a problem with what was given (one line on stderr: "
        "radfusion <command>: <problem>; <what to do>), 2 a usage error. The options above go "
        "before the command: radfusion --debug score ...",
    )
    parser.add_argument("--version", action="version", version=f"radfusion {package_version()}")
    parser.add_argument("--debug", action="store_true", help="on an error, print the traceback instead of one line")
    parser.add_argument(
        "--log-level",
        choices=list(LOG_LEVELS),
        default="info",
        help="radfusion's own log records on stderr (default info); other libraries log warnings only, "
        "everything at debug",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only (--log-level warning)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "synth",
        help="write a synthetic radiogenomic cohort (DICOM + genomics + outcomes)",
        description="Geometry and storage options override the --preset's, which override the defaults. "
        "MM and N options take one value or a LOW-HIGH range drawn per patient; one value of "
        "--pixel-spacing or --slice-thickness is drawn within 6.7% and 10% of it.",
    )
    p.add_argument(
        "--patients",
        metavar="N|N1,N2,...",
        default="400",
        help="patients (default 400); with --sites, patients PER SITE, or one count per site",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the cohort's folder (with --sites: holds site-1 ... site-N)")
    p.add_argument("--genes", type=int, default=300)
    p.add_argument(
        "--preset",
        choices=["clinical"],
        help="clinical: 512 x 512, 0.6-0.8 mm pixels, 1-2.5 mm slices, 150-400 slices, "
        "10%% RLE, 30%% JPEG 2000, 30%% JPEG-LS, the rest uncompressed",
    )
    p.add_argument("--slices", metavar="N|LOW-HIGH", help="slices per study (default 32)")
    p.add_argument("--size", type=int, help="rows and columns of each slice (default 64)")
    p.add_argument(
        "--fov-mm", metavar="MM|LOW-HIGH", help="field of view: pixel spacing = FOV / size (default 384, 6 mm at 64)"
    )
    p.add_argument("--pixel-spacing", metavar="MM|LOW-HIGH", help="pixel spacing instead of --fov-mm")
    p.add_argument("--slice-thickness", metavar="MM|LOW-HIGH", help="slice thickness and spacing (default 5)")
    p.add_argument("--rle-fraction", type=float, help="share of studies RLE Lossless (default 0.25)")
    p.add_argument("--j2k-fraction", type=float, help="share of studies JPEG 2000 Lossless (default 0)")
    p.add_argument("--jpegls-fraction", type=float, help="share of studies JPEG-LS Lossless (default 0)")
    p.add_argument("--workers", type=int, default=2)
    sites = p.add_argument_group(
        "sites (federated training)",
        "--sites N writes OUT/site-1 ... OUT/site-N, each an ordinary cohort, from one shared biology (gene "
        "panel, driver genes, outcome model), and OUT/sites.json with what each site drew from the seed: "
        "scanner vendor and kernel, noise sd x0.7-1.6, HU offset -20..+20, slice thickness x0.6-1.2 (slice "
        "count scaled to cover the same length), response log-odds shifted by -2..+2, missing genes",
    )
    sites.add_argument("--sites", type=int, metavar="N", help="write N sites that differ as hospitals do")
    sites.add_argument(
        "--site-missing-genes",
        type=float,
        metavar="SHARE",
        help="share of the panel genes (driver and mutation genes kept) that each site but the first lacks, "
        "a set of its own (default 0.1)",
    )
    sites.add_argument(
        "--site-without-omics",
        action="append",
        metavar="K[,K]",
        help="site K has no genomics table and no omics files (repeatable)",
    )
    sites.add_argument(
        "--site-without-images", action="append", metavar="K[,K]", help="site K has no dicom/ folder (repeatable)"
    )
    p.set_defaults(func=_synth)

    sub.add_parser(
        "train",
        help="train with LightningCLI: radfusion train [fit|validate|test|predict] --config A.yaml "
        "[--config B.yaml] [--key value] (no subcommand: fit; see radfusion train fit --help)",
        add_help=False,
    )
    for name, text in PACS_COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    sub.add_parser(
        "cv",
        help="K-fold cross-validation of a training config beside classical baselines "
        "(radfusion cv --config A.yaml ... --folds 5; see radfusion cv --help)",
        add_help=False,
    )
    sub.add_parser(
        "federate",
        help="train across sites on Flower (simulate | keys | server | register | site | run; "
        "in .venv-federate, see radfusion federate --help)",
        add_help=False,
    )

    p = sub.add_parser("evaluate", help="held-out metrics for checkpoints (NAME=PATH ...)")
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        help="NAME=PATH; the same NAME again for the same model trained with another seed: one row with "
        "the metric's spread over seeds",
    )
    p.add_argument("--out", required=True)
    p.add_argument(
        "--baselines",
        default="default",
        help="classical baselines fitted on each model's split and table features and scored on the same "
        "test patients: default (survival: coxnet, cox_ridge, rsf; classification: logistic, "
        "gradient_boosting; the slow ones skipped on wide tables), none, or a comma-separated list",
    )
    p.add_argument("--json", action="store_true", help="print metrics.json instead of the Markdown table")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("export", help="checkpoint -> ONNX with contract, parity check, BentoML store")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--no-register", action="store_true", help="skip the BentoML model store")
    p.add_argument(
        "--cohort",
        help="the cohort whose validation and test patients calibrate the model and check parity (default: the "
        "one it was trained on, where it lies now; a federated model: one site's cohort)",
    )
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="keep temperature 1 instead of fitting temperature scaling on the validation split",
    )
    p.add_argument(
        "--coverage",
        type=_coverage,
        default=DEFAULT_COVERAGE,
        help="a classification network's conformal prediction sets hold the true label with this probability "
        "per label, calibrated on the test split (0: no sets)",
    )
    p.add_argument(
        "--model",
        default="network",
        help="what is exported: the checkpoint's network (default), or a linear classical baseline (coxnet, "
        "cox_ridge, logistic) fitted on its training patients with the same inputs and contract, for a cohort "
        "where `radfusion cv` found it better",
    )
    p.add_argument(
        "--tune-runtime",
        action="store_true",
        help="time how ONNX Runtime runs the model fastest on this machine (graph layout, threads, spinning; "
        "tens of seconds) and record it in the model: for a model served where it is exported",
    )
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "score", help="score every study of an archive (or every patient of the tables) into Parquet (resumable)"
    )
    p.add_argument(
        "--archive",
        "--dicom",  # the name cohort build and deid give a DICOM input
        help="folder tree (zip files inside are read too), a .zip, or a DICOMweb root URL; without it, "
        "every patient of --genomics/--clinical is scored from the tables alone (a model that needs no image)",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL_TAG,
        help="ONNX file, or BentoML model tag (default: the latest model radfusion export registered)",
    )
    p.add_argument("--genomics", help="genomics table (Parquet/CSV), joined on PatientID")
    p.add_argument(
        "--clinical",
        help="clinical covariates (Parquet/CSV: patient_id + the model's covariate columns), "
        "joined on PatientID, for a model with a clinical block",
    )
    p.add_argument("--out", required=True, help="Parquet file; <out>.parts holds committed rows while running")
    p.add_argument("--batch-size", type=int, default=16, help="studies per ONNX Runtime call")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that read and preprocess studies (default: CPU count; 0: none)",
    )
    p.add_argument("--chunk-size", type=int, default=256, help="rows per committed part file")
    p.add_argument("--fresh", action="store_true", help="ignore rows of an earlier run and score everything again")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op threads (default: cores left free by the workers, at least 1)",
    )
    p.add_argument(
        "--engine", choices=["local", "ray"], default="local", help="ray: Ray Data on RAY_ADDRESS or a local Ray"
    )
    p.add_argument("--actors", type=int, default=1, help="ray engine: inference actors, one ORT session each")
    p.add_argument(
        "--gpus-per-actor", type=float, default=0.0, help="ray engine: GPUs per inference actor (fractions allowed)"
    )
    _add_study_budget(p)
    p.set_defaults(func=_score)

    p = sub.add_parser(
        "serve",
        help="run the BentoML HTTP service",
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-h", "--help", action=_ServeHelp, help="show this help, with the service's settings, and exit")
    p.add_argument("--model", default=DEFAULT_MODEL_TAG, help="ONNX file or BentoML model tag (default: latest export)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=_serve)

    p = sub.add_parser(
        "report",
        help="evidence report (genes, saliency, risk groups, treatments, calibration, training curves) as HTML; "
        "--scores: a scoring run's predictions and failures",
    )
    p.add_argument(
        "--run",
        help="run folder: fusion/checkpoints/best.ckpt or checkpoints/best.ckpt, metrics.json, model.onnx",
    )
    p.add_argument(
        "--scores",
        help="a radfusion score output (Parquet): writes <name>.html and <name>.png with the predicted "
        "probabilities, the rows scored and failed, and the failures by reason (no torch needed)",
    )
    p.add_argument("--checkpoint", help="checkpoint to explain (default: the run folder's)")
    p.add_argument("--out", help="output folder (default: <run>/report, and the Parquet file's folder for --scores)")
    p.add_argument(
        "--cv",
        help="a radfusion cv output folder or its cv.json, shown beside the evaluation "
        "(default: <run>/cv.json or <run>/cv/cv.json when present)",
    )
    p.add_argument(
        "--saliency-cases",
        type=_count_or_all,
        default=40,
        metavar="N|all",
        help="held-out studies to explain by occlusion (default 40; all: every one; 0: none)",
    )
    p.set_defaults(func=_report)

    p = sub.add_parser("demo", help="synth -> cohort build -> train -> evaluate -> export -> serve -> score -> report")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--patients", type=int, default=800)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument(
        "--full",
        action="store_true",
        help="train all nine models (four fusion strategies, the unimodal baselines, three survival models), "
        "not only the exported fusion model and its two baselines",
    )
    p.set_defaults(func=_demo)

    from radfusion.deid.command import add_deid_command

    add_deid_command(sub)

    from radfusion.cohort_manifest.command import add_cohort_command

    add_cohort_command(sub)

    from radfusion.cli.errors import add_errors_command

    add_errors_command(sub)

    from radfusion.cli.settings import add_settings_command

    add_settings_command(sub)
    return parser


# A package only an extra installs -> that extra: a core-only install names what to add
# instead of ending in a traceback.
EXTRA_OF = {
    **dict.fromkeys(("torch", "lightning", "monai", "jsonargparse", "torchmetrics", "captum", "lifelines"), "train"),
    **dict.fromkeys(("sklearn", "sksurv", "matplotlib", "onnxscript", "einops"), "train"),
    **dict.fromkeys(("bentoml", "pynetdicom", "highdicom"), "serve"),
    "onnxruntime": "cpu",
    "ray": "cluster",
    **dict.fromkeys(("flwr", "dp_accounting", "tomli_w"), "federate"),
}


# Nothing leaves the host: the libraries' usage statistics off in this process and the
# processes it starts (BentoML's servers, Ray's workers), unless the operator set them.
NO_TELEMETRY = {"BENTOML_DO_NOT_TRACK": "True", "RAY_USAGE_STATS_ENABLED": "0"}


# Commands that read a hospital's studies: every log record of theirs is redacted.
STUDY_READERS = ("score", "serve", "listen", "pacs-status", "deid")


@dataclass
class GlobalOptions:
    """The options before the command: ``radfusion [--debug] [--log-level L | -q] COMMAND``."""

    debug: bool = False
    version: bool = False
    log_level: int = logging.INFO
    tokens: list[str] = field(default_factory=list)  # as given, for a command run again (DDP ranks)


def split_global_options(argv: list[str]) -> tuple[GlobalOptions, list[str]]:
    """The leading global options, and the command with its arguments. Stops at the
    first argument that is not one (the command, -h, or an unknown option argparse
    then reports)."""
    options = GlobalOptions()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--debug":
            options.debug = True
        elif arg == "--version":
            options.version = True
        elif arg in ("-q", "--quiet"):
            options.log_level = logging.WARNING
        elif arg == "--log-level" or arg.startswith("--log-level="):
            if arg == "--log-level":
                if i + 1 >= len(argv):
                    build_parser().error("argument --log-level: expected one argument")
                i += 1
                value = argv[i]
            else:
                value = arg.partition("=")[2]
            if value.lower() not in LOG_LEVELS:
                build_parser().error(
                    f"argument --log-level: invalid choice: {value!r} (choose from {', '.join(LOG_LEVELS)})"
                )
            options.log_level = LOG_LEVELS[value.lower()]
        else:
            break
        i += 1
    options.tokens = argv[:i]
    return options, argv[i:]


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("radfusion")
    except PackageNotFoundError:
        return "unknown (not installed)"


# The global options as given, for `radfusion train`'s command line (run again by DDP).
_global_tokens: list[str] = []


def _command_label(rest: list[str]) -> str:
    """What the error line names: ``score``, ``cohort build``, ``train validate``."""
    if not rest:
        return "radfusion"
    words = rest[:1]
    if len(rest) > 1 and (
        (rest[0] == "cohort" and not rest[1].startswith("-")) or (rest[0] == "train" and rest[1] in TRAIN_SUBCOMMANDS)
    ):
        words.append(rest[1])
    return " ".join(words)


def main(argv: list[str] | None = None) -> None:
    """Exit status 0 on success, 1 on an error of what was given (one line on stderr,
    ``radfusion <command>: <problem>; <what to do>``; the traceback with --debug), 2 on a
    usage error (argparse's)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for name, value in NO_TELEMETRY.items():
        os.environ.setdefault(name, value)
    options, rest = split_global_options(argv)
    if options.version:
        print(f"radfusion {package_version()}")
        return
    if rest and rest[0] in STUDY_READERS:
        # Before anything logs: library warnings quote UIDs, header values and file
        # paths of the archive. (Training and the other commands work on the operator's
        # own files, whose paths their logs should name: where a checkpoint was restored.)
        log_privacy.install()
    configure_logging(options.log_level)
    _global_tokens[:] = options.tokens
    command = _command_label(rest)
    try:
        _dispatch(rest)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if top not in EXTRA_OF or options.debug:
            raise
        sys.exit(
            f"radfusion {command}: needs {top}, which this installation lacks; "
            f"install the '{EXTRA_OF[top]}' extra: pip install 'radfusion[{EXTRA_OF[top]}]'"
        )
    except (OSError, ValueError) as exc:
        message = user_error_message(exc, hide_paths=bool(rest) and rest[0] in STUDY_READERS)
        if message is None or options.debug:
            raise
        sys.exit(f"radfusion {command}: {message}")


def _dispatch(argv: list[str]) -> None:
    if argv and argv[0] == "train":
        _train(argv[1:])
        return
    if argv and argv[0] == "cv":
        _cv(argv[1:])
        return
    if argv and argv[0] == "federate":
        # Flower's own environment (.venv-federate: make federate-venv), see training/federated.
        from radfusion.training.federated.command import main as federate_main

        federate_main(argv[1:])
        return
    if argv and argv[0] in PACS_COMMANDS:
        from radfusion.serving.pacs.cli import main as pacs_main

        pacs_main(argv)
        return
    args = build_parser().parse_args(argv)
    args.func(args)
