"""DICOM ingest benchmark: in one run, on the same generated series.

    python -m bench.ingest [--studies 8] [--slices 64] [--size 256] [--epochs 3]

1. ``loader_vs_monai``: series -> preprocessed model input (the contract grid), in
   series per second, radfusion (``load_volume`` + ``preprocess_image``) over MONAI
   (``LoadImage(reader="PydicomReader")`` + ``Orientation`` + ``Spacing`` +
   ``ResizeWithPadOrCrop`` + ``ScaleIntensityRange``, the same steps). Both read the
   same files: each study's main series, linked into a folder of its own because
   MONAI reads a series folder and does no series selection. The mean absolute
   difference and correlation of the two outputs are recorded beside the ratio, to
   show that the work is the same.
2. ``cached_loader_speedup``: samples per second the training DataLoader
   (RadfusionDataModule, train split, augmentation on, model excluded) delivers from a
   warm cache (``cache="persistent"``) over no cache (``cache="none"``).
   ``cached_epoch_speedup``: the time of ``--epochs`` whole epochs without a cache
   over the time with a persistent cache that starts empty (its first epoch fills
   it): what a short training run gains. The in-memory cache is measured beside them.

3. At the size of real studies (300 slices of 512 x 512, uncompressed, JPEG 2000 and
   JPEG-LS): ``vs_dcm2niix``, ``vs_decode_only_j2k``, ``vs_decode_only_jpegls`` and the
   scorer's ``real_size_*`` figures (bench/realsize.py, which says what each is; skip it
   with ``--no-real-size``).

Repeats are interleaved and the best of each is kept: other load on a shared machine
only slows a run down. Results: bench/results/ingest.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from bench.cohorts import build_cohort as shared_cohort

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "ingest.json"
# The demo model's grid (configs/data/synthetic.yaml).
GEOMETRY = dict(target_shape=(32, 48, 48), target_spacing=(5.0, 8.0, 8.0), window=(-150.0, 250.0))


def build_cohort(work: Path, studies: int, slices: int, size: int) -> Path:
    """Uncompressed storage: RLE's pure-Python decoding would time pydicom, not the loaders."""
    return shared_cohort(work, studies, slices, size, n_genes=100, rle_fraction=0.0)


def series_folders(cohort: Path, work: Path) -> list[list[Path]]:
    """Each study's main series (radfusion's choice, the localizer left out) as links
    in a folder of its own; returns the files of each folder."""
    from radfusion.contract import ImageGeometry
    from radfusion.dicom import SelectionRules, find_studies, select_series

    rules = SelectionRules.from_geometry(ImageGeometry(**GEOMETRY))
    root = work / "series"
    shutil.rmtree(root, ignore_errors=True)
    series = []
    for uid, study in sorted(find_studies(cohort / "dicom").studies.items()):
        folder = root / uid
        folder.mkdir(parents=True)
        for header in select_series(study.instances, rules=rules).instances:
            (folder / header.path.name).symlink_to(header.path.resolve())
        series.append(sorted(folder.iterdir()))
    return series


def monai_pipeline():
    from monai.transforms import Compose, LoadImage, Orientation, ResizeWithPadOrCrop, ScaleIntensityRange, Spacing

    low, high = GEOMETRY["window"]
    return Compose(
        [
            LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True),
            Orientation(axcodes="SPL"),  # radfusion's canonical (z, y, x) in LPS: superior, posterior, left
            Spacing(pixdim=GEOMETRY["target_spacing"], mode="bilinear"),
            ResizeWithPadOrCrop(spatial_size=GEOMETRY["target_shape"], mode="constant", constant_values=low),
            ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
        ]
    )


def time_loaders(series: list[list[Path]], repeats: int) -> dict:
    from radfusion.contract import ImageGeometry
    from radfusion.dicom import load_volume
    from radfusion.preprocess import preprocess_image

    geometry = ImageGeometry(**GEOMETRY)
    monai = monai_pipeline()
    runs: dict[str, list[float]] = {"radfusion": [], "monai": []}
    outputs: dict[str, list[np.ndarray]] = {}
    for _ in range(repeats):
        start = time.perf_counter()
        outputs["radfusion"] = [preprocess_image(load_volume(files), geometry) for files in series]
        runs["radfusion"].append(time.perf_counter() - start)
        start = time.perf_counter()
        outputs["monai"] = [np.asarray(monai(str(files[0].parent))) for files in series]
        runs["monai"].append(time.perf_counter() - start)
    ours, theirs = np.stack(outputs["radfusion"]), np.stack(outputs["monai"])
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    best = {k: min(v) for k, v in runs.items()}
    return {
        "loader_vs_monai": round(best["monai"] / best["radfusion"], 3),
        "series_per_second": {k: round(len(series) / v, 3) for k, v in best.items()},
        "all_runs_seconds": {k: [round(t, 3) for t in v] for k, v in runs.items()},
        "output_mean_abs_diff": round(float(np.abs(ours - theirs).mean()), 4),
        "output_correlation": round(float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]), 4),
        "output_shape": list(ours.shape[1:]),
    }


def time_epochs(cohort: Path, cache: str, epochs: int, batch_size: int) -> dict:
    """Setup and each epoch of the train DataLoader, from a cold cache."""
    from radfusion.training.data import RadfusionDataModule

    shutil.rmtree(cohort / ".radfusion", ignore_errors=True)
    start = time.perf_counter()
    dm = RadfusionDataModule(str(cohort), batch_size=batch_size, num_workers=0, cache=cache, **GEOMETRY)
    dm.prepare_data()
    dm.setup("fit")
    setup = time.perf_counter() - start
    loader = dm.train_dataloader()
    times, samples = [], 0
    for _ in range(epochs):
        start = time.perf_counter()
        samples = sum(int(batch["image"].shape[0]) for batch in loader)
        times.append(time.perf_counter() - start)
    return {"setup_s": setup, "epoch_s": times, "samples_per_epoch": samples}


def time_training_loader(cohort: Path, epochs: int, batch_size: int, repeats: int) -> dict:
    runs: dict[str, list[dict]] = {"none": [], "persistent": [], "memory": []}
    for _ in range(repeats):
        for cache in runs:
            runs[cache].append(time_epochs(cohort, cache, epochs, batch_size))
    samples = runs["none"][0]["samples_per_epoch"]
    # best warm epoch (cache filled) vs best epoch without a cache
    warm = {k: min(min(r["epoch_s"][1:]) for r in v) for k, v in runs.items()}
    # whole run: setup + every epoch, the first filling the cache
    whole = {k: min(r["setup_s"] + sum(r["epoch_s"]) for r in v) for k, v in runs.items()}
    uncached_epoch = min(min(r["epoch_s"]) for r in runs["none"])
    return {
        "cached_loader_speedup": round(uncached_epoch / warm["persistent"], 2),
        "cached_epoch_speedup": round(whole["none"] / whole["persistent"], 3),
        "memory_cached_loader_speedup": round(uncached_epoch / warm["memory"], 2),
        "memory_cached_epoch_speedup": round(whole["none"] / whole["memory"], 3),
        "train_samples_per_second": {
            "none": round(samples / uncached_epoch, 2),
            "persistent_warm": round(samples / warm["persistent"], 2),
            "memory_warm": round(samples / warm["memory"], 2),
        },
        "whole_run_seconds": {k: round(v, 3) for k, v in whole.items()},
        "all_runs": {
            k: [{"setup_s": round(r["setup_s"], 3), "epoch_s": [round(t, 3) for t in r["epoch_s"]]} for r in v]
            for k, v in runs.items()
        },
        "train_samples_per_epoch": samples,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-ingest")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-real-size", dest="real_size", action="store_false", help="skip bench/realsize.py")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first fills the cache")
    if args.real_size:
        from bench.realsize import require_dcm2niix

        require_dcm2niix()  # before minutes of the toy-size part, not after

    cohort = build_cohort(args.work, args.studies, args.slices, args.size)
    series = series_folders(cohort, args.work)
    loaders = time_loaders(series, args.repeats)
    training = time_training_loader(cohort, args.epochs, args.batch_size, args.repeats)
    result = {
        "loader_vs_monai": loaders.pop("loader_vs_monai"),
        "cached_loader_speedup": training.pop("cached_loader_speedup"),
        "cached_epoch_speedup": training.pop("cached_epoch_speedup"),
        "series_to_input": loaders,
        "training_loader": training,
        "setup": {
            "studies": args.studies,
            "slices_per_series": [len(s) for s in series],
            "rows": args.size,
            "cols": args.size,
            "storage": "uncompressed",
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "num_workers": 0,
            "repeats": args.repeats,
            **{k: list(v) for k, v in GEOMETRY.items()},
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.real_size:
        from bench import realsize

        result.update(realsize.main(["--ingest-out", str(args.out)])["ingest"])
    return result


if __name__ == "__main__":
    main()
