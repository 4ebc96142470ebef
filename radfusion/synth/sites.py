"""`radfusion synth --sites N`: N cohorts that differ as hospitals do, drawn from one
shared biology, for federated training.

Every site is an ordinary cohort folder (out/site-1 ... out/site-N, as generate_cohort
writes one) with the same gene panel, driver genes and outcome model: the panel's
streams are keyed by the seed alone, the patients' and studies' by the seed and the
site index. What differs, drawn from the seed and the site index (so site k is the
same whatever N is), is recorded in out/sites.json:

* scanner: a vendor (the four vendors dealt out in a drawn order, so up to four sites
  have different ones), a kernel as smooth or sharp as its noise, the noise sd x0.7-1.6
  and an HU offset of -20..+20 over the whole volume;
* slice thickness: the given thickness x0.6, 0.8, 1.0 or 1.2 (also dealt out), with the
  slice count scaled the other way so a scan covers the same length of body;
* patient mix: the response log-odds shifted by -2..+2 (the effects of image, genes
  and treatment unchanged), so the response rate differs;
* gene panel: every site but the first lacks a share (`missing_genes`) of the panel's
  genes other than the driver and mutation genes, a set of its own (absent from its
  genomics table and omics files, not empty columns), so each site's genomic score and
  mutation calls stay as they are;
* modalities: sites named in `without_omics` have no genomics table and no omics files,
  those in `without_images` no dicom/ folder.

Patient ids carry the site ("S2-RFP..."), and with them every DICOM UID; study folders
too. The default cohort (no sites) is untouched by any of this.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radfusion.errors import UserError
from radfusion.synth.cohort import MAX_SPACING_MM, MIN_GENES, MIN_SLICES, SliceCount, generate_cohort, written_by_us
from radfusion.synth.genomics_model import MUTATION_GENES, build_panel_model
from radfusion.synth.phantom import NOISE_STD_HU
from radfusion.synth.random_streams import PANEL, SITES, stream
from radfusion.synth.site_profile import SiteProfile
from radfusion.synth.study_spec import HISTORIC_SLICE_THICKNESS_MM, SCANNERS
from radfusion.synth.truth import GENERATOR_VERSION, write_json

log = logging.getLogger(__name__)

SITES_FILE = "sites.json"
MAX_SITES = 64
NOISE_SCALE = (0.7, 1.6)
HU_OFFSET = (-20.0, 20.0)
RESPONSE_SHIFT = (-2.0, 2.0)  # log-odds: a response rate of about 33-60% (47% unshifted)
THICKNESS_FACTORS = (0.6, 0.8, 1.0, 1.2)
# Per vendor (a key of SCANNERS): a smooth, a standard and a sharp reconstruction kernel.
KERNELS = {
    "site_A": ("B20f", "B30f", "B50f"),
    "site_B": ("SOFT", "STANDARD", "LUNG"),
    "site_C": ("A", "B", "C"),
    "site_D": ("FC03", "FC08", "FC52"),
}
DEFAULT_MISSING_GENES = 0.1


def _kernel(vendor: str, noise_scale: float) -> str:
    """A sharper kernel gives a noisier image: the kernel follows the drawn noise."""
    smooth, standard, sharp = KERNELS[vendor]
    return smooth if noise_scale < 1.0 else standard if noise_scale < 1.3 else sharp


def _scaled(value: Any, factor: float, most: float) -> Any:
    if isinstance(value, tuple):
        return tuple(_scaled(v, factor, most) for v in value)
    return min(round(float(value) * factor, 4), most)


def draw_site(
    seed: int,
    index: int,
    *,
    n_genes: int,
    slice_thickness_mm: float | tuple[float, float] = HISTORIC_SLICE_THICKNESS_MM,
    missing_genes: float = DEFAULT_MISSING_GENES,
    omics: bool = True,
    images: bool = True,
) -> SiteProfile:
    """Site `index` (1-based): the same profile for this seed whatever the number of sites."""
    order = stream(seed, SITES)  # dealt out once per seed: sites 1-4 get different ones
    vendors = [sorted(SCANNERS)[int(i)] for i in order.permutation(len(SCANNERS))]
    factors = [THICKNESS_FACTORS[int(i)] for i in order.permutation(len(THICKNESS_FACTORS))]
    rng = stream(seed, SITES, 0, site=index)
    noise_scale = round(float(rng.uniform(*NOISE_SCALE)), 3)
    vendor = vendors[(index - 1) % len(vendors)]
    dropped: tuple[str, ...] = ()
    if index > 1 and omics and missing_genes > 0:
        panel = build_panel_model(n_genes, stream(seed, PANEL))
        kept = [*panel.driver_idx, *(i for i, g in enumerate(panel.genes) if g in MUTATION_GENES)]
        others = np.setdiff1d(np.arange(n_genes), kept)
        chosen = stream(seed, SITES, 1, site=index).choice(others, round(missing_genes * len(others)), replace=False)
        dropped = tuple(panel.genes[int(i)] for i in np.sort(chosen))
    return SiteProfile(
        index=index,
        scanner=vendor,
        kernel=_kernel(vendor, noise_scale),
        noise_scale=noise_scale,
        hu_offset=round(float(rng.uniform(*HU_OFFSET)), 2),
        slice_thickness_mm=_scaled(slice_thickness_mm, factors[(index - 1) % len(factors)], MAX_SPACING_MM),
        response_shift=round(float(rng.uniform(*RESPONSE_SHIFT)), 3),
        dropped_genes=dropped,
        omics=omics,
        images=images,
    )


def site_slices(n_slices: SliceCount, base_mm: Any, site_mm: Any) -> SliceCount:
    """The slice count that covers the same length at the site's thickness as
    `n_slices` at the given one (never under MIN_SLICES)."""
    factor = _centre(base_mm) / _centre(site_mm)
    if isinstance(n_slices, tuple):
        low, high = (max(MIN_SLICES, round(n * factor)) for n in n_slices)
        return (low, high) if high > low else low
    return max(MIN_SLICES, round(n_slices * factor))


def _centre(value: Any) -> float:
    return (value[0] + value[1]) / 2 if isinstance(value, tuple) else float(value)


def _site_list(flag: str, sites: Collection[int], n_sites: int) -> set[int]:
    wrong = sorted(k for k in sites if not 1 <= k <= n_sites)
    if wrong:
        raise UserError(f"{flag} names site {wrong[0]}, not one of 1..{n_sites}", f"give site numbers 1 to {n_sites}")
    return set(sites)


def _patients_per_site(n_patients: int | Sequence[int], n_sites: int) -> list[int]:
    counts = [n_patients] * n_sites if isinstance(n_patients, int) else list(n_patients)
    if len(counts) != n_sites:
        raise UserError(f"{len(counts)} patient counts for {n_sites} sites", "give one count, or one per site")
    return counts


def _prepare(out: Path, n_sites: int) -> None:
    """Site folders of ours (from an earlier run, more sites included) are replaced;
    a folder with anything else in it is refused."""
    earlier = out / SITES_FILE
    folders = {out / f"site-{k}" for k in range(1, n_sites + 1)}
    if earlier.exists():
        named = [str(s.get("folder", "")) for s in json.loads(earlier.read_text()).get("sites", [])]
        folders |= {out / name for name in named if re.fullmatch(r"site-\d+", name)}
        earlier.unlink()
    for folder in sorted(folders):
        if folder.exists() and any(folder.iterdir()):
            if not written_by_us(folder):
                raise UserError(f"{folder} is not empty and was not written by radfusion synth", "give a new folder")
            shutil.rmtree(folder)


def generate_sites(
    out: Path,
    n_sites: int,
    n_patients: int | Sequence[int] = 400,
    seed: int = 0,
    n_genes: int = 300,
    *,
    missing_genes: float = DEFAULT_MISSING_GENES,
    without_omics: Collection[int] = (),
    without_images: Collection[int] = (),
    **cohort: Any,
) -> dict[str, Any]:
    """Write out/site-1 ... out/site-N (`n_patients` each, or one count per site) and
    out/sites.json; returns what sites.json holds. `cohort` is generate_cohort's other
    arguments (geometry, storage, genomics_missing_fraction, workers), shared by all."""
    if not 1 <= n_sites <= MAX_SITES:
        raise UserError(f"--sites must be within 1..{MAX_SITES}, not {n_sites}", "e.g. --sites 4")
    if n_genes < MIN_GENES:
        raise UserError(f"--genes must be at least {MIN_GENES}, not {n_genes}", "ask for more genes")
    if not 0.0 <= missing_genes < 1.0:
        raise UserError(f"--site-missing-genes must be within [0, 1), not {missing_genes}", "e.g. 0.1")
    no_omics = _site_list("--site-without-omics", without_omics, n_sites)
    no_images = _site_list("--site-without-images", without_images, n_sites)
    if no_omics & no_images:
        bare = min(no_omics & no_images)
        raise UserError(f"site {bare} would have neither images nor omics", "leave each site one of them")
    counts = _patients_per_site(n_patients, n_sites)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder", "give a new or empty folder for the sites")
    out.mkdir(parents=True, exist_ok=True)
    _prepare(out, n_sites)
    base_mm = cohort.pop("slice_thickness_mm", HISTORIC_SLICE_THICKNESS_MM)
    base_slices = cohort.pop("n_slices", 32)
    entries = []
    for k in range(1, n_sites + 1):
        site = draw_site(
            seed,
            k,
            n_genes=n_genes,
            slice_thickness_mm=base_mm,
            missing_genes=missing_genes,
            omics=k not in no_omics,
            images=k not in no_images,
        )
        n_slices = site_slices(base_slices, base_mm, site.slice_thickness_mm)
        log.info("site %d of %d: %d patients", k, n_sites, counts[k - 1])
        folder = generate_cohort(
            out / site.name,
            counts[k - 1],
            seed,
            n_genes,
            n_slices=n_slices,
            slice_thickness_mm=site.slice_thickness_mm,
            site=site,
            **cohort,
        )
        entries.append(_entry(folder, site, n_slices))
    drivers = json.loads((out / entries[0]["folder"] / "truth.json").read_text())["driver_genes"]
    document = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "n_sites": n_sites,
        "driver_genes": drivers,  # shared: every site's truth.json names the same
        "sites": entries,
    }
    write_json(document, out / SITES_FILE)  # last: marks a complete set of sites
    return document


def _entry(folder: Path, site: SiteProfile, n_slices: SliceCount) -> dict[str, Any]:
    """One site in sites.json: its profile, what it was written with, and what came out."""
    summary = json.loads((folder / "cohort.json").read_text())
    truth = json.loads((folder / "truth.json").read_text())
    manufacturer, model = SCANNERS[site.scanner][:2]
    probabilities = [p["response_probability"] for p in truth["patients"]]
    return {
        "folder": folder.name,
        **site.record(),
        "manufacturer": manufacturer,
        "model": model,
        "noise_sd_hu": round(NOISE_STD_HU * site.noise_scale, 3),
        "n_slices": list(n_slices) if isinstance(n_slices, tuple) else n_slices,
        "n_patients": summary["n_patients"],
        "response_rate": summary["response_rate"],
        "mean_response_probability": round(float(np.mean(probabilities)), 6),
    }
