"""Apply the profile to one dataset, sequences included.

Walks every element, top level and inside sequence items, and applies its action
(profile.py): X removes (a sequence with all its items), Z empties, D puts a dummy of the
element's VR, U remaps UIDs, C moves dates and times (dates.py). Unlisted elements are
kept, except that every DA/DT/TM moves too: an unlisted date such as Instance Creation
Date would otherwise show the true date and break the kept intervals. Inside a sequence
whose action is D every unlisted element becomes a dummy, so nothing of its items
survives except structure, remapped UIDs and moved dates. Private elements go at every
level. Pixel Data is never touched.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes

from radfusion.deid.dates import DateShift
from radfusion.deid.errors import DeidRefusedError
from radfusion.deid.keys import DeidKey
from radfusion.deid.profile import Action, action_for
from radfusion.deid.uids import remap_uid

DUMMY_TEXT = "DEIDENTIFIED"
_TEMPORAL = {"DA", "DT", "TM"}
_TEXT = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"}
_NUMBER_STRINGS = {"DS", "IS"}
_BINARY_PREFIX = "O"  # OB, OD, OF, OL, OV, OW and the ambiguous "OB or OW"
_DUMMY_BY_VR = {"AS": "000Y", "DA": "19000101", "DT": "19000101000000", "TM": "000000", "UR": ""}
# A clean Timezone Offset From UTC: no hint of where the patient was.
_DUMMY_BY_KEYWORD = {"TimezoneOffsetFromUTC": "+0000"}
METHOD_TEXT = "radfusion deid: PS3.15 Basic Profile, modified dates"


@dataclass
class PatientContext:
    """What the actions of one file need: the key, the patient's pseudonym and date shift."""

    key: DeidKey
    pseudonym: str
    shift: DateShift
    sop_class_uid: str
    counts: Counter = field(default_factory=Counter)


def deidentify_dataset(ds: Dataset, ctx: PatientContext) -> None:
    """De-identify ds in place and record how (PS3.15 E.1.1 items 3-4, PS3.3 C.12.1)."""
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise DeidRefusedError(
            "burned-in annotation: the Basic Profile needs the Clean Pixel Data Option, which radfusion does not do"
        )
    _walk(ds, ctx, dummy_items=False)
    ds.PatientID = ctx.pseudonym
    ds.PatientName = ctx.pseudonym  # Z allows a dummy; a name keeps PACS displays usable
    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    ds.DeidentificationMethod = METHOD_TEXT
    ds.DeidentificationMethodCodeSequence = Sequence(
        [
            _code_item(codes.DCM.BasicApplicationConfidentialityProfile),
            _code_item(codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption),
        ]
    )
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _clean_file_meta(meta, ds, ctx)


# File meta elements that name the sending/receiving device or carry private data: the
# table lists AE titles and private attributes for removal wherever they occur.
_META_REMOVED = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)


def _clean_file_meta(meta: Dataset, ds: Dataset, ctx: PatientContext) -> None:
    for tag in _META_REMOVED:
        if tag in meta:
            del meta[tag]
    if "SOPInstanceUID" in ds:  # already remapped by the walk
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    elif "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = remap_uid(ctx.key, str(meta.MediaStorageSOPInstanceUID))


def _code_item(code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _walk(ds: Dataset, ctx: PatientContext, *, dummy_items: bool) -> None:
    to_shift: list[DataElement] = []
    for elem in list(ds):
        if elem.tag.element == 0:
            # Group lengths (retired) would be wrong once values change: drop them.
            del ds[elem.tag]
            continue
        action = action_for(elem.tag, ctx.sop_class_uid)
        if action is None:
            if elem.VR in _TEMPORAL:
                action = Action.CLEAN
            elif dummy_items and elem.VR == "UI":
                action = Action.REMAP_UID
            elif dummy_items:
                action = Action.DUMMY
            else:
                action = Action.KEEP
        ctx.counts[action.value] += 1
        if action is Action.CLEAN and elem.VR in _TEMPORAL:
            to_shift.append(elem)
        else:
            _apply(ds, elem, action, ctx, dummy_items)
    _shift_temporal(ds, to_shift, ctx)


def _apply(ds: Dataset, elem: DataElement, action: Action, ctx: PatientContext, dummy_items: bool) -> None:
    if action is Action.REMOVE:
        del ds[elem.tag]
    elif action is Action.EMPTY:
        elem.value = Sequence() if elem.VR == "SQ" else elem.empty_value
    elif elem.VR == "SQ":
        # D puts a dummy in every element of the items; U, K and C keep the items and
        # give each element its own action (U: the UIDs inside are remapped).
        for item in elem.value:
            _walk(item, ctx, dummy_items=dummy_items or action is Action.DUMMY)
    elif action is Action.REMAP_UID:
        elem.value = _map_values(elem.value, lambda uid: remap_uid(ctx.key, uid))
    elif action in (Action.DUMMY, Action.CLEAN):
        elem.value = dummy_value(elem)


def dummy_value(elem: DataElement):
    """A value of the element's VR that carries nothing of the original."""
    vr = elem.VR
    keyword = keyword_for_tag(elem.tag)
    if keyword in _DUMMY_BY_KEYWORD:
        return _DUMMY_BY_KEYWORD[keyword]
    if vr in _DUMMY_BY_VR:
        return _DUMMY_BY_VR[vr]
    if vr in _TEXT:
        return DUMMY_TEXT
    if vr in _NUMBER_STRINGS:
        return "0"
    if vr.startswith(_BINARY_PREFIX) or vr == "UN":
        # Same length keeps any length-dependent reader happy; zeros carry nothing.
        return bytes(len(elem.value or b""))
    if vr == "UI":
        return elem.empty_value
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
