"""radfusion deid: PS3.15 Basic Profile (+ Modified Dates Option) on real files.

Files start from pydicom's shipped CT/MR and from radfusion's synthetic cohort; every
Table E.1-1 attribute with a VR pydicom knows is filled with an identifying value (inside
sequences too), and the output is searched, element by element and by file name, for
any of them.
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from radfusion.cli import main as cli_main
from radfusion.deid.actions import DUMMY_TEXT, PatientContext, deidentify_dataset, dummy_value
from radfusion.deid.dates import DateShift
from radfusion.deid.errors import DeidKeyError, DeidPathError
from radfusion.deid.keys import DeidKey
from radfusion.deid.options import DeidOptions
from radfusion.deid.profile import Action, Option, action_for, profile_rows, resolve
from radfusion.deid.run import REASON_TRUNCATED, deidentify_tree
from radfusion.deid.uids import remap_uid
from tests.support.paths import PROJECT_ROOT

SHIPPED = Path(pydicom.__file__).parent / "data" / "test_files"
KEY_A = DeidKey.from_text("radfusion-test-key-A-0123456789")
KEY_B = DeidKey.from_text("radfusion-test-key-B-9876543210")
TOKEN = "SECRET"
UID_ROOT = "1.2.826.0.1.3680043.8.498.77."  # our test values, recognisable in any output
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


# ---------------------------------------------------------------- identifying values


def _concrete_tag(tag: str) -> int | None:
    """The table's tag as one element we can set (a repeating group's first instance)."""
    if tag == "private":
        return None
    if tag.endswith("xxxx"):  # (50xx,xxxx) Curve Data: take the curve data element itself
        tag = tag[:4] + "3000"
    return int(tag.replace("x", "0"), 16)


def _vr(tag: int) -> str:
    vr = dictionary_VR(tag)
    return {"OB or OW": "OB", "US or SS": "US", "US or OW": "US", "US or SS or OW": "US"}.get(vr, vr)


def _value(vr: str, n: int):
    """An identifying value of this VR, unique to attribute n and easy to find again."""
    text = f"{TOKEN}{n:03d}"
    return {
        "PN": f"{text}^PATIENT",
        "DA": f"{20110101 + (n % 28)}",
        "TM": f"{10 + n % 10:02d}{n % 60:02d}17",
        "DT": f"2011021{n % 10}12{n % 60:02d}05",
        "UI": f"{UID_ROOT}{n}",
        "AS": "042Y",
        "DS": f"31{n:03d}.5",
        "IS": f"31{n:03d}",
        "UR": f"http://{text.lower()}.example",
    }.get(vr, _binary_or_number(vr, text, n))


def _binary_or_number(vr: str, text: str, n: int):
    if vr in ("OB", "OW", "UN", "OF", "OD", "OL", "OV"):
        return text.encode().ljust(16, b"_")
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return 31000 + n
    if vr in ("FL", "FD"):
        return 31000.25 + n
    return text  # AE, CS, LO, LT, SH, ST, UC, UT


def _identifying_item(n: int, *, listed_only: bool = False) -> Dataset:
    """An item with identifying values; listed_only leaves out the code attributes, which
    the table does not list (so they are kept where the sequence itself is kept)."""
    item = Dataset()
    if not listed_only:
        item.CodeValue = f"{TOKEN}{n:03d}"
        item.CodingSchemeDesignator = "99SECRET"
        item.CodeMeaning = f"{TOKEN}{n:03d} meaning"
    item.PersonName = f"{TOKEN}{n:03d}^ITEM"
    item.ReferencedSOPInstanceUID = f"{UID_ROOT}{n}.1"
    item.PatientName = f"{TOKEN}{n:03d}^NESTED"
    item.add_new(0x00091010, "LO", f"{TOKEN}{n:03d} private")
    return item


def fill_every_attribute(ds: Dataset, *, with_command_group: bool) -> dict[int, object]:
    """Set every Table E.1-1 attribute pydicom has a VR for; returns tag -> value set."""
    originals: dict[int, object] = {}
    for n, row in enumerate(profile_rows()):
        tag = _concrete_tag(row.tag)
        if tag is None or (tag >> 16 == 0 and not with_command_group):
            continue
        vr = _vr(tag)
        # Codes inside a kept, dummied or cleaned item are structure and stay (actions.py):
        # the items hold the table's attributes only.
        value = Sequence([_identifying_item(n, listed_only=True)]) if vr == "SQ" else _value(vr, n)
        target = ds.file_meta if tag >> 16 == 2 else ds
        target.add_new(tag, vr, value)
        originals[tag] = value
    ds.add_new(0x60004000, "LT", f"{TOKEN}overlay")  # a second overlay attribute of group 60xx
    ds.add_new(0x60000010, "US", 8)
    ds.add_new(0x50000005, "US", 31999)  # curve group: every element goes
    ds.add_new(0x00290010, "LO", f"{TOKEN} PRIVATE CREATOR")
    ds.add_new(0x00291010, "LO", f"{TOKEN}private")
    # A sequence the table does not list: kept, but its items get the same actions.
    outer = _identifying_item(900, listed_only=True)
    outer.StudyDate = "20110305"
    ds.ReferencedInstanceSequence = Sequence([outer])
    return originals


def remapped_uids(ds: Dataset) -> set[str]:
    """The instance UIDs (table action U) of a dataset; class and implementation UIDs stay."""
    return {
        str(e.value) for e in all_elements(ds) if e.VR == "UI" and action_for(e.tag) is Action.REMAP_UID and e.value
    }


def all_elements(ds: Dataset):
    yield from ds.file_meta.iterall() if hasattr(ds, "file_meta") else ()
    yield from ds.iterall()


def text_of(elem) -> str:
    value = elem.value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (list, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def assert_nothing_survives(out: Dataset, originals: dict[int, object], original_uids: set[str]) -> None:
    for elem in all_elements(out):
        if elem.VR == "SQ" or elem.tag == 0x7FE00010:
            continue
        text = text_of(elem)
        assert TOKEN not in text and TOKEN.lower() not in text, elem
        assert UID_ROOT not in text, elem
        if elem.VR == "UI":
            assert not ({str(v) for v in (elem.value if elem.VM > 1 else [elem.value])} & original_uids), elem
        original = originals.get(int(elem.tag))
        if original is not None and not isinstance(original, Sequence) and elem.value not in ("", None):
            assert elem.value != original, elem
        assert not elem.tag.is_private, elem


# ---------------------------------------------------------------- the table


def test_table_is_complete_data_with_valid_codes():
    rows = profile_rows()
    assert len(rows) == 621 and len({r.tag for r in rows}) == 621
    combined = {"Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
    assert all(r.basic in set("XZDKCU") | combined for r in rows)
    assert all(code in ("K", "C") for r in rows for _, code in r.options)
    codes = {r.name: (r.basic, dict(r.options).get(Option.RETAIN_MODIFIED_DATES, "")) for r in rows}
    assert codes["Patient's Age"] == ("X", "") and codes["Patient's Birth Date"] == ("Z", "")
    assert codes["Study Instance UID"] == ("U", "") and codes["Study Date"] == ("Z", "C")
    assert codes["Referenced Image Sequence"] == ("X/Z/U*", "")
    assert codes["Curve Data"] == ("X", "") and codes["Overlay Comments"] == ("X", "")
    unknown = [r.tag for r in rows if _concrete_tag(r.tag) is not None and not _known(_concrete_tag(r.tag))]
    assert unknown == []


def test_table_ships_with_the_package():
    """The CSV is package data: a wheel without it could not de-identify anything."""
    import tomllib

    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    package_data = pyproject["tool"]["setuptools"].get("package-data", {})
    assert "*.csv" in package_data.get("radfusion.deid", [])


def _known(tag: int) -> bool:
    try:
        dictionary_VR(tag)
    except KeyError:
        return False
    return True


def test_combined_codes_take_the_choice_every_iod_accepts():
    """X/Z -> Z, X/D Z/D X/Z/D -> D, X/Z/U* -> U: what was there stays, emptied, dummied or
    remapped (profile.py), so no Type 1 or 2 attribute is removed."""
    assert resolve("X/Z") is Action.EMPTY  # Acquisition Context Sequence: Type 2 in Enhanced CT
    assert resolve("X/Z/D") is Action.DUMMY  # Operators' Name: Type 2 in RT Plan
    assert resolve("X/D") is Action.DUMMY and resolve("Z/D") is Action.DUMMY
    assert resolve("X/Z/U*") is Action.REMAP_UID  # Source Image Sequence: Type 1 in SEG
    assert resolve("X") is Action.REMOVE and resolve("U") is Action.REMAP_UID
    assert action_for(Tag(0x00082112)) is Action.REMAP_UID
    assert action_for(Tag(0x00081070)) is Action.DUMMY
    assert action_for(Tag(0x00400555)) is Action.EMPTY
    modified = DeidOptions().applied
    assert action_for(Tag(0x00080020), modified) is Action.CLEAN  # dates move (option 113107)
    assert action_for(Tag(0x00080020)) is Action.EMPTY  # Study Date without a dates option: Z
    assert action_for(Tag(0x50020010)) is Action.REMOVE  # curve group 50xx
    assert action_for(Tag(0x60020040)) is Action.REMOVE  # the rest of an overlay group
    assert action_for(Tag(0x00091010)) is Action.REMOVE  # private
    assert action_for(Tag(0x00080070)) is None  # Manufacturer: not listed, kept


# ---------------------------------------------------------------- one dataset, every attribute


def _ctx(ds: Dataset, key: DeidKey = KEY_A) -> PatientContext:
    return PatientContext(
        key=key,
        pseudonym=key.patient_pseudonym(str(ds.PatientID)),
        shift=DateShift.for_patient(key, str(ds.PatientID)),
    )


def test_every_table_attribute_gets_its_action_and_no_value_survives():
    ds = pydicom.dcmread(SHIPPED / "CT_small.dcm")
    before_uids = remapped_uids(ds)
    originals = fill_every_attribute(ds, with_command_group=True)
    original_uids = {str(v) for v in originals.values() if isinstance(v, str) and v.startswith(UID_ROOT)}
    original_uids |= before_uids
    pixels = ds.PixelData
    out = copy.deepcopy(ds)
    deidentify_dataset(out, _ctx(ds))

    assert_nothing_survives(out, originals, original_uids)
    assert out.PixelData == pixels
    for row in profile_rows():
        tag = _concrete_tag(row.tag)
        if tag is None or tag in (0x00020003, 0x00100010, 0x00100020):  # meta UID, name and ID: pseudonym
            continue
        action = action_for(Tag(tag), DeidOptions().applied)
        holder = out.file_meta if tag >> 16 == 2 else out
        if action is Action.REMOVE:
            assert tag not in holder, row.name
        elif action is Action.EMPTY and holder[tag].VR == "SQ" and "/" in row.basic:
            # X/Z on a sequence with items: the items stay (a Type 3 sequence needs 1-n),
            # dummied; assert_nothing_survives checked that none of their values did.
            assert len(holder[tag].value) == len(originals[tag]) > 0, row.name
        elif action is Action.EMPTY:
            assert (tag in holder and holder[tag].is_empty) or tag in (0x00100010, 0x00100020), row.name
        elif action is Action.DUMMY and holder[tag].VR == "UI":
            assert str(holder[tag].value).startswith("2.25."), row.name  # a dummy UID: remapped
        elif action is Action.DUMMY and holder[tag].VR not in ("SQ", "OB"):
            assert holder[tag].value == dummy_value(holder[tag]) and holder[tag].value != originals[tag], row.name
        elif action is Action.REMAP_UID and holder[tag].VR == "SQ":
            assert holder[tag].value[0].ReferencedSOPInstanceUID.startswith("2.25."), row.name
        elif action is Action.REMAP_UID:
            assert all(
                str(v).startswith("2.25.") for v in (holder[tag].value if holder[tag].VM > 1 else [holder[tag].value])
            ), row.name
        elif action is Action.CLEAN and holder[tag].VR in ("DA", "DT", "TM"):
            assert holder[tag].value and holder[tag].value != originals[tag], row.name
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.PatientIdentityRemoved == "YES"
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    # D sequences keep their structure (codes stay codes), their text and names dummied;
    # the unlisted sequence keeps its item.
    content = out.ContentSequence[0]
    assert content.PersonName == DUMMY_TEXT and content.ReferencedSOPInstanceUID.startswith("2.25.")
    nested = out.ReferencedInstanceSequence[0]
    assert nested.PatientName == "" and nested.ReferencedSOPInstanceUID.startswith("2.25.")
    assert 0x00091010 not in nested and not any(0x5000 <= e.tag.group <= 0x60FF for e in out)


def test_pseudonyms_uids_and_date_shifts_depend_only_on_the_key():
    assert KEY_A.patient_pseudonym("P1") == DeidKey.from_text("radfusion-test-key-A-0123456789").patient_pseudonym("P1")
    assert KEY_A.patient_pseudonym("P1") != KEY_B.patient_pseudonym("P1")
    assert KEY_A.patient_pseudonym("P1") != KEY_A.patient_pseudonym("P2")
    assert remap_uid(KEY_A, "1.2.3.4") != remap_uid(KEY_B, "1.2.3.4")
    assert remap_uid(KEY_A, "1.2.3.4") == remap_uid(KEY_A, "1.2.3.4") and len(remap_uid(KEY_A, "1.2.3.4")) <= 64
    assert remap_uid(KEY_A, CT_IMAGE) == CT_IMAGE  # a SOP Class UID identifies no one
    shift = DateShift.for_patient(KEY_A, "P1")
    assert 365 <= -shift.offset.days <= 4016
    assert shift.date_and_time("20200101", "235900.25") is not None
    with pytest.raises(DeidKeyError):
        DeidKey.from_text("short")


# ---------------------------------------------------------------- folder trees


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory) -> Path:
    """Two hand-made studies of one patient (every attribute filled), a second patient from
    the MR RLE file, a synthetic cohort, a text file and two corrupt files."""
    from radfusion.synth import generate_cohort

    root = tmp_path_factory.mktemp("deid_src") / "in"
    patient = root / "SMITH_JOHN_1CT1"
    base = pydicom.dcmread(SHIPPED / "CT_small.dcm")
    for study, (day, clock) in enumerate([("20200101", "235900"), ("20200315", "080000")]):
        first = None
        for k in range(2):
            ds = copy.deepcopy(base)
            fill_every_attribute(ds, with_command_group=False)
            ds.StudyInstanceUID = f"{UID_ROOT}1000.{study}"
            ds.SeriesInstanceUID = f"{UID_ROOT}1000.{study}.1"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{UID_ROOT}1000.{study}.1.{k}"
            ds.FrameOfReferenceUID = f"{UID_ROOT}1000.{study}.9"
            ds.StudyDate, ds.StudyTime = day, clock
            ds.AcquisitionDateTime = f"{day}{clock}"
            if first is not None:
                ds.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID = first
            first = ds.SOPInstanceUID
            folder = patient / f"study_{day}"
            folder.mkdir(parents=True, exist_ok=True)
            ds.save_as(folder / f"{TOKEN}_{k}.dcm")
    mr = root / "other" / "MR_small_RLE.dcm"
    mr.parent.mkdir(parents=True)
    shutil.copy(SHIPPED / "MR_small_RLE.dcm", mr)
    generate_cohort(
        root.parent / "synth",
        n_patients=2,
        seed=3,
        n_genes=24,
        n_slices=8,
        rows=24,
        cols=24,
        rle_fraction=0.5,
        workers=1,
    )
    shutil.copytree(root.parent / "synth" / "dicom", root / "synth")
    (root / "notes.txt").write_text("not an image")
    (root / "broken").mkdir()
    (root / "broken" / "truncated.dcm").write_bytes((SHIPPED / "CT_small.dcm").read_bytes()[:1000])
    (root / "broken" / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    return root


def _run(src: Path, out: Path, key: DeidKey, **kw):
    summary = deidentify_tree(src, out, key, **kw)
    with open(summary.report, newline="") as f:
        report = list(csv.DictReader(f))
    return summary, report


def _read_outputs(out: Path, report) -> dict[str, Dataset]:
    return {r["input"]: pydicom.dcmread(out / r["output"]) for r in report if r["status"] == "written"}


@pytest.fixture(scope="module")
def runs(source_tree, tmp_path_factory):
    work = tmp_path_factory.mktemp("deid_out")
    a1 = _run(source_tree, work / "a1", KEY_A)
    a2 = _run(source_tree, work / "a2", KEY_A)
    b = _run(source_tree, work / "b", KEY_B)
    return {"a1": (work / "a1", *a1), "a2": (work / "a2", *a2), "b": (work / "b", *b)}


def test_tree_counts_skips_and_failures(runs):
    out, summary, report = runs["a1"]
    status = {r["input"]: (r["status"], r["reason"]) for r in report}
    assert summary.files_seen == len(report) == 4 + 1 + 18 + 3  # synth: 2 x (8 slices + localizer)
    assert summary.written == 23 and summary.skipped == 1 and summary.failed == 2
    assert status["notes.txt"] == ("skipped", "not DICOM")
    assert summary.reasons == {
        "not DICOM": 1,
        REASON_TRUNCATED: 1,
        "not a DICOM instance: no SOP Class UID or SOP Instance UID": 1,
    }
    assert status["broken/truncated.dcm"][0] == "failed" and "truncated" in status["broken/truncated.dcm"][1]
    assert status["broken/garbage.dcm"][0] == "failed"
    assert summary.patients == 4 and summary.studies == 5
    assert len(list(out.rglob("*.dcm"))) == 23 and not list(out.rglob("*.partial"))


def test_outputs_hold_no_identifying_value_or_name(runs, source_tree):
    out, _, report = runs["a1"]
    outputs = _read_outputs(out, report)
    originals_by_input = {}
    for rel in outputs:
        ds = pydicom.dcmread(source_tree / rel)
        originals_by_input[rel] = ds
    for rel, ds in outputs.items():
        original = originals_by_input[rel]
        assert_nothing_survives(ds, {}, remapped_uids(original))
        for keyword in ("PatientName", "PatientID", "AccessionNumber", "InstitutionName", "StudyID"):
            value = str(original.get(keyword, "") or "")
            if value:
                assert value not in {text_of(e) for e in all_elements(ds)}, keyword
        assert ds.PixelData == original.PixelData
    for r in report:
        if r["status"] == "written":
            raw = (out / r["output"]).read_bytes()
            assert TOKEN.encode() not in raw and UID_ROOT.encode() not in raw, r["input"]
    names = " ".join(r["output"] for r in report)
    for part in ("SMITH", "JOHN", "1CT1", "study_", TOKEN, "synth", "other", "MR_small", UID_ROOT):
        assert part not in names


def test_uids_consistent_within_study_and_across_runs_and_keyed(runs):
    (out1, _, rep1), (out2, _, rep2), (outb, _, repb) = runs["a1"], runs["a2"], runs["b"]
    a1, a2, b = _read_outputs(out1, rep1), _read_outputs(out2, rep2), _read_outputs(outb, repb)
    assert [r["output"] for r in rep1] == [r["output"] for r in rep2]
    for rel in a1:
        uids1 = [(e.tag, e.value) for e in all_elements(a1[rel]) if e.VR == "UI"]
        assert uids1 == [(e.tag, e.value) for e in all_elements(a2[rel]) if e.VR == "UI"]
        remapped = {str(v) for _, v in uids1 if str(v).startswith("2.25.")}
        assert remapped and not remapped & {str(e.value) for e in all_elements(b[rel]) if e.VR == "UI"}
    hand = sorted(rel for rel in a1 if rel.startswith("SMITH"))
    for study in (hand[:2], hand[2:]):
        first, second = (a1[r] for r in study)
        assert first.StudyInstanceUID == second.StudyInstanceUID
        assert first.FrameOfReferenceUID == second.FrameOfReferenceUID
        assert second.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert a1[hand[0]].StudyInstanceUID != a1[hand[2]].StudyInstanceUID
    assert len({a1[r].PatientID for r in hand}) == 1
    synth = [ds for rel, ds in a1.items() if rel.startswith("synth")]
    assert len({ds.StudyInstanceUID for ds in synth}) == 2 and len({ds.PatientID for ds in synth}) == 2


def test_dates_move_but_intervals_within_a_patient_stay(runs, source_tree):
    out, _, report = runs["a1"]
    outputs = _read_outputs(out, report)
    hand = sorted(rel for rel in outputs if rel.startswith("SMITH"))

    def instant(ds):
        return datetime.strptime(ds.StudyDate + ds.StudyTime[:6], "%Y%m%d%H%M%S")

    before = [pydicom.dcmread(source_tree / hand[i]) for i in (0, 2)]
    after = [outputs[hand[i]] for i in (0, 2)]
    assert instant(after[1]) - instant(after[0]) == instant(before[1]) - instant(before[0])
    assert instant(after[0]) != instant(before[0])
    dt = [datetime.strptime(ds.AcquisitionDateTime, "%Y%m%d%H%M%S") for ds in after]
    assert dt[1] - dt[0] == instant(before[1]) - instant(before[0])
    assert instant(after[0]) == dt[0]  # the pair and the DT moved by the same offset


def test_mapping_file_is_correct_and_outside_out(runs, source_tree, tmp_path):
    out, summary, report = runs["a1"]
    mapping = Path(summary.mapping)
    assert not mapping.is_relative_to(out)
    with open(mapping, newline="") as f:
        rows = list(csv.DictReader(f))
    expected = {}
    for r in report:
        if r["status"] == "written":
            expected[str(pydicom.dcmread(source_tree / r["input"]).PatientID)] = str(
                pydicom.dcmread(out / r["output"]).PatientID
            )
    assert {r["patient_id"]: r["pseudonym"] for r in rows} == expected
    assert {r["key_fingerprint"] for r in rows} == {KEY_A.fingerprint}
    with pytest.raises(DeidKeyError):
        deidentify_tree(source_tree, tmp_path / "other", KEY_B, mapping=mapping)


def test_private_tags_gone_and_files_valid_for_dcmdump(runs):
    out, _, _ = runs["a1"]
    files = sorted(out.rglob("*.dcm"))
    for path in files:
        ds = pydicom.dcmread(path)
        assert not any(e.tag.is_private for e in ds.iterall())
    if shutil.which("dcmdump") is None:
        pytest.skip("dcmdump (dcmtk) not installed")
    for path in files:
        result = subprocess.run(["dcmdump", "-q", str(path)], capture_output=True, text=True)
        assert result.returncode == 0 and "E:" not in result.stderr, result.stderr[:500]


def test_logs_hold_counts_only(source_tree, tmp_path, caplog):
    caplog.set_level("DEBUG")
    deidentify_tree(source_tree, tmp_path / "out", KEY_A)
    text = caplog.text
    assert "files seen" in text
    for secret in ("SMITH", "1CT1", "4MR1", TOKEN, "CompressedSamples"):
        assert secret not in text


def test_cli_deid(source_tree, tmp_path, capsys):
    key_file = tmp_path / "deid.key"
    key_file.write_text("radfusion-test-key-A-0123456789\n")
    with pytest.raises(SystemExit) as stop:  # the two corrupt files make the exit status 1
        cli_main(
            [
                "deid",
                "--in",
                str(source_tree),
                "--out",
                str(tmp_path / "out"),
                "--key-file",
                str(key_file),
                "--mapping",
                str(tmp_path / "map.csv"),
            ]
        )
    assert stop.value.code == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 23 and summary["failed"] == 2 and summary["mapping"].endswith("map.csv")
    with pytest.raises(DeidPathError):
        deidentify_tree(source_tree, source_tree / "inside", KEY_A)


def test_burned_in_text_and_duplicates_fail_alone(tmp_path):
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    shutil.copy(SHIPPED / "MR_small_RLE.dcm", src / "a" / "one.dcm")
    shutil.copy(SHIPPED / "MR_small_RLE.dcm", src / "a" / "two.dcm")
    burned = pydicom.dcmread(SHIPPED / "CT_small.dcm")
    burned.BurnedInAnnotation = "YES"
    burned.save_as(src / "a" / "burned.dcm")
    summary, report = _run(src, tmp_path / "out", KEY_A)
    status = {r["input"]: (r["status"], r["reason"]) for r in report}
    assert summary.written == 1 and summary.failed == 2
    assert status["a/burned.dcm"][0] == "failed" and "burned-in" in status["a/burned.dcm"][1]
    assert status["a/two.dcm"][0] == "failed" and "duplicate" in status["a/two.dcm"][1]
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 1


def test_deidentified_study_gives_the_model_the_same_image(runs, source_tree):
    """De-identification keeps what the model reads: same series chosen, same voxels."""
    import numpy as np

    from radfusion.contract import ImageGeometry
    from radfusion.study import read_study_image

    out, _, report = runs["a1"]
    geometry = ImageGeometry(target_shape=(8, 16, 16), target_spacing=(5.0, 8.0, 8.0))
    by_study: dict[str, list[str]] = {}
    for r in report:
        if r["status"] == "written" and r["input"].startswith("synth"):
            by_study.setdefault(r["input"].split("/")[1], []).append(r["output"])
    assert len(by_study) == 2
    for study_dir, outputs in by_study.items():
        before = read_study_image(source_tree / "synth" / study_dir, geometry)
        after = read_study_image([out / o for o in outputs], geometry)
        np.testing.assert_array_equal(after.image, before.image)
        assert after.patient_id.startswith("DEID") and after.study_uid.startswith("2.25.")
