"""Read a DICOM stream no further than a byte limit, whatever its headers claim.

pydicom trusts lengths: an element that declares 3 GiB is read as 3 GiB, and a file
whose meta header says Deflated Explicit VR Little Endian is inflated whole into
memory before the first element is parsed (a few kilobytes of zeros become
gigabytes). ``read_bounded`` reads the same datasets pydicom would, with every read
and every inflated byte counted against ``limit``; beyond it the file is refused with
UploadTooLargeError before the memory is spent. A deflated body is inflated only as far
as it is parsed, so a header read of a deflated file costs a header."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from typing import IO, BinaryIO, cast

from pydicom.dataset import FileDataset
from pydicom.filereader import _at_pixel_data, _read_file_meta_info, read_dataset, read_preamble
from pydicom.tag import BaseTag, Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from radfusion.errors import UploadTooLargeError

StopWhen = Callable[[BaseTag, "str | None", int], bool]


class _OverLimit(UploadTooLargeError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file's elements or deflated body go beyond {limit / 1024**2:,.0f} MiB")


class BoundedStream:
    """``source`` (a file or zip member, seekable), read no further than ``limit``: a
    length that points beyond it is refused before it is read."""

    def __init__(self, source: IO[bytes], limit: int):
        self._source, self._limit = source, limit
        self._start = source.tell()
        self.name = None  # pydicom names the file in messages when it can: never here

    def left(self) -> int:
        return self._limit - self.tell()

    def read(self, size: int | None = -1) -> bytes:
        left = self.left()
        if size is not None and size > self._limit:
            raise _OverLimit(self._limit)  # an element claiming more than the whole bound
        if size is None or size < 0 or size > left:
            # Beyond the limit only if the source really holds more: a read past the end
            # of a short file is pydicom's way of finding the end.
            data = self._source.read(left + 1)
            if len(data) > left:
                raise _OverLimit(self._limit)
            return data
        return self._source.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        # Checked before seeking: a zip member seeks forward by inflating.
        if whence == os.SEEK_CUR:
            offset, whence = self.tell() + offset, os.SEEK_SET
        if whence != os.SEEK_SET:
            raise OSError("a bounded DICOM stream is read from its start")
        if offset > self._limit:
            raise _OverLimit(self._limit)
        return self._source.seek(self._start + offset) - self._start

    def tell(self) -> int:
        return self._source.tell() - self._start


class InflatingStream:
    """The deflated rest of ``source``, inflated only as far as it is read (at most
    ``limit`` bytes), seekable within what was inflated."""

    _PULL = 64 * 1024

    def __init__(self, source: BoundedStream, limit: int):
        self._source, self._limit = source, limit
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._data = bytearray()
        self._position = 0
        self.name = None

    def _inflate_to(self, end: int) -> None:
        if end > self._limit:
            raise _OverLimit(self._limit)
        while len(self._data) < end and not self._inflater.eof:
            compressed = self._inflater.unconsumed_tail or self._source.read(min(self._PULL, self._source.left()))
            if not compressed:
                return  # truncated: pydicom sees the end of the file
            self._data += self._inflater.decompress(compressed, end - len(self._data))

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._limit - self._position
        self._inflate_to(self._position + size)
        chunk = bytes(self._data[self._position : self._position + size])
        self._position += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position}.get(whence)
        if base is None:
            raise OSError("seek from the end of a deflated stream")
        self._inflate_to(base + offset)
        self._position = min(base + offset, len(self._data))
        return self._position

    def tell(self) -> int:
        return self._position


def read_bounded(
    source: IO[bytes],
    limit: int,
    *,
    stop_before_pixels: bool = False,
    stop_when: StopWhen | None = None,
    specific_tags: list | None = None,
    defer_size: int | None = None,
) -> FileDataset:
    """The dataset of a DICOM Part 10 stream (preamble and meta header required), read
    under ``limit`` bytes (inflated bytes for a deflated body)."""
    stream = BoundedStream(source, limit)
    preamble = read_preamble(cast(BinaryIO, stream), False)
    meta = _read_file_meta_info(cast(BinaryIO, stream))
    syntax = meta.get("TransferSyntaxUID")
    body: BoundedStream | InflatingStream = stream
    if syntax == DeflatedExplicitVRLittleEndian:
        body = InflatingStream(stream, limit)
    tags: list[BaseTag | int] | None = None
    if specific_tags is not None:
        # As dcmread does: keywords become tags, and the character set is always read.
        tags = [*(Tag(t) for t in specific_tags), Tag("SpecificCharacterSet")]
    implicit = syntax is not None and syntax.is_implicit_VR
    little = syntax is None or syntax.is_little_endian
    dataset = read_dataset(
        cast(BinaryIO, body),
        implicit,
        little,
        stop_when=stop_when or (_at_pixel_data if stop_before_pixels else None),
        defer_size=defer_size,
        specific_tags=tags,
    )
    ds = FileDataset(None, dataset, preamble, meta, implicit, little)  # type: ignore[arg-type]
    ds.set_original_encoding(implicit, little, dataset._character_set)
    return ds
