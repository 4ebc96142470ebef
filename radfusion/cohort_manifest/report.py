"""The validation report: counts a data steward checks before training, with the
detail (which patients, samples, studies) in the JSON file. The printed summary holds
counts and reasons only: it ends up in terminals and logs, the IDs do not."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from radfusion.cohort_manifest.studies import StudyIndex


def validation_report(
    table: pd.DataFrame,
    studies: StudyIndex,
    omics: dict[str, dict],
    clinical_repeats: dict[str, int],
    outcomes: list[str],
) -> dict:
    blocks = list(omics)
    with_image = table[table["has_image"]]
    any_omics = table[[f"has_{b}" for b in blocks]].any(axis=1) if blocks else pd.Series(False, index=table.index)
    no_genomics = with_image.index[~any_omics.loc[with_image.index]]
    without_study = {
        name: sorted(
            s
            for p, s in zip(table.index, table[f"{name}_sample"], strict=True)
            if isinstance(s, str) and not table.at[p, "has_image"]
        )
        for name in blocks
    }
    return {
        "patients": len(table),
        "patients_with_image": int(table["has_image"].sum()),
        "modality_patterns": dict(Counter(table["modalities"]).most_common()),
        "genomics_missing": {
            "patients": len(no_genomics),
            "of_patients_with_image": len(with_image),
            "share": round(len(no_genomics) / len(with_image), 6) if len(with_image) else None,
            "patient_ids": list(no_genomics),
        },
        "studies": {
            "found": studies.n_studies,
            "kept": len(studies.chosen),
            "rejected": studies.rejected,
            "rejected_by_reason": dict(Counter(r["reason"] for r in studies.rejected).most_common()),
            "skipped_files_by_reason": studies.skipped_files,
        },
        "omics": omics,
        "samples_without_study": without_study,
        "unmapped_samples": {name: block["unmapped_samples"] for name, block in omics.items()},
        "patients_without_outcome": {
            "outcomes": outcomes,
            "patient_ids": sorted(table.index[~table["has_outcome"]]),
        },
        "duplicates": {
            "studies": studies.duplicates,
            **{name: block["duplicates"] for name, block in omics.items()},
            "clinical_rows": clinical_repeats,
        },
    }


def summary_counts(report: dict) -> dict:
    """The report's counts and reasons, no identifiers (what summary_text shows)."""
    studies = report["studies"]
    return {
        "patients": report["patients"],
        "patients_with_image": report["patients_with_image"],
        "modality_patterns": report["modality_patterns"],
        "genomics_missing": {k: v for k, v in report["genomics_missing"].items() if k != "patient_ids"},
        "studies": {
            "found": studies["found"],
            "kept": studies["kept"],
            "rejected": len(studies["rejected"]),
            "rejected_by_reason": studies["rejected_by_reason"],
            "skipped_files_by_reason": studies["skipped_files_by_reason"],
        },
        "omics": {
            name: {key: block[key] for key in ("features", "samples", "patients", "source")}
            for name, block in report["omics"].items()
        },
        "patients_without_outcome": len(report["patients_without_outcome"]["patient_ids"]),
    }


def summary_text(report: dict) -> str:
    """Counts and reasons, no identifiers."""
    lines = [f"patients: {report['patients']} ({report['patients_with_image']} with a usable study)"]
    lines.append("patients per modality pattern:")
    lines += [f"  {pattern}: {n}" for pattern, n in report["modality_patterns"].items()]
    missing = report["genomics_missing"]
    if missing["share"] is not None:
        lines.append(
            f"without genomics: {missing['patients']} of {missing['of_patients_with_image']} "
            f"patients with a study ({missing['share']:.1%})"
        )
    studies = report["studies"]
    lines.append(f"studies: {studies['found']} found, {studies['kept']} kept, {len(studies['rejected'])} rejected")
    lines += [f"  rejected ({n}): {reason}" for reason, n in studies["rejected_by_reason"].items()]
    lines += [f"  files skipped ({n}): {reason}" for reason, n in studies["skipped_files_by_reason"].items()]
    for name, block in report["omics"].items():
        lines.append(
            f"{name}: {block['features']} features, {block['samples']} samples -> {block['patients']} patients "
            f"({block['source']})"
        )
        lines += [f"  {note}" for note in block["notes"]]
        for label, count in (
            ("samples not in the sample map", len(block["unmapped_samples"])),
            ("samples without a study", len(report["samples_without_study"][name])),
            ("samples with NaN/inf values", len(block["samples_with_nonfinite_values"])),
            ("patients with several samples (first in the map kept)", len(block["duplicates"])),
        ):
            if count:
                lines.append(f"  {label}: {count}")
    lines.append(
        f"patients without outcome ({', '.join(report['patients_without_outcome']['outcomes'])}): "
        f"{len(report['patients_without_outcome']['patient_ids'])}"
    )
    dup = report["duplicates"]
    lines.append(
        f"patients with several studies (one kept): {len(dup['studies'])}; "
        f"repeated clinical rows: {len(dup['clinical_rows'])}"
    )
    for name, check in report.get("panel_check", {}).items():
        state = "MISMATCH" if check["mismatch"] else "ok"
        lines.append(
            f"model panel {name}: {state}, {len(check['missing'])} of {check['panel']} features missing"
            + (f": {', '.join(check['missing'][:20])}" if check["missing"] else "")
        )
    return "\n".join(lines)
