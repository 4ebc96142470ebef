"""A study's files as the zip archive an HTTP client uploads (shared by the service tests)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path


def zip_study(paths: list[Path], names: list[str] | None = None) -> bytes:
    """Members named ``study/NNN.dcm`` unless ``names`` says otherwise."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, path in enumerate(paths):
            zf.write(path, names[i] if names else f"study/{i:03d}.dcm")
    return buffer.getvalue()
