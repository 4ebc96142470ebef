"""One site of a multi-site cohort: how its hospital differs from the others.

`generate_cohort(..., site=profile)` writes an ordinary cohort folder from the biology
every site shares (the gene panel, its driver genes and the outcome model, keyed by the
seed alone) with this site's own patients and studies (streams keyed by the site index)
and its own differences: scanner and kernel, image noise and an HU offset, a shift of
the response log-odds, genes its panel lacks, and a modality it may not have. Without
a profile the generator writes the single cohort it always has. sites.py draws the
profiles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SiteProfile:
    index: int  # 1..N: keys the site's random streams (0 is the single cohort's key)
    scanner: str  # a key of study_spec.SCANNERS: manufacturer, model, descriptions
    kernel: str  # reconstruction kernel, smoother or sharper with the noise
    noise_scale: float  # the scanner noise's sd, as a multiple of the phantom's
    hu_offset: float  # added to every voxel (a calibration offset), in HU
    slice_thickness_mm: float | tuple[float, float]  # what generate_cohort draws within
    response_shift: float  # added to the response log-odds of every patient
    dropped_genes: tuple[str, ...] = ()  # panel genes this site does not measure
    omics: bool = True  # False: no genomics table, no omics files
    images: bool = True  # False: no dicom/ folder

    def __post_init__(self) -> None:
        if self.index < 1:
            raise ValueError("a site's index starts at 1")

    @property
    def name(self) -> str:
        """The clinical table's site and every study's InstitutionName."""
        return f"site-{self.index}"

    @property
    def id_prefix(self) -> str:
        """Before each patient id, so ids (and the UIDs made from them) differ across sites."""
        return f"S{self.index}-"

    @property
    def study_prefix(self) -> str:
        """Before each study folder name."""
        return f"s{self.index}_"

    def record(self) -> dict[str, Any]:
        """The values used, as sites.json and truth.json record them."""
        values = asdict(self)
        thickness = self.slice_thickness_mm
        values["slice_thickness_mm"] = list(thickness) if isinstance(thickness, tuple) else thickness
        values["dropped_genes"] = list(self.dropped_genes)
        return {"name": self.name, **values}
