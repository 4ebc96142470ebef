"""``radfusion pacs-status``: where every study the listener received stands.

Studies are shown by their key (a hash of the Study Instance UID, as in the logs);
``show_uids`` adds the UID itself, for an operator who must find the study in the PACS."""

from __future__ import annotations

import time
from typing import Any

from radfusion.serving.pacs.state import StudyRecord, StudyState
from radfusion.serving.pacs.storage import study_key


def study_row(record: StudyRecord, now: float, show_uids: bool = False) -> dict[str, Any]:
    row: dict[str, Any] = {
        "study": study_key(record.study_uid),
        "status": record.status.value,
        "instances": record.n_instances,
        "version": record.version,
        "attempts": record.attempts,
        "retry_in_s": round(max(0.0, record.next_attempt - now), 1)
        if record.status.value in ("pending", "scored") and record.attempts
        else None,
        "last_error": record.last_error,
        "predicted_label": (record.result or {}).get("predicted_label"),
        # Prediction.summary: the label(s), or "risk <score>" for a survival model.
        "prediction": (record.result or {}).get("summary", (record.result or {}).get("predicted_label")),
        "modalities_used": (record.result or {}).get("modalities_used"),
        # What the missing-data policy did (radfusion.preprocess.ModelInputs.imputation)
        # and its one-line form for the table.
        "imputation": (record.result or {}).get("imputation"),
        "imputed": imputed_summary((record.result or {}).get("imputation")),
        "completeness": (record.result or {}).get("completeness"),
        "files": "deleted" if record.purged is not None else "kept",
        "updated": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.updated)),
    }
    if show_uids:
        row["study_instance_uid"] = record.study_uid
        row["sr_sop_instance_uid"] = record.sr_sop_uid
    return row


def imputed_summary(imputation: dict[str, Any] | None) -> str | None:
    """The blocks that lacked anything, on one line (e.g. "expression 40/100, mutation
    absent (4/5 missing)"); None when nothing was imputed (or the result predates the
    policy)."""
    parts = []
    for block, fill in (imputation or {}).get("blocks", {}).items():
        counted = f"{fill['imputed']}/{fill['of']}"
        if fill.get("treated_as_absent"):
            parts.append(f"{block} absent ({counted} missing)")
        elif fill.get("imputed") or fill.get("unseen_levels"):
            unseen = f" unseen {','.join(fill['unseen_levels'])}" if fill.get("unseen_levels") else ""
            parts.append(f"{block} {counted}{unseen}")
    return ", ".join(parts) or None


def status_report(state: StudyState, show_uids: bool = False, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    return {
        "counts": state.counts(),
        "studies": [study_row(r, now, show_uids) for r in state.studies()],
    }


def format_table(report: dict[str, Any]) -> str:
    counts = "  ".join(f"{k}={v}" for k, v in report["counts"].items())
    columns = [
        "study",
        "status",
        "instances",
        "version",
        "attempts",
        "retry_in_s",
        "files",
        "prediction",
        "imputed",
        "last_error",
    ]
    if report["studies"] and "study_instance_uid" in report["studies"][0]:
        columns.append("study_instance_uid")
    rows = [[("" if r[c] is None else str(r[c])) for c in columns] for r in report["studies"]]
    widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(columns)]
    lines = [counts, "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)
