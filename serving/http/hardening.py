"""Close a door BentoML 1.4 leaves open: a multipart *text* value in a file field
(``-F study=http://host/x``) makes the server download that URL to use as the file.
A hospital service must not fetch URLs on a caller's behalf, so such a value is taken
as the file's content instead (as BentoML already does for JSON bodies): it then fails
as an unreadable study with a 4xx, like any other bad upload."""

from __future__ import annotations

import io

from starlette.datastructures import UploadFile


async def _value_as_file(obj: str | bytes | UploadFile) -> UploadFile:
    if isinstance(obj, UploadFile):
        return obj
    data = obj.encode("utf-8") if isinstance(obj, str) else bytes(obj)
    return UploadFile(io.BytesIO(data), size=len(data), filename=None)


def forbid_url_fetch_for_file_fields() -> None:
    """Replace BentoML's multipart file resolver (process-wide, idempotent)."""
    from _bentoml_impl.serde import MultipartSerde

    MultipartSerde.ensure_file = staticmethod(_value_as_file)
