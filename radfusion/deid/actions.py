"""Apply the profile to one dataset, sequences included.

Every element listed in Table E.1-1 gets its action, at the top level and inside any
sequence item (profile.py: the code under the applied options, one choice for combined
codes): X removes (a sequence with all its items), Z empties, D puts a dummy of the
element's VR, U remaps UIDs, C moves dates and times (dates.py) or cleans text
(clean.py), K keeps. Private elements go at every level. Pixel Data is never touched.

Unlisted elements are kept, except that their dates follow the dates choice (moved,
kept, or dummied: an unlisted date such as a Content Item's would otherwise show the
true date and break the kept intervals). Inside the items of a sequence whose action is
D or C (Content Sequence, Verifying Observer Sequence, ...) more must go, but the items
must stay what they are: a Structured Report's content tree stays a content tree.
So there, unlisted elements keep their structure (Value Type, Relationship Type, codes,
templates, numbers, coded values, SOP Class references: STRUCTURE below) while what can
name or date someone is replaced: person names, AE titles and ages become dummies, UIDs
are remapped (consistently with the referenced instances' own), dates follow the dates
choice, and free text becomes a dummy (D) or is cleaned (C, clean.py). The items of a
listed code sequence with action D (Institution Code Sequence, Person Identification
Code Sequence) each become one dummy code: the code itself is what identifies there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.sr.coding import Code

from radfusion.deid.clean import DescriptorCleaner
from radfusion.deid.dates import DateShift
from radfusion.deid.errors import DeidRefusedError
from radfusion.deid.keys import DeidKey
from radfusion.deid.options import Dates, DeidOptions
from radfusion.deid.profile import Action, Option, action_for, resolve, row_for, table_code
from radfusion.deid.uids import remap_uid

DUMMY_TEXT = "DEIDENTIFIED"
_TEMPORAL = {"DA", "DT", "TM"}
_FREE_TEXT = {"SH", "LO", "ST", "LT", "UT", "UC", "UR"}
_CLEANABLE = _FREE_TEXT - {"UR"} | {"CS", "AE"}
_NUMBER_STRINGS = {"DS", "IS"}
_BINARY_PREFIX = "O"  # OB, OD, OF, OL, OV, OW and the ambiguous "OB or OW"
_DUMMY_BY_VR = {
    "AS": "000Y",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "UR": "http://deidentified.invalid/",
}
# A clean Timezone Offset From UTC: no hint of where the patient was.
_DUMMY_BY_KEYWORD = {"TimezoneOffsetFromUTC": "+0000"}
DUMMY_CODE = Code("DEIDENTIFIED", "99RADFUSION", "De-identified")

# What an item of a D or C sequence keeps because it is structure, not content about a
# person: the Code Sequence Macro (PS3.3 Table 8.8-1), template identification, the SR
# content item's Value Type / Relationship Type / Continuity, and SOP Class references.
# (CS, numbers and binary values are kept there anyway; this list names the text, UID
# and date attributes that would otherwise be dummied, remapped or moved. The table's
# own rows come first: Context Group Version, for one, is a date the table moves.)
STRUCTURE = frozenset(
    {
        "CodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "CodeMeaning",
        "LongCodeValue",
        "URNCodeValue",
        "MappingResource",
        "MappingResourceUID",
        "MappingResourceName",
        "ContextIdentifier",
        "ContextUID",
        "ContextGroupExtensionFlag",
        "ContextGroupExtensionCreatorUID",
        "TemplateIdentifier",
        "TemplateVersion",
        "TemplateLocalVersion",
        "TemplateExtensionFlag",
        "ValueType",
        "RelationshipType",
        "ContinuityOfContent",
        "ReferencedSOPClassUID",
        "SOPClassUID",
    }
)


class Mode(Enum):
    """How unlisted elements of a dataset are treated (module docstring)."""

    KEEP = "keep"  # the top level, and items of sequences that are kept or remapped
    DUMMY = "dummy"  # items of a sequence whose action is D
    CLEAN = "clean"  # items of a sequence whose action is C


@dataclass
class PatientContext:
    """What the actions of one file need: the key, the patient's pseudonym and date shift,
    the options, and (once the dataset is seen) the cleaner for its free text."""

    key: DeidKey
    pseudonym: str
    shift: DateShift
    options: DeidOptions = field(default_factory=DeidOptions)
    cleaner: DescriptorCleaner = field(default_factory=lambda: DescriptorCleaner(None))
    counts: Counter = field(default_factory=Counter)


def deidentify_dataset(ds: Dataset, ctx: PatientContext) -> None:
    """De-identify ds in place and record how (PS3.15 E.1.1 items 3-4, PS3.3 C.12.1)."""
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise DeidRefusedError(
            "burned-in annotation: the Basic Profile needs the Clean Pixel Data Option, which radfusion does not do"
        )
    ctx.cleaner = DescriptorCleaner.from_dataset(ds)
    _walk(ds, ctx, Mode.KEEP)
    ds.PatientID = ctx.pseudonym
    ds.PatientName = ctx.pseudonym  # Z allows a dummy; a name keeps PACS displays usable
    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = ctx.options.temporal_state
    ds.DeidentificationMethod = ctx.options.method_text
    ds.DeidentificationMethodCodeSequence = Sequence([_code_item(c) for c in ctx.options.method_codes])
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _clean_file_meta(meta, ds, ctx)


def _clean_file_meta(meta: Dataset, ds: Dataset, ctx: PatientContext) -> None:
    # The table lists the file meta's AE titles and private information (all Type 3):
    # they go; the Media Storage SOP Instance UID follows the dataset's new UID.
    for elem in list(meta):
        if elem.tag != 0x00020003 and action_for(elem.tag, ctx.options.applied) is not None:
            del meta[elem.tag]
    if "SOPInstanceUID" in ds:  # already remapped by the walk
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _walk(ds: Dataset, ctx: PatientContext, mode: Mode) -> None:
    to_shift: list[DataElement] = []
    for elem in list(ds):
        if elem.tag.element == 0:
            # Group lengths (retired) would be wrong once values change: drop them.
            del ds[elem.tag]
            continue
        listed = action_for(elem.tag, ctx.options.applied)
        action = listed if listed is not None else _unlisted_action(elem, mode, ctx.options)
        ctx.counts[action.value] += 1
        if action is Action.CLEAN and elem.VR in _TEMPORAL:
            to_shift.append(elem)
        elif action is Action.CLEAN and elem.VR != "SQ" and (elem.VR not in _CLEANABLE or _modified_time(elem, ctx)):
            # A time that is not a DA/DT/TM (Timezone Offset From UTC, a binary timestamp)
            # cannot be moved: a dummy. Other values that cannot be cleaned (binary): what
            # the Basic Profile says.
            row = row_for(elem.tag)
            fallback = Action.DUMMY if _modified_time(elem, ctx) else resolve(row.basic) if row else Action.REMOVE
            _apply(ds, elem, fallback, ctx, mode)
        else:
            _apply(ds, elem, action, ctx, mode if listed is None else Mode.KEEP)
    _shift_temporal(ds, to_shift, ctx)


def _modified_time(elem: DataElement, ctx: PatientContext) -> bool:
    """Is this C the Modified Dates Option's (a time to move), not a cleaning option's?"""
    row = row_for(elem.tag)
    return (
        row is not None
        and Option.RETAIN_MODIFIED_DATES in ctx.options.applied
        and dict(row.options).get(Option.RETAIN_MODIFIED_DATES) == "C"
    )


def _unlisted_action(elem: DataElement, mode: Mode, options: DeidOptions) -> Action:
    keyword = keyword_for_tag(elem.tag)
    if keyword in STRUCTURE or elem.VR == "SQ":
        return Action.KEEP  # a sequence: its items are walked in the same mode
    if elem.VR in _TEMPORAL:
        return {Dates.MODIFIED: Action.CLEAN, Dates.FULL: Action.KEEP, Dates.REMOVED: Action.DUMMY}[options.dates]
    if mode is Mode.KEEP:
        return Action.KEEP
    if elem.VR == "UI":
        return Action.KEEP if options.uids else Action.REMAP_UID
    if elem.VR in ("PN", "AS", "AE", "UN"):
        return Action.DUMMY
    if elem.VR in _FREE_TEXT:
        return Action.CLEAN if mode is Mode.CLEAN and elem.VR != "UR" else Action.DUMMY
    return Action.KEEP  # CS, numbers, binary values: coded or measured, not about a person


def _apply(ds: Dataset, elem: DataElement, action: Action, ctx: PatientContext, mode: Mode) -> None:
    if action is Action.REMOVE:
        del ds[elem.tag]
    elif action is Action.EMPTY and elem.VR == "SQ" and elem.value and "/" in (table_code(elem.tag) or ""):
        # X/Z, Z/D, X/Z/D on a sequence with items: emptied, a Type 3 sequence that must
        # hold 1-n items when present (Referenced Study Sequence) would break the IOD, and
        # removed, a Type 2 one (Acquisition Context Sequence in Enhanced CT) would. Its
        # items are kept, de-identified as a dummied sequence's are.
        _apply_to_sequence(elem, Action.DUMMY, ctx, mode)
    elif action is Action.EMPTY:
        elem.value = Sequence() if elem.VR == "SQ" else elem.empty_value
    elif elem.VR == "SQ":
        _apply_to_sequence(elem, action, ctx, mode)
    elif action is Action.REMAP_UID:
        elem.value = _map_values(elem.value, lambda uid: remap_uid(ctx.key, uid))
    elif action is Action.DUMMY:
        elem.value = _remapped_or_dummy(elem, ctx)
    elif action is Action.CLEAN:
        elem.value = ctx.cleaner.clean_value(elem.value, elem.VR)


def _apply_to_sequence(elem: DataElement, action: Action, ctx: PatientContext, mode: Mode) -> None:
    if action is Action.DUMMY and keyword_for_tag(elem.tag).endswith("CodeSequence"):
        elem.value = Sequence([_code_item(DUMMY_CODE) for _ in elem.value])
        return
    child = {Action.DUMMY: Mode.DUMMY, Action.CLEAN: Mode.CLEAN}.get(action, mode)
    for item in elem.value:
        _walk(item, ctx, child)


def _remapped_or_dummy(elem: DataElement, ctx: PatientContext):
    # A dummy UID must still be a valid UID: the keyed remap carries nothing of the original.
    if elem.VR == "UI":
        return _map_values(elem.value, lambda uid: remap_uid(ctx.key, uid))
    return dummy_value(elem)


def dummy_value(elem: DataElement):
    """A value of the element's VR that carries nothing of the original."""
    vr = elem.VR
    keyword = keyword_for_tag(elem.tag)
    if keyword in _DUMMY_BY_KEYWORD:
        return _DUMMY_BY_KEYWORD[keyword]
    if vr in _DUMMY_BY_VR:
        return _DUMMY_BY_VR[vr]
    if vr in _FREE_TEXT or vr in ("AE", "CS", "PN"):
        return DUMMY_TEXT
    if vr in _NUMBER_STRINGS:
        return ["0"] * elem.VM if elem.VM > 1 else "0"
    if vr.startswith(_BINARY_PREFIX) or vr == "UN":
        # Same length keeps any length-dependent reader happy; zeros carry nothing.
        return bytes(len(elem.value or b"")) or bytes(2)
    # Binary numbers (US, SS, UL, SL, FL, FD, SV, UV, AT and "US or SS"): zero, same VM.
    return [0] * elem.VM if elem.VM > 1 else 0


def _map_values(value, fn):
    if isinstance(value, (list, MultiValue)):
        return [fn(str(v)) for v in value]
    return fn(str(value)) if value not in (None, "") else value


def _partner_time(keyword: str) -> str:
    """StudyDate -> StudyTime, ObservationDateTrial -> ObservationTimeTrial."""
    head, sep, tail = keyword.rpartition("Date")
    return f"{head}Time{tail}" if sep else ""


def _shift_temporal(ds: Dataset, elems: list[DataElement], ctx: PatientContext) -> None:
    """Move dates and times; a DA and its TM partner move together as one instant."""
    by_keyword = {keyword_for_tag(e.tag): e for e in elems}
    done: set[int] = set()
    for elem in elems:
        if elem.VR != "DA" or int(elem.tag) in done:
            continue
        partner = by_keyword.get(_partner_time(keyword_for_tag(elem.tag)))
        if partner is None or partner.VR != "TM" or partner.VM != elem.VM or elem.VM != 1:
            continue
        moved = ctx.shift.date_and_time(str(elem.value or ""), str(partner.value or ""))
        if moved is not None:
            elem.value, partner.value = moved
            done.update({int(elem.tag), int(partner.tag)})
    for elem in elems:
        if int(elem.tag) in done or elem.tag not in ds:
            continue
        shift = {"DA": ctx.shift.date, "TM": ctx.shift.time, "DT": ctx.shift.datetime}[elem.VR]
        values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
        shifted = [shift(str(v)) for v in values if v not in (None, "")]
        if any(m is None for m in shifted):
            ctx.counts["unparseable_temporal_emptied"] += 1
            elem.value = elem.empty_value
        elif shifted:
            elem.value = shifted if len(shifted) > 1 else shifted[0]
