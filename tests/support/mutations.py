"""A seeded corpus of hostile and odd studies: the fuzz suite's input (tests/fuzz) and
``make fuzz``'s larger one (bench/fuzz.py).

Every item is built from real DICOM: the synthetic CT studies of a radfusion.synth
cohort and files pydicom ships (pydicom.data). Each gets fresh UIDs under ``UID_ROOT``,
a planted patient name ``FUZZ^PLANTED<n>`` (in PatientName and in its folder, file and
zip member names) and a PatientID ``FUZZPID<n>``, so that a log line quoting any of
them is found. Then it is damaged one way: byte flips in the header or the pixel data,
truncation, an unknown VR, a sequence nested 5000 deep, a meta header claiming Deflated
over garbage, a broken zip member, a zip bomb, traversal names, impossible geometry or
rescale, impossible dimensions, odd demographics, junk, empty files, hostile genomic or
clinical values.

Each item says which input paths it goes through (``SCORER``: a folder or zip under the
archive root; ``PREDICT`` / ``BATCH``: an upload to the HTTP service; ``LISTENER``:
C-STORE to the PACS listener) and, per path, what is acceptable (``Expect``): a study
that must be scored, one that must fail (with one of the kinds named, where the kind
is certain), or either. Everything is derived from ``seed``: the same seed and cohort
write the same bytes."""

from __future__ import annotations

import copy
import io
import json
import math
import shutil
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from pydicom import config
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID_dictionary, generate_uid

# Every UID the corpus writes starts with this root (not one any tool generates), so a
# log line holding one is found even after a byte flip changed the rest of it.
UID_ROOT = "1.2.999.20514."
PLANTED = "PLANTED"  # in every planted name: "FUZZ^PLANTED007"
PATIENT_ID_MARK = "FUZZPID"  # in every PatientID: "FUZZPID007"

SCORER, PREDICT, BATCH, LISTENER = "scorer", "predict", "batch", "listener"

# Scorer rows an item's studies get: one per study, possibly none (the zip or every
# file may be refused before a study UID is read), or none at all (no study UID).
ONE, MAYBE, NONE = "one", "maybe", "none"

ZIP_BOMB_BYTES = 200 * 1024**2  # inflated size of the bomb member (~200 KB deflated)
DEEP_NESTING = 5000
EXPRESSION_GENE = "TP53"  # a z-scored expression feature of the synthetic panel
MUTATION_FLAG = "KRAS_mut"


@dataclass(frozen=True)
class Expect:
    """What one input path may answer for an item. ``outcome``: "ok" (scored, finite),
    "error" (a specific failure) or "either". ``kinds``: the failure kinds accepted
    (empty: any specific kind)."""

    outcome: str
    kinds: frozenset[str] = frozenset()

    def problem(self, ok: bool, kind: str | None) -> str | None:
        """Why an answer breaks this expectation, or None."""
        if ok:
            return "scored, but it must fail" if self.outcome == "error" else None
        if self.outcome == "ok":
            return "failed, but it must be scored"
        if self.kinds and kind not in self.kinds:
            return f"kind {kind!r} not in {sorted(self.kinds)}"
        return None


def ok() -> Expect:
    return Expect("ok")


def error(*kinds: str) -> Expect:
    return Expect("error", frozenset(kinds))


def either(*kinds: str) -> Expect:
    return Expect("either", frozenset(kinds))


# Kinds a damaged header or impossible value may honestly earn.
GEOMETRY = ("geometry_rejected", "corrupt_dicom", "invalid_value", "study_over_budget")
RESCALE = ("invalid_value", "corrupt_dicom", "geometry_rejected")
DIMENSIONS = ("corrupt_dicom", "geometry_rejected", "unsupported_pixel_data", "no_image_series", "study_over_budget")
NOT_AN_IMAGE = ("no_image_series", "wrong_modality")
UNREADABLE = ("corrupt_dicom", "no_image_series", "bad_archive")
OVER_BUDGET = ("zip_bomb", "upload_too_large", "study_over_budget", "bad_archive", "unsafe_archive")
BAD_GENOMICS = ("invalid_value", "gene_panel_mismatch")
# Damaged pixel data in a transfer syntax the reader supports is corruption, never
# "unsupported"; a flipped header byte may land anywhere, so any specific kind will do.
FLIPPED = {"pixel": Expect("either", frozenset({"corrupt_dicom"})), "header": Expect("either")}
TRUNCATED = ("corrupt_dicom", "geometry_rejected", "no_image_series")
BAD_CLINICAL = ("invalid_value", "clinical_invalid")


@dataclass
class Item:
    """One corpus entry: one folder (or zip) under the archive root holding one study
    (two for "mixed-studies", none for junk)."""

    id: str
    mutation: str
    planted: str
    patient_id: str
    location: Path
    expect: dict[str, Expect]
    study_uids: tuple[str, ...] = ()
    rows: str = ONE
    genomics: dict[str, Any] | None = None
    clinical: dict[str, Any] | None = None
    escapes: tuple[Path, ...] = ()  # where a traversal member would land if obeyed

    def files(self) -> list[Path]:
        """The item's files (a folder item); a zip item is one file."""
        if self.location.is_dir():
            return sorted(p for p in self.location.iterdir() if p.is_file())
        return [self.location]

    def upload(self) -> tuple[str, bytes]:
        """(file name, bytes) of the item as an HTTP upload: a zip item as it is, a
        folder as a zip whose members carry the planted folder and file names."""
        if self.location.is_file():
            return self.location.name, self.location.read_bytes()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in self.files():
                zf.writestr(zip_entry(f"{self.planted}/{path.name}"), path.read_bytes())
        return f"{self.planted}.zip", buffer.getvalue()

    def form_fields(self) -> dict[str, str]:
        """The genomics and clinical form fields of a /predict upload (JSON; a
        non-finite value as Python's json writes it, Infinity / NaN)."""
        fields = {}
        for name, values in (("genomics", self.genomics), ("clinical", self.clinical)):
            if values is not None:
                fields[name] = json.dumps(values)
        return fields

    def json_safe(self) -> bool:
        """True when the item's values are valid JSON (no inf/NaN): it can go in a
        /predict/batch ``cases`` list without spoiling the other cases."""
        try:
            json.dumps([self.genomics, self.clinical], allow_nan=False)
        except ValueError:
            return False
        return True


@dataclass
class Corpus:
    root: Path  # the archive root: one folder or zip per item
    items: list[Item]
    genomics_table: Path  # patient_id + the panel (Parquet), keyed by the items' patient IDs
    clinical_table: Path  # patient_id + age, sex, treatment (Parquet)
    seed: int

    def on(self, path: str) -> list[Item]:
        return [item for item in self.items if path in item.expect]

    def owner(self) -> dict[str, Item]:
        """Study UID -> the item that wrote it."""
        return {uid: item for item in self.items for uid in item.study_uids}


# ------------------------------------------------------------------ bytes of a DICOM file


@dataclass(frozen=True)
class _Element:
    tag: int
    vr: str
    offset: int  # of the tag
    value: int  # of the value
    length: int


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
PIXEL_DATA = 0x7FE00010


def _elements(data: bytes, start: int = 132) -> list[_Element]:
    """Top-level elements of an explicit VR little endian Part 10 file, in file order,
    up to the first of undefined length (the corpus's own files have none before the
    pixel data)."""
    found, pos = [], start
    while pos + 8 <= len(data):
        group, number = struct.unpack_from("<HH", data, pos)
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, pos + 8)
            value = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            value = pos + 8
        found.append(_Element((group << 16) | number, vr.decode("latin-1"), pos, value, length))
        if length == 0xFFFFFFFF:
            break
        pos = value + length
    return found


def _pixel_offset(data: bytes, elements: list[_Element]) -> tuple[int, int]:
    """(tag offset, value offset) of the Pixel Data element. Behind a sequence of
    undefined length the walk stops: then its tag is looked up as bytes."""
    pixel = next((e for e in elements if e.tag == PIXEL_DATA), None)
    if pixel is not None:
        return pixel.offset, pixel.value
    offset = data.rfind(b"\xe0\x7f\x10\x00")
    if offset < 0:
        raise ValueError("no pixel data element")
    return offset, offset + 12


def _regions(data: bytes) -> tuple[list[int], list[int]]:
    """(header, pixel) byte offsets a flip may hit. The values of UIDs and of the
    patient's name and ID are left alone: a flipped UID would make a study the corpus
    cannot attribute, a flipped planted name one the log checks cannot find."""
    elements = _elements(data)
    header_end, pixel_start = _pixel_offset(data, elements)
    protected = np.zeros(len(data), dtype=bool)
    for e in elements:
        if e.vr in ("UI", "PN") or e.tag == 0x00100020:
            protected[e.value : e.value + e.length] = True
    header = [i for i in range(132, header_end) if not protected[i]]
    return header, list(range(pixel_start, len(data)))


def flip_bytes(path: Path, n: int, region: str, rng: np.random.Generator) -> None:
    """XOR ``n`` distinct bytes of ``region`` ("header" or "pixel") with non-zero values."""
    data = bytearray(path.read_bytes())
    header, pixels = _regions(bytes(data))
    where = header if region == "header" else pixels
    for offset in rng.choice(where, size=min(n, len(where)), replace=False):
        data[int(offset)] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(data))


def truncate(path: Path, rng: np.random.Generator) -> int:
    data = path.read_bytes()
    cut = int(rng.integers(132, len(data)))
    path.write_bytes(data[:cut])
    return cut


def unknown_vr(path: Path, rng: np.random.Generator) -> None:
    """Replace the VR of one dataset element (group 0008 or later, short form) with
    two letters that are no VR: pydicom raises NotImplementedError on it."""
    data = bytearray(path.read_bytes())
    candidates = [e for e in _elements(bytes(data)) if e.tag >> 16 >= 0x0008 and e.value == e.offset + 8]
    target = candidates[int(rng.integers(len(candidates)))]
    data[target.offset + 4 : target.offset + 6] = b"QZ"
    path.write_bytes(bytes(data))


def deep_sequence(path: Path, depth: int = DEEP_NESTING) -> None:
    """Insert a Content Sequence nested ``depth`` items deep (undefined lengths) before
    the pixel data: parsing it recursively exhausts Python's recursion limit."""
    data = path.read_bytes()
    at, _ = _pixel_offset(data, _elements(data))
    opening = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    path.write_bytes(data[:at] + opening * depth + closing * depth + data[at:])


def deflated_garbage(path: Path, rng: np.random.Generator) -> None:
    """Keep the file meta but claim Deflated Explicit VR Little Endian, over bytes that
    are no deflate stream."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + buffer.getvalue() + rng.bytes(4096))


def corrupt_member(zip_path: Path, member: str, rng: np.random.Generator) -> None:
    """Flip 16 bytes inside one member's deflated data (its headers stay intact, so
    the zip opens and the damage shows only when that member is inflated)."""
    data = bytearray(zip_path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo(member)
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    for offset in rng.choice(np.arange(start + 8, start + info.compress_size - 8), size=16, replace=False):
        data[int(offset)] ^= int(rng.integers(1, 256))
    zip_path.write_bytes(bytes(data))


def zip_entry(name: str) -> zipfile.ZipInfo:
    """A deflated member with a fixed timestamp: the same corpus, the same zip bytes."""
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def bomb_member(zf: zipfile.ZipFile, name: str, dicom: bytes, padding: int = ZIP_BOMB_BYTES) -> None:
    """A real DICOM instance followed by ``padding`` zero bytes of Data Set Trailing
    Padding (FFFC,FFFC): it is found at discovery like any instance of its study, and
    deflates about 1000:1."""
    with zf.open(zip_entry(name), "w", force_zip64=True) as member:
        member.write(dicom + b"\xfc\xff\xfc\xffOB\x00\x00" + struct.pack("<I", padding))
        chunk = bytes(1024**2)
        for _ in range(padding // len(chunk)):
            member.write(chunk)


@contextmanager
def _no_value_validation() -> Iterator[None]:
    """The corpus writes values pydicom would warn about (a 300-character name, a
    dashed date, NaN spacing): that is the point."""
    settings = config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


# ------------------------------------------------------------------------- the builder


@dataclass
class _Base:
    patient_id: str
    paths: list[Path]
    rle: bool = False  # pixel data RLE-compressed (encapsulated)


@dataclass
class _Ctx:
    id: str
    mutation: str
    planted: str
    patient_id: str
    rng: np.random.Generator
    uids: dict[str, str] = field(default_factory=dict)


def _base_studies(dicom_root: Path) -> list[_Base]:
    by_study: dict[str, _Base] = {}
    for path in sorted(p for p in dicom_root.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "PatientID"])
        rle = ds.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
        by_study.setdefault(str(ds.StudyInstanceUID), _Base(str(ds.PatientID), [], rle)).paths.append(path)
    return sorted(by_study.values(), key=lambda b: b.patient_id)


def _is_axial(ds: Dataset) -> bool:
    return "AXIAL" in [str(v) for v in ds.get("ImageType", [])]


class _Builder:
    def __init__(self, cohort: Path, root: Path, scratch: Path, seed: int):
        self.root, self.scratch, self.seed = root, scratch, seed
        self.bases = _base_studies(cohort / "dicom")
        genomics = pd.read_parquet(cohort / "genomics.parquet")
        self.panel = genomics.set_index(genomics.columns[0]).astype("float64")
        clinical = pd.read_csv(cohort / "clinical.csv", dtype={"patient_id": str}).set_index("patient_id")
        self.clinical = clinical[["age", "sex", "treatment"]]
        self.items: list[Item] = []
        self.genomics_rows: dict[str, dict[str, Any]] = {}
        self.clinical_rows: dict[str, dict[str, Any]] = {}

    # -- item bookkeeping

    def ctx(self, mutation: str) -> _Ctx:
        n = len(self.items)
        return _Ctx(
            f"f{n:03d}",
            mutation,
            f"FUZZ^{PLANTED}{n:03d}",
            f"{PATIENT_ID_MARK}{n:03d}",
            np.random.default_rng([self.seed, n]),
        )

    def add(
        self,
        ctx: _Ctx,
        location: Path,
        expect: dict[str, Expect],
        studies: Sequence[str],
        base: _Base | None = None,
        rows: str = ONE,
        genomics: dict[str, Any] | None = None,
        clinical: dict[str, Any] | None = None,
        table_genomics: dict[str, Any] | None = None,
        table_clinical: dict[str, Any] | None = None,
        escapes: tuple[Path, ...] = (),
    ) -> Item:
        """Record an item. The patient's genomics and clinical values default to the
        base patient's (none for a base without them); the tables get ``table_*`` where
        the service is sent something a table cannot hold (a string)."""
        if base is not None and genomics is None and base.patient_id in self.panel.index:
            genomics = self.panel.loc[base.patient_id].to_dict()
        if base is not None and clinical is None and base.patient_id in self.clinical.index:
            clinical = _clinical_row(self.clinical.loc[base.patient_id])
        for rows_of, values in (
            (self.genomics_rows, table_genomics or genomics),
            (self.clinical_rows, table_clinical or clinical),
        ):
            if values is not None:
                rows_of[ctx.patient_id] = values
        item = Item(
            ctx.id,
            ctx.mutation,
            ctx.planted,
            ctx.patient_id,
            location,
            expect,
            tuple(studies),
            rows,
            genomics,
            clinical,
            escapes,
        )
        self.items.append(item)
        return item

    # -- studies

    def base(self, n: int, genomics: bool = False, rle: bool = False) -> _Base:
        """The n-th base study (cycling), among those with genomics or with RLE pixel
        data if asked (all of them when the cohort has none such)."""
        pool = [b for b in self.bases if (b.patient_id in self.panel.index or not genomics) and (b.rle or not rle)]
        pool = pool or self.bases
        return pool[n % len(pool)]

    def study(self, ctx: _Ctx, base: _Base) -> list[Dataset]:
        """The base study's instances under the item's identity, in file order."""
        with _no_value_validation():
            return [self.reidentify(ctx, pydicom.dcmread(p)) for p in base.paths]

    def reidentify(self, ctx: _Ctx, ds: Dataset) -> Dataset:
        """New UIDs (the same old UID always maps to the same new one within an item),
        the planted name and the item's PatientID."""

        def remap(dataset: Dataset, element: pydicom.DataElement) -> None:
            if element.VR != "UI" or element.tag.group == 0x0002:
                return
            values = element.value if element.VM > 1 else [element.value]
            new = [self.new_uid(ctx, str(v)) if str(v) not in UID_dictionary and str(v) else v for v in values]
            element.value = new if element.VM > 1 else new[0]

        ds.walk(remap)
        if _has_meta(ds) and "SOPInstanceUID" in ds:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName = ctx.planted
        ds.PatientID = ctx.patient_id
        return ds

    def new_uid(self, ctx: _Ctx, old: str) -> str:
        if old not in ctx.uids:
            ctx.uids[old] = generate_uid(UID_ROOT, entropy_srcs=[str(self.seed), ctx.id, old])
        return ctx.uids[old]

    def pydicom_series(self, ctx: _Ctx, name: str, copies: int) -> list[Dataset]:
        """``copies`` instances of one of pydicom's test files, stacked 5 mm apart (each
        its own instance), under the item's identity."""
        with _no_value_validation():
            original = pydicom.dcmread(get_testdata_file(name), force=True)
            series = []
            for i in range(copies):
                ds = copy.deepcopy(original)
                if "SOPInstanceUID" in ds and copies > 1:
                    ds.SOPInstanceUID = f"9.{i + 1}"  # distinct before remapping
                if "ImagePositionPatient" in ds and copies > 1:
                    x, y, z = (float(v) for v in ds.ImagePositionPatient)
                    ds.ImagePositionPatient = [x, y, z + 5.0 * i]
                    ds.InstanceNumber = i + 1
                series.append(self.reidentify(ctx, ds))
            return series

    # -- writing

    def folder(self, ctx: _Ctx, under: Path | None = None) -> Path:
        folder = (under or self.root) / ctx.planted
        folder.mkdir(parents=True, exist_ok=False)
        return folder

    def write(self, ctx: _Ctx, datasets: Sequence[Dataset], under: Path | None = None) -> list[Path]:
        folder = self.folder(ctx, under)
        paths = []
        with _no_value_validation():
            for i, ds in enumerate(datasets):
                path = folder / f"{ctx.planted}_{i:02d}.dcm"
                ds.save_as(path, enforce_file_format=_has_meta(ds))
                paths.append(path)
        return paths

    def zip_of(self, ctx: _Ctx, datasets: Sequence[Dataset]) -> tuple[Path, list[str]]:
        """The study written to scratch, then zipped under the archive root as
        ``<planted>.zip`` with members ``<planted>/<planted>_NN.dcm``."""
        paths = self.write(ctx, datasets, under=self.scratch)
        location = self.root / f"{ctx.planted}.zip"
        members = [f"{ctx.planted}/{p.name}" for p in paths]
        with zipfile.ZipFile(location, "w", zipfile.ZIP_DEFLATED) as zf:
            for path, member in zip(paths, members, strict=True):
                zf.writestr(zip_entry(member), path.read_bytes())
        shutil.rmtree(paths[0].parent)
        return location, members


def _has_meta(ds: Dataset) -> bool:
    return len(getattr(ds, "file_meta", None) or ()) > 0


def _clinical_row(row: pd.Series) -> dict[str, Any]:
    return {"age": float(row["age"]), "sex": str(row["sex"]), "treatment": str(row["treatment"])}


def _uids_of(datasets: Sequence[Dataset]) -> list[str]:
    return sorted({str(ds.StudyInstanceUID) for ds in datasets if "StudyInstanceUID" in ds})


def _axial(datasets: Sequence[Dataset], paths: Sequence[Path]) -> list[Path]:
    return [p for ds, p in zip(datasets, paths, strict=True) if _is_axial(ds)]


def _everywhere(expect: Expect, listener: bool = False, batch: bool = True) -> dict[str, Expect]:
    paths = [SCORER, PREDICT] + ([BATCH] if batch else []) + ([LISTENER] if listener else [])
    return dict.fromkeys(paths, expect)


# ---------------------------------------------------------------------- the mutations
# Each takes the builder and a running number n (which base study, which seed) and
# adds one item.

Mutation = Callable[[_Builder, int], None]


def good(b: _Builder, n: int, listener: bool = False) -> None:
    ctx, base = b.ctx("good"), b.base(n)
    datasets = b.study(ctx, base)
    b.add(ctx, b.write(ctx, datasets)[0].parent, _everywhere(ok(), listener), _uids_of(datasets), base)


def header_change(
    mutation: str, expect: Expect, change: Callable[[list[Dataset], np.random.Generator], None], listener: bool = False
) -> Mutation:
    """A whole-study change made through pydicom (every instance, or some)."""

    def make(b: _Builder, n: int) -> None:
        ctx, base = b.ctx(mutation), b.base(n)
        datasets = b.study(ctx, base)
        with _no_value_validation():
            change(datasets, ctx.rng)
        folder = b.write(ctx, datasets)[0].parent
        b.add(ctx, folder, _everywhere(expect, listener), _uids_of(datasets), base)

    return make


def _set_all(**values: Any) -> Callable[[list[Dataset], np.random.Generator], None]:
    def change(datasets: list[Dataset], rng: np.random.Generator) -> None:
        for ds in datasets:
            for name, value in values.items():
                if name in ("Rows", "Columns") and value > 0xFFFF:
                    # Beyond US: written as UL, as a hostile encoder could.
                    ds.add(pydicom.DataElement(pydicom.datadict.tag_for_keyword(name), "UL", value))
                else:
                    setattr(ds, name, value)

    return change


def _drop_positions(datasets: list[Dataset], rng: np.random.Generator) -> None:
    axial = [ds for ds in datasets if _is_axial(ds)]
    for i in rng.choice(len(axial), size=2, replace=False):
        del axial[int(i)].ImagePositionPatient


def _long_name(datasets: list[Dataset], rng: np.random.Generator) -> None:
    for ds in datasets:
        ds.PatientName = f"{ds.PatientName}^{'LONGNAME' * 40}"


def _invalid_uids(datasets: list[Dataset], rng: np.random.Generator) -> None:
    """Series and instance UIDs a reader warns about (letters, a leading zero): the
    warning quotes the value, which must not reach a log as it is. The study UID
    stays valid, so the study is still the item's."""
    for ds in datasets:
        # Cut to stay within 64 characters: a sender refuses longer ones outright.
        ds.SeriesInstanceUID = f"{str(ds.SeriesInstanceUID)[:56]}.FUZZ"
        ds.SOPInstanceUID = f"{str(ds.SOPInstanceUID)[:58]}.07"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _non_ascii_name(datasets: list[Dataset], rng: np.random.Generator) -> None:
    for ds in datasets:
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = f"{ds.PatientName}^Ørjan Ünïcødé=山田^太郎"


def file_change(
    mutation: str,
    expect: Expect,
    change: Callable[[list[Path], np.random.Generator], None],
    listener: bool = False,
    rows: str = ONE,
    rle: bool = False,
) -> Mutation:
    """A byte-level change to the written files of one study (axial slices only, so
    that the study's other files keep its identity); ``rle``: of an RLE-compressed one."""

    def make(b: _Builder, n: int) -> None:
        ctx, base = b.ctx(mutation), b.base(n, rle=rle)
        datasets = b.study(ctx, base)
        paths = b.write(ctx, datasets)
        change(_axial(datasets, paths), ctx.rng)
        b.add(ctx, paths[0].parent, _everywhere(expect, listener), _uids_of(datasets), base, rows=rows)

    return make


def _flips(count: int, region: str) -> Callable[[list[Path], np.random.Generator], None]:
    def change(axial: list[Path], rng: np.random.Generator) -> None:
        for i in rng.choice(len(axial), size=int(rng.integers(1, 4)), replace=False):
            flip_bytes(axial[int(i)], count, region, rng)

    return change


def _one(change: Callable[[Path, np.random.Generator], Any]) -> Callable[[list[Path], np.random.Generator], None]:
    """``change`` applied to one axial slice, chosen by the item's generator."""

    def apply(axial: list[Path], rng: np.random.Generator) -> None:
        change(axial[int(rng.integers(len(axial)))], rng)

    return apply


def duplicated(b: _Builder, n: int) -> None:
    ctx, base = b.ctx("duplicated-files"), b.base(n)
    datasets = b.study(ctx, base)
    paths = b.write(ctx, datasets)
    for path in paths:
        shutil.copyfile(path, path.with_name(f"{path.stem}_copy.dcm"))
    b.add(ctx, paths[0].parent, _everywhere(ok(), listener=True), _uids_of(datasets), base)


def mixed(b: _Builder, n: int) -> None:
    """Two patients' studies in one folder (one upload): the scorer and the listener
    see two studies; the service refuses the mix, specifically."""
    ctx = b.ctx("mixed-studies")
    first, second = b.base(n), b.base(n + 1)
    datasets = b.study(ctx, first) + b.study(ctx, second)
    folder = b.write(ctx, datasets)[0].parent
    expect = {SCORER: ok(), PREDICT: error("multiple_studies"), BATCH: error("multiple_studies"), LISTENER: ok()}
    b.add(ctx, folder, expect, _uids_of(datasets), first)


def extra_files(mutation: str, junk: Callable[[np.random.Generator], list[bytes]]) -> Mutation:
    """A good study plus files that are not DICOM: the study must still be scored."""

    def make(b: _Builder, n: int) -> None:
        ctx, base = b.ctx(mutation), b.base(n)
        datasets = b.study(ctx, base)
        paths = b.write(ctx, datasets)
        for i, data in enumerate(junk(ctx.rng)):
            (paths[0].parent / f"{ctx.planted}_junk{i}.dcm").write_bytes(data)
        b.add(ctx, paths[0].parent, _everywhere(ok()), _uids_of(datasets), base)

    return make


def _junk(rng: np.random.Generator) -> list[bytes]:
    return [rng.bytes(4096), b"not a DICOM file\n", b"\x89PNG\r\n\x1a\n" + rng.bytes(512)]


def _empty(rng: np.random.Generator) -> list[bytes]:
    return [b""]


def only_junk(mutation: str, junk: Callable[[np.random.Generator], list[bytes]]) -> Mutation:
    """No DICOM at all: no study for the scorer, a specific refusal for the service."""

    def make(b: _Builder, n: int) -> None:
        ctx = b.ctx(mutation)
        folder = b.folder(ctx)
        for i, data in enumerate(junk(ctx.rng)):
            (folder / f"{ctx.planted}_{i:02d}.dcm").write_bytes(data)
        expect = {SCORER: error(), PREDICT: error(*UNREADABLE), BATCH: error(*UNREADABLE)}
        b.add(ctx, folder, expect, (), rows=NONE)

    return make


def zipped_good(b: _Builder, n: int) -> None:
    ctx, base = b.ctx("zip-good"), b.base(n)
    datasets = b.study(ctx, base)
    location, _ = b.zip_of(ctx, datasets)
    b.add(ctx, location, {SCORER: ok(), PREDICT: ok(), BATCH: ok()}, _uids_of(datasets), base)


def zip_corrupt_member(b: _Builder, n: int) -> None:
    ctx, base = b.ctx("zip-corrupt-member"), b.base(n)
    datasets = b.study(ctx, base)
    location, members = b.zip_of(ctx, datasets)
    axial = [m for ds, m in zip(datasets, members, strict=True) if _is_axial(ds)]
    corrupt_member(location, axial[int(ctx.rng.integers(len(axial)))], ctx.rng)
    expect = either("corrupt_dicom", "bad_archive", "geometry_rejected")
    b.add(ctx, location, {SCORER: expect, PREDICT: expect, BATCH: expect}, _uids_of(datasets), base)


def zip_bomb(b: _Builder, n: int) -> None:
    """The study plus one more instance of it padded to 200 MB of zeros (ratio > 1000):
    over any sane per-study byte budget, refused without inflating it all."""
    ctx, base = b.ctx("zip-bomb"), b.base(n)
    datasets = b.study(ctx, base)
    location, _ = b.zip_of(ctx, datasets)
    extra = copy.deepcopy(datasets[0])
    extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = b.new_uid(ctx, "bomb")
    buffer = io.BytesIO()
    with _no_value_validation():
        extra.save_as(buffer, enforce_file_format=True)
    with zipfile.ZipFile(location, "a", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        bomb_member(zf, f"{ctx.planted}/{ctx.planted}_bomb.dcm", buffer.getvalue())
    expect = error(*OVER_BUDGET)
    b.add(ctx, location, {SCORER: expect, PREDICT: expect, BATCH: expect}, _uids_of(datasets), base, rows=MAYBE)


def zip_traversal(b: _Builder, n: int) -> None:
    ctx, base = b.ctx("zip-traversal"), b.base(n)
    datasets = b.study(ctx, base)
    location, members = b.zip_of(ctx, datasets)
    escaped = f"fuzz-escape-{ctx.id}.dcm"
    with zipfile.ZipFile(location) as zf:
        first = zf.read(members[0])
    with zipfile.ZipFile(location, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zip_entry(f"../../../../../../tmp/{escaped}"), first)
        zf.writestr(zip_entry(f"/tmp/abs-{escaped}"), first)
    escapes = (Path("/tmp") / escaped, Path("/tmp") / f"abs-{escaped}", b.root.parent / escaped)
    # The scorer names extracted members itself, so it may skip the hostile names and
    # score the rest; an upload holding them is refused whole.
    expect = {SCORER: either("unsafe_archive"), PREDICT: error("unsafe_archive"), BATCH: error("unsafe_archive")}
    b.add(
        ctx,
        location,
        expect,
        _uids_of(datasets),
        base,
        rows=MAYBE,
        escapes=escapes,
    )


def genomics_value(mutation: str, feature: str, value: Any, expect: Expect, listener: bool = False) -> Mutation:
    """A good study whose patient has one hostile genomic value. A string cannot sit in
    a numeric table: the scorer and the listener then get the untouched row (and must
    score the study), only the service sees the string."""

    def make(b: _Builder, n: int) -> None:
        ctx, base = b.ctx(mutation), b.base(n, genomics=True)
        datasets = b.study(ctx, base)
        folder = b.write(ctx, datasets)[0].parent
        genes = b.panel.loc[base.patient_id].to_dict()
        hostile = {**genes, feature: value}
        if isinstance(value, str):
            paths = {SCORER: ok(), PREDICT: expect, BATCH: expect}
            b.add(ctx, folder, paths, _uids_of(datasets), base, genomics=hostile, table_genomics=genes)
            return
        paths = _everywhere(expect, listener, batch=_finite(value))
        b.add(ctx, folder, paths, _uids_of(datasets), base, genomics=hostile)

    return make


def clinical_value(mutation: str, name: str, value: Any, expect: Expect) -> Mutation:
    def make(b: _Builder, n: int) -> None:
        ctx, base = b.ctx(mutation), b.base(n)
        datasets = b.study(ctx, base)
        folder = b.write(ctx, datasets)[0].parent
        row = _clinical_row(b.clinical.loc[base.patient_id])
        hostile = {**row, name: value}
        if isinstance(value, str):
            paths = {SCORER: ok(), PREDICT: expect, BATCH: expect}
            b.add(ctx, folder, paths, _uids_of(datasets), base, clinical=hostile, table_clinical=row)
            return
        b.add(ctx, folder, _everywhere(expect, batch=_finite(value)), _uids_of(datasets), base, clinical=hostile)

    return make


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def pydicom_study(
    mutation: str,
    name: str,
    copies: int,
    expect: Expect,
    listener: bool = False,
    change: Callable[[list[Dataset], np.random.Generator], None] | None = None,
    rows: str = ONE,
) -> Mutation:
    """One of pydicom's shipped files as a study (``copies`` instances 5 mm apart)."""

    def make(b: _Builder, n: int) -> None:
        ctx = b.ctx(mutation)
        datasets = b.pydicom_series(ctx, name, copies)
        if change is not None:
            with _no_value_validation():
                change(datasets, ctx.rng)
        folder = b.write(ctx, datasets)[0].parent
        uids = _uids_of(datasets)
        b.add(ctx, folder, _everywhere(expect, listener), uids, rows=rows if uids else NONE)

    return make


def pydicom_flipped(mutation: str, name: str, copies: int, count: int, region: str) -> Mutation:
    def make(b: _Builder, n: int) -> None:
        ctx = b.ctx(mutation)
        datasets = b.pydicom_series(ctx, name, copies)
        paths = b.write(ctx, datasets)
        _flips(count, region)(paths, ctx.rng)
        b.add(ctx, paths[0].parent, _everywhere(FLIPPED[region]), _uids_of(datasets))

    return make


def _plan(scale: int) -> list[Mutation]:
    """Every mutation once; the random ones (flips, truncation, unknown VR) ``scale``
    times more with other seeds and base studies."""
    fixed: list[Mutation] = [
        lambda b, n: good(b, n, listener=True),
        lambda b, n: good(b, n, listener=True),
        good,
        good,
        duplicated,
        header_change("patient-sex-U", ok(), _set_all(PatientSex="U"), listener=True),
        header_change("birth-date-dashed", ok(), _set_all(PatientBirthDate="1960-06-17"), listener=True),
        header_change("name-over-long", ok(), _long_name, listener=True),
        header_change("name-non-ascii", ok(), _non_ascii_name, listener=True),
        header_change("uids-invalid", ok(), _invalid_uids, listener=True),
        mixed,
        extra_files("extra-junk-files", _junk),
        extra_files("extra-empty-file", _empty),
        only_junk("junk-only", _junk),
        only_junk("junk-only-text", lambda rng: [b"Patient list\n" * 50]),
        only_junk("empty-file-only", _empty),
        file_change(
            "deep-sequence",
            either("corrupt_dicom", "geometry_rejected"),
            _one(lambda path, rng: deep_sequence(path)),
            listener=True,
        ),
        file_change("deflated-garbage", either("corrupt_dicom", "geometry_rejected"), _one(deflated_garbage)),
        file_change("flip16-pixel-rle", FLIPPED["pixel"], _flips(16, "pixel"), listener=True, rle=True),
        file_change("truncated-rle", either(*TRUNCATED), _one(truncate), rle=True),
        zipped_good,
        zip_corrupt_member,
        zip_bomb,
        zip_traversal,
        header_change("pixel-spacing-2000", error(*GEOMETRY), _set_all(PixelSpacing=[2000.0, 2000.0]), listener=True),
        header_change("pixel-spacing-0", error(*GEOMETRY), _set_all(PixelSpacing=[0.0, 0.0])),
        header_change("pixel-spacing-negative", error(*GEOMETRY), _set_all(PixelSpacing=[-1.0, -1.0])),
        header_change("pixel-spacing-nan", error(*GEOMETRY), _set_all(PixelSpacing=["NaN", "NaN"])),
        header_change("rescale-slope-0", error(*RESCALE), _set_all(RescaleSlope=0), listener=True),
        header_change("rescale-slope-1e30", error(*RESCALE), _set_all(RescaleSlope="1e30")),
        header_change("rows-0", error(*DIMENSIONS), _set_all(Rows=0)),
        header_change("rows-70000", error(*DIMENSIONS), _set_all(Rows=70000)),
        header_change("columns-0", error(*DIMENSIONS), _set_all(Columns=0)),
        header_change("columns-70000", error(*DIMENSIONS), _set_all(Columns=70000)),
        header_change("frames-1e9", error(*DIMENSIONS), _set_all(NumberOfFrames=1_000_000_000)),
        header_change(
            "position-missing",
            either("geometry_rejected", "corrupt_dicom", "no_image_series"),
            _drop_positions,
            listener=True,
        ),
        genomics_value("genomics-1e39", EXPRESSION_GENE, 1e39, error("invalid_value"), listener=True),
        genomics_value("genomics-minus-1e308", EXPRESSION_GENE, -1e308, error("invalid_value")),
        genomics_value("genomics-inf", EXPRESSION_GENE, math.inf, error(*BAD_GENOMICS)),
        genomics_value("genomics-nan", EXPRESSION_GENE, math.nan, either(*BAD_GENOMICS)),
        genomics_value("genomics-flag-1e39", MUTATION_FLAG, 1e39, error("invalid_value")),
        genomics_value("genomics-string", EXPRESSION_GENE, "high", error(*BAD_GENOMICS, "omics_format")),
        clinical_value("clinical-age-1e300", "age", 1e300, error(*BAD_CLINICAL)),
        clinical_value("clinical-age-inf", "age", math.inf, error(*BAD_CLINICAL)),
        clinical_value("clinical-age-negative", "age", -5.0, either(*BAD_CLINICAL)),
        clinical_value("clinical-age-300", "age", 300.0, either(*BAD_CLINICAL)),
        clinical_value("clinical-age-text", "age", "abc", error("clinical_invalid")),
        # A level the model never saw is scored as "other" and named in the answer (issue 16).
        clinical_value("clinical-sex-unknown-level", "sex", "X", ok()),
        pydicom_study("pydicom-ct-small-series", "CT_small.dcm", 6, ok(), listener=True),
        pydicom_study("pydicom-ct-small-slope-0", "CT_small.dcm", 6, error(*RESCALE), change=_set_all(RescaleSlope=0)),
        pydicom_study(
            "pydicom-ct-small-spacing-0", "CT_small.dcm", 6, error(*GEOMETRY), change=_set_all(PixelSpacing=[0.0, 0.0])
        ),
        pydicom_flipped("pydicom-ct-small-flip16-pixel", "CT_small.dcm", 6, 16, "pixel"),
        pydicom_study("pydicom-mr-small-series", "MR_small.dcm", 6, error(*NOT_AN_IMAGE), listener=True),
        pydicom_study("pydicom-mr-truncated", "MR_truncated.dcm", 1, error("corrupt_dicom", *NOT_AN_IMAGE)),
        pydicom_study("pydicom-rtplan", "rtplan.dcm", 1, error(*NOT_AN_IMAGE)),
        pydicom_study("pydicom-rtdose", "rtdose.dcm", 1, error(*NOT_AN_IMAGE)),
        pydicom_study("pydicom-sr", "test-SR.dcm", 1, error(*NOT_AN_IMAGE)),
        pydicom_study("pydicom-ecg", "waveform_ecg.dcm", 1, error(*NOT_AN_IMAGE)),
        pydicom_study("pydicom-bad-vr", "badVR.dcm", 1, error("corrupt_dicom", *NOT_AN_IMAGE)),
        pydicom_study("pydicom-deflated", "image_dfl.dcm", 1, error(*NOT_AN_IMAGE)),
        pydicom_study("pydicom-jpeg2000-nm", "JPEG2000.dcm", 1, error("unsupported_pixel_data", *NOT_AN_IMAGE)),
        pydicom_study(
            "pydicom-big-endian-us",
            "ExplVR_BigEnd.dcm",
            1,
            error("corrupt_dicom", "unsupported_pixel_data", *NOT_AN_IMAGE),
        ),
        pydicom_study("pydicom-no-meta", "no_meta.dcm", 1, error(*UNREADABLE)),
    ]
    random: list[Mutation] = []
    for repeat in range(scale):
        random += [
            file_change(
                f"flip{k}-{region}",
                FLIPPED[region],
                _flips(k, region),
                listener=(k, region, repeat) == (16, "pixel", 0),
            )
            for k in (1, 2, 16)
            for region in ("header", "pixel")
            for _ in range(2)
        ]
        random += [file_change("truncated", either(*TRUNCATED), _one(truncate)) for _ in range(4)]
        random += [file_change("unknown-vr", either(), _one(unknown_vr), listener=i + repeat == 0) for i in range(2)]
    return fixed + random


def build_corpus(cohort: Path, out: Path, seed: int = 14, scale: int = 1) -> Corpus:
    """Write the corpus under ``out`` (``out/archive`` is the archive root) from a
    radfusion.synth cohort folder (dicom/, genomics.parquet, clinical.csv)."""
    root, scratch = out / "archive", out / "scratch"
    root.mkdir(parents=True)
    scratch.mkdir()
    builder = _Builder(cohort, root, scratch, seed)
    with warnings.catch_warnings():
        # pydicom warns about the very values the corpus plants.
        warnings.simplefilter("ignore")
        for n, mutation in enumerate(_plan(scale)):
            mutation(builder, n)
    shutil.rmtree(scratch)
    genomics = out / "genomics.parquet"
    frame = pd.DataFrame.from_dict(builder.genomics_rows, orient="index")
    frame.rename_axis("patient_id").reset_index().to_parquet(genomics, index=False)
    clinical = out / "clinical.parquet"
    table = pd.DataFrame.from_dict(builder.clinical_rows, orient="index").rename_axis("patient_id").reset_index()
    table.to_parquet(clinical, index=False)
    return Corpus(root, builder.items, genomics, clinical, seed)
