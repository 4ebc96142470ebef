"""Join patients -> studies -> omics blocks -> outcomes into one manifest.

The manifest (manifest.parquet) has one row per patient known to any input: the kept
study and its main series (files relative to the DICOM root, the selection record as
JSON), the sample behind each omics block, presence flags, the modality pattern, and
the clinical/outcome columns. The joined genomics table (genomics.parquet) holds the
gene-level features (``EGFR``, ``EGFR_mut``, ``EGFR_cn``) per patient. report.json
holds the validation report; training reads all three (training/data.py ``manifest``)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.cohort_manifest.omics_inputs import OmicsSources, block_report, map_blocks, read_blocks
from radfusion.cohort_manifest.outcomes import read_clinical
from radfusion.cohort_manifest.report import validation_report
from radfusion.cohort_manifest.studies import index_cohort_studies
from radfusion.contract import ModelContract
from radfusion.dicom import SelectionRules
from radfusion.genomics import ID_COLUMN, load_genomics_table
from radfusion.omics import join_patient_blocks, read_sample_map

MANIFEST_FILE = "manifest.parquet"
GENOMICS_FILE = "genomics.parquet"
REPORT_FILE = "report.json"


@dataclass
class ManifestInputs:
    dicom: Path
    clinical: Path
    sample_map: Path | None = None
    omics: OmicsSources = field(default_factory=OmicsSources)
    outcomes: tuple[str, ...] = ("response",)
    rules: SelectionRules = field(default_factory=SelectionRules)
    verify_pixels: bool = False
    contract: Path | None = None  # an ONNX model whose gene panels the cohort is checked against


@dataclass
class Manifest:
    table: pd.DataFrame  # index patient_id
    genomics: pd.DataFrame  # index patient_id
    report: dict


log = logging.getLogger(__name__)


def build_manifest(inputs: ManifestInputs) -> Manifest:
    contract = _read_contract(inputs.contract) if inputs.contract is not None else None  # fail before the slow part
    log.info("reading the DICOM tree")
    studies = index_cohort_studies(inputs.dicom, inputs.rules, inputs.verify_pixels)
    log.info("reading the clinical table")
    clinical, clinical_repeats = read_clinical(inputs.clinical, list(inputs.outcomes))
    blocks = []
    if any(v is not None for v in (inputs.omics.expression, inputs.omics.maf, inputs.omics.vcf, inputs.omics.cnv)):
        if inputs.sample_map is None:
            raise ValueError("omics files need a sample map (sample_id -> patient_id): IDs are never guessed")
        sample_map = read_sample_map(inputs.sample_map)
        log.info("reading the omics files")
        blocks = read_blocks(inputs.omics, sample_map)
    mapped = map_blocks(blocks, sample_map) if blocks else []
    genomics = join_patient_blocks([m.values for m in mapped])

    patients = sorted(set(studies.chosen.index) | set(genomics.index) | set(clinical.index))
    table = pd.DataFrame(index=pd.Index(patients, name=ID_COLUMN))
    table = table.join(studies.chosen, how="left")
    table["files"] = [f if isinstance(f, list) else [] for f in table["files"]]
    table["has_image"] = table["study_uid"].notna()
    for block in mapped:
        table[f"{block.name}_sample"] = pd.Series(block.sample_of, dtype=object).reindex(table.index)
        table[f"has_{block.name}"] = table.index.isin(list(block.sample_of))
    table["modalities"] = [modality_pattern(row, [b.name for b in mapped]) for _, row in table.iterrows()]
    outcome = clinical[list(inputs.outcomes)].notna().all(axis=1)
    table["has_outcome"] = outcome.reindex(table.index, fill_value=False).astype(bool)
    clash = set(clinical.columns) & set(table.columns)
    if clash:
        raise ValueError(f"clinical columns clash with manifest columns: {sorted(clash)}")
    table = table.join(clinical, how="left")

    omics_report = {b.name: block_report(block, b) for block, b in zip(blocks, mapped, strict=True)}
    report = validation_report(table, studies, omics_report, clinical_repeats, list(inputs.outcomes))
    report["inputs"] = _inputs_record(inputs)
    if contract is not None:
        report["panel_check"] = panel_check(contract, genomics)
    return Manifest(table, genomics, report)


def modality_pattern(row: pd.Series, blocks: list[str]) -> str:
    present = (["image"] if row["has_image"] else []) + [b for b in blocks if row[f"has_{b}"]]
    if not present:
        return "no image or omics"
    return present[0] + " only" if len(present) == 1 else "+".join(present)


def _read_contract(path: Path) -> ModelContract:
    from radfusion.contract import read_contract_from_onnx

    try:
        return read_contract_from_onnx(Path(path))
    except Exception as exc:  # noqa: BLE001 - any byte sequence: not a model radfusion exported
        raise ValueError(
            f"--contract {Path(path).name} is not an ONNX model with a radfusion contract ({type(exc).__name__})"
        ) from None


def panel_check(contract: ModelContract, genomics: pd.DataFrame) -> dict:
    """Per omics block of the model: panel features the cohort lacks. A block that
    allows imputation lists them too but is not a mismatch."""
    out = {}
    for block in contract.omics:
        missing = [f for f in block.features if f not in genomics.columns]
        out[block.name] = {
            "panel": len(block.features),
            "missing": missing,
            "mismatch": len(missing) > block.max_imputed * len(block.features),
        }
    return out


def _inputs_record(inputs: ManifestInputs) -> dict:
    omics = {k: (str(Path(v).resolve()) if isinstance(v, Path) else v) for k, v in vars(inputs.omics).items()}
    return {
        "dicom": str(Path(inputs.dicom).resolve()),
        "clinical": str(Path(inputs.clinical).resolve()),
        "sample_map": str(Path(inputs.sample_map).resolve()) if inputs.sample_map else None,
        "omics": omics,
        "outcomes": list(inputs.outcomes),
        "verify_pixels": inputs.verify_pixels,
    }


def write_manifest(manifest: Manifest, out: Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest.table.reset_index().to_parquet(out / MANIFEST_FILE, index=False)
    manifest.genomics.reset_index().to_parquet(out / GENOMICS_FILE, index=False)
    (out / REPORT_FILE).write_text(
        json.dumps(manifest.report, indent=1, default=_json_default) + "\n", encoding="utf-8"
    )
    return out


@dataclass
class LoadedManifest:
    table: pd.DataFrame  # index patient_id; "files" are relative to dicom_root
    genomics: pd.DataFrame
    dicom_root: Path
    files: tuple[Path, ...]  # what the manifest consists of (for the cohort hash)


def load_manifest(folder: Path | str) -> LoadedManifest:
    folder = Path(folder)
    table = pd.read_parquet(folder / MANIFEST_FILE)
    table[ID_COLUMN] = table[ID_COLUMN].astype(str)
    table["files"] = [list(f) if f is not None else [] for f in table["files"]]
    report = json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
    genomics = load_genomics_table(folder / GENOMICS_FILE)
    files = (folder / MANIFEST_FILE, folder / GENOMICS_FILE)
    return LoadedManifest(table.set_index(ID_COLUMN), genomics, Path(report["inputs"]["dicom"]), files)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
