"""De-identification errors: each says what to fix and never carries a patient value."""

from __future__ import annotations

from radfusion.errors import RadfusionInputError


class DeidKeyError(RadfusionInputError):
    """The pseudonymisation key is missing, too short, or not the key of an existing mapping."""

    kind = "deid_key"


class DeidPathError(RadfusionInputError):
    """--dicom/--out/--mapping are not usable together (missing input, output inside input)."""

    kind = "deid_path"


class DeidRefusedError(RadfusionInputError):
    """A file the Basic Profile cannot make safe without pixel cleaning (burned-in text)."""

    kind = "deid_refused"
