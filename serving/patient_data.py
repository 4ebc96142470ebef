"""What the patient tables hold for one patient (``PatientData``), and the texts that
say where each kind of data came from. Kept apart from the tables (patients.py) so that
the worker processes and Ray tasks that receive it import neither pandas nor the table
readers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from radfusion.errors import RadfusionInputError

GENOMICS, CLINICAL = "genomics", "clinical"

# Where a kind of patient data came from: short texts for score rows and the SR.
NOT_USED = "not used by the model"


def found_in(kind: str) -> str:
    return f"{kind} table"


def not_in(kind: str) -> str:
    return f"patient not in the {kind} table"


def no_values_in(kind: str) -> str:
    return f"no values in the {kind} table"


def no_table(kind: str) -> str:
    return f"no {kind} table given"


class PatientDataMissingError(RadfusionInputError):
    """The model requires data (genomics, clinical covariates) the tables lack for this
    patient. The message never names the patient."""

    kind = "patient_data_missing"
    http_status = 422


@dataclass(frozen=True)
class PatientData:
    """What the tables hold for one patient; travels to worker processes and Ray tasks."""

    genomics: dict[str, Any] | None = None
    clinical: dict[str, Any] | None = None
    genomics_source: str = NOT_USED
    clinical_source: str = NOT_USED
    missing: tuple[str, ...] = ()  # kinds the model requires that the tables lack

    def check(self) -> None:
        if self.missing:
            sources = "; ".join(
                self.genomics_source if kind == GENOMICS else self.clinical_source for kind in self.missing
            )
            raise PatientDataMissingError(f"the model requires {' and '.join(self.missing)} ({sources})")

    def sources(self) -> dict[str, str]:
        return {"genomics_source": self.genomics_source, "clinical_source": self.clinical_source}
