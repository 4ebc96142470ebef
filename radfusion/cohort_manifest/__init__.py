"""The cohort manifest: patients joined to their study (main series chosen, and why),
their omics blocks (through the sample map) and their outcomes, with a validation
report. ``radfusion cohort build`` writes it; training reads it."""

from radfusion.cohort_manifest.build import (
    LoadedManifest,
    Manifest,
    ManifestInputs,
    build_manifest,
    load_manifest,
    write_manifest,
)
from radfusion.cohort_manifest.omics_inputs import OmicsSources
from radfusion.cohort_manifest.report import summary_text

__all__ = [
    "LoadedManifest",
    "Manifest",
    "ManifestInputs",
    "OmicsSources",
    "build_manifest",
    "load_manifest",
    "summary_text",
    "write_manifest",
]
