"""Where the project's own files are, for tests that run its commands and read its configs."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = PROJECT_ROOT / "configs"
LEGACY = PROJECT_ROOT / "tests" / "data" / "legacy"
