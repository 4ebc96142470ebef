"""No attribute of Table E.1-1 keeps its original value unless its code is K, or C under
an applied cleaning option: a distinctive marker of the element's VR is planted in every
attribute of the table (repeating groups and private tags instantiated; and the birth and death dates
as free text the profile removes beyond the table), at the top level
and in copies nested inside a dummied sequence (Content Sequence), a removed one (Request
Attributes Sequence) and one the table does not list (Referenced Instance Sequence), and
the de-identified dataset is searched element by element."""

from __future__ import annotations

import copy

import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from radfusion.deid.actions import PatientContext, deidentify_dataset
from radfusion.deid.dates import DateShift
from radfusion.deid.keys import DeidKey
from radfusion.deid.options import Dates, DeidOptions
from radfusion.deid.profile import BEYOND_TABLE, profile_rows, table_code

KEY = DeidKey.from_text("radfusion-test-key-markers-0123")
MARK = "MRK"
UID_ROOT = "1.2.826.0.1.3680043.8.498.99."
# Instances of the table's patterns: curve groups 50xx, overlay groups 60xx, private groups.
PATTERN_TAGS = {
    "50xxxxxx": [0x50003000, 0x50020005, 0x501E0022],
    "60xx3000": [0x60003000, 0x60023000],
    "60xx4000": [0x60004000, 0x601E4000],
}
PRIVATE = [(0x00090010, "LO"), (0x00091001, "LO"), (0x00110010, "LO"), (0x00111020, "UI"), (0x00191001, "PN")]


def _tags() -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for row in profile_rows():
        if row.tag == "private":
            out += PRIVATE
            continue
        for tag in PATTERN_TAGS[row.tag] if row.tag in PATTERN_TAGS else [int(row.tag, 16)]:
            vr = dictionary_VR(tag).split(" or ")[0]
            out.append((tag, vr))
    # What the profile removes beyond the table (birth and death dates as free text).
    out += [(tag, dictionary_VR(tag)) for tag in BEYOND_TABLE]
    return out


def _marker(vr: str, n: int, seed: int):
    """A value of this VR unique to attribute n and seed, and valid for the VR."""
    k = seed * 1000 + n
    text = f"{MARK}{k:05d}"
    by_vr = {
        "PN": f"{text}^{MARK}GIVEN{seed}",
        "DA": f"{19700101 + (k % 28) + 100 * (k % 12)}",
        "TM": f"{1 + k % 23:02d}{k % 60:02d}{(k * 7) % 60:02d}",  # never a dummy 000000
        "DT": f"{1980 + k % 30}0{1 + k % 9}1{k % 9}1{k % 9}3{k % 10}4{k % 10}",
        "UI": f"{UID_ROOT}{seed}.{n}",
        "AS": f"{10 + k % 89:03d}Y",
        "DS": f"7{k:05d}.5",
        "IS": f"7{k:05d}",
        "UR": f"http://{text.lower()}.example/",
        "CS": text,
        "AT": Tag(0x7001, k % 0xFFFF),
        "US": 40000 + k % 20000,
        "SS": 20000 + k % 10000,
        "UL": 4_000_000 + k,
        "SL": 4_000_000 + k,
        "UV": 4_000_000 + k,
        "SV": 4_000_000 + k,
        "FL": 4242.5 + k,
        "FD": 4242.5 + k,
    }
    if vr in by_vr:
        return by_vr[vr]
    if vr.startswith("O") or vr == "UN":
        return (text.encode() * 4)[:16]
    return text  # AE, LO, LT, SH, ST, UC, UT


def _marked(seed: int) -> tuple[Dataset, dict[int, object]]:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    planted: dict[int, object] = {}
    for n, (tag, vr) in enumerate(_tags()):
        if vr == "SQ":
            item = Dataset()
            item.PatientName = f"{MARK}{seed}{n:03d}^ITEM"  # a listed attribute inside
            item.StudyDate = "19991231"
            item.add_new(0x00091010, "LO", f"{MARK}{seed}{n:03d}")  # private inside
            value: object = Sequence([item])
        else:
            value = _marker(vr, n, seed)
        target = ds.file_meta if tag >> 16 == 2 else ds
        target.add_new(tag, vr, value)
        planted[tag] = value
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    return ds, planted


def _nest(ds: Dataset) -> Dataset:
    """The marked dataset, with copies of itself in three kinds of sequence."""
    inner = copy.deepcopy(ds)
    del inner.file_meta
    for keyword in ("ContentSequence", "RequestAttributesSequence", "ReferencedInstanceSequence"):
        item = copy.deepcopy(inner)
        item.ValueType, item.RelationshipType = "TEXT", "CONTAINS"
        setattr(ds, keyword, Sequence([item]))
    return ds


def _values(elem) -> list:
    return list(elem.value) if isinstance(elem.value, (list, MultiValue)) else [elem.value]


def _kept_by_option(tag: int, options: DeidOptions) -> bool:
    code = table_code(Tag(tag), options.applied)
    cleaning = options.clean_descriptors or options.clean_structured_content or options.patient_characteristics
    return code == "K" or (code == "C" and cleaning and dictionary_VR(tag) not in ("DA", "DT", "TM"))


OPTION_SETS = {
    "modified dates": DeidOptions(),
    "no dates option": DeidOptions(dates=Dates.REMOVED),
    "every option": DeidOptions(
        dates=Dates.FULL,
        patient_characteristics=True,
        device_identity=True,
        institution_identity=True,
        uids=True,
        clean_descriptors=True,
        clean_structured_content=True,
    ),
}


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("option_set", list(OPTION_SETS))
def test_no_marker_survives_unless_retained(seed, option_set):
    options = OPTION_SETS[option_set]
    ds, planted = _marked(seed)
    ds = _nest(ds)
    assert len(planted) >= 621 + len(PRIVATE) - 1
    ctx = PatientContext(KEY, "DEIDPSEUDONYM", DateShift.for_patient(KEY, f"seed{seed}"), options)
    deidentify_dataset(ds, ctx)

    markers = {t: v for t, v in planted.items() if not isinstance(v, Sequence)}
    kept = {t for t in markers if _kept_by_option(t, options)}
    leaks = []
    for elem in [*ds.file_meta, *ds.iterall()]:
        if elem.VR == "SQ":
            continue
        tag = int(elem.tag)
        values = _values(elem)
        if tag in markers and tag not in kept and markers[tag] in values and markers[tag] not in ("", None):
            leaks.append((str(elem.tag), elem.keyword, "original value"))
        text = "\\".join(v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in values)
        if (MARK in text or UID_ROOT in text) and tag not in kept:
            leaks.append((str(elem.tag), elem.keyword, text[:40]))
        assert not elem.tag.is_private, elem
    assert leaks == []
    # The nested copies went through the same actions (dummied item, unlisted item) or
    # went with their sequence (Request Attributes Sequence: X).
    assert "RequestAttributesSequence" not in ds or options.clean_descriptors
    assert len(ds.ReferencedInstanceSequence[0]) > 100 and len(ds.ContentSequence[0]) > 100
    if not (options.uids or options.dates is Dates.FULL):
        assert ds.ReferencedInstanceSequence[0].StudyInstanceUID.startswith("2.25.")
