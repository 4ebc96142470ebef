"""The released tables: genomics (expression + mutation flags) and clinical.

Both are written as CSV and Parquet with identical content. Patients without
released genomics simply have no genomics row, as in a real cohort where
sequencing failed or was never ordered.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.synth.genomics_model import MUTATION_GENES
from radfusion.synth.patients import SimulatedCohort

CLINICAL_COLUMNS = (
    "patient_id",
    "treatment",
    "response",
    "survival_months",
    "event",
    "subtype",
    "sex",
    "age",
    "site",
)
MUTATION_COLUMNS = tuple(f"{gene}_mut" for gene in MUTATION_GENES)


def genomics_table(cohort: SimulatedCohort) -> pd.DataFrame:
    """patient_id, one column per measured gene (a site's panel may lack some), then the
    *_mut flags; released rows only."""
    rows = [p.index for p in cohort.patients if p.has_genomics]
    frame = pd.DataFrame(cohort.measured_expression(rows), columns=cohort.measured_genes)
    frame.insert(0, "patient_id", [cohort.patients[i].patient_id for i in rows])
    for gene, column in zip(MUTATION_GENES, MUTATION_COLUMNS, strict=True):
        frame[column] = np.array([cohort.patients[i].mutations[gene] for i in rows], dtype=np.int64)
    return frame


def clinical_table(cohort: SimulatedCohort) -> pd.DataFrame:
    """One row per patient, observed clinical variables and outcomes only."""
    records = [{column: getattr(p, column) for column in CLINICAL_COLUMNS} for p in cohort.patients]
    frame = pd.DataFrame.from_records(records, columns=list(CLINICAL_COLUMNS))
    return frame.astype({"response": np.int64, "event": np.int64, "age": np.int64})


def write_table(frame: pd.DataFrame, out: Path, stem: str) -> None:
    """Write `stem`.csv and `stem`.parquet with the same content."""
    frame.to_csv(out / f"{stem}.csv", index=False)
    frame.to_parquet(out / f"{stem}.parquet", index=False, engine="pyarrow")
