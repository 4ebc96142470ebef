"""The one line a user error ends a command with: ``<problem>; <what to do>``."""

from __future__ import annotations

import sys

# Errors of what the user gave (a path, an argument) that the command did not name
# itself, with what to do about each. Any other exception is a bug: its traceback shows.
PATH_ERRORS: dict[type[OSError], str] = {
    FileNotFoundError: "check the path",
    NotADirectoryError: "give a folder there, not a file",
    IsADirectoryError: "give a file there, not a folder",
    PermissionError: "check its permissions, or choose another path",
    FileExistsError: "remove it, or choose another path",
}


def user_error_message(exc: BaseException, hide_paths: bool = False) -> str | None:
    """The one line for an error the user can fix (``<problem>; <what to do>``), or
    None for any other exception. A file error the command did not name itself says
    where --debug shows more; ``hide_paths`` (commands that read a hospital's studies,
    whose file names may name a patient) leaves its path out."""
    errors = sys.modules.get("radfusion.errors")  # imported by whatever raised a UserError
    if errors is not None and isinstance(exc, errors.UserError):
        return _one_line(str(exc))
    for cls, fix in PATH_ERRORS.items():
        if isinstance(exc, cls):
            if exc.strerror and (exc.filename is None or hide_paths):
                text = f"a file or folder: {exc.strerror[:1].lower()}{exc.strerror[1:]}"
            elif exc.filename is not None and exc.strerror:
                text = f"{exc.filename}: {exc.strerror[:1].lower()}{exc.strerror[1:]}"
            else:
                text = str(exc)
            text = _one_line(text)
            return text if "; " in text else f"{text}; {fix} (radfusion --debug ... shows where)"
    return None


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
