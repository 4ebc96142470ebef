"""`radfusion cv`: K-fold cross-validation of a training configuration beside the
classical baselines, on the same folds and features.

    radfusion cv --config configs/trainer/cpu.yaml --config configs/model/fusion_cpu.yaml \\
        [--config ...] [--data.cohort_dir X ...] --folds 5 [--repeats 1] [--workers 2] \\
        [--baselines default|none|coxnet,rsf] [--out runs/cv]

Every argument this parser does not know is LightningCLI's, as for `radfusion train`."""

from __future__ import annotations

import argparse
import sys

from radfusion.training.cv.baselines import CLASSIFICATION, SURVIVAL


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: "--fold" must reach LightningCLI's parser unchanged, never be
    # taken for "--folds".
    parser = argparse.ArgumentParser(
        prog="radfusion cv",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--folds", type=int, default=5, help="K: stratified folds (by the target or event)")
    parser.add_argument("--repeats", type=int, default=1, help="repeated CV: K folds this many times, reshuffled")
    parser.add_argument("--workers", type=int, default=1, help="folds trained at once, one process each")
    parser.add_argument(
        "--baselines",
        default="default",
        help=f"default (survival: {','.join(SURVIVAL)}; classification: {','.join(CLASSIFICATION)}), "
        "none, or a comma-separated list",
    )
    parser.add_argument("--out", default="runs/cv", help="folder for cv.json, cv.md, predictions.csv, fold runs")
    return parser


def parse_baselines(text: str) -> tuple[str, ...] | None:
    if text == "default":
        return None
    if text == "none":
        return ()
    return tuple(name.strip() for name in text.split(",") if name.strip())


def main(argv: list[str]) -> dict:
    from radfusion.training.cv.run import CVOptions, run_cv
    from radfusion.training.cv.table import markdown

    options, cli_args = build_parser().parse_known_args(argv)
    if cli_args and cli_args[0] == "fit":
        cli_args = cli_args[1:]
    summary = run_cv(
        cli_args,
        CVOptions(
            folds=options.folds,
            repeats=options.repeats,
            workers=options.workers,
            baselines=parse_baselines(options.baselines),
            out=options.out,
        ),
    )
    sys.stdout.write(markdown(summary))
    return summary
