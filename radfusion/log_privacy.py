"""No identifiers in logs, whoever writes the line.

radfusion's own messages never quote header values or paths. Libraries do: pydicom's
validation warnings quote element values ("Invalid value for VR PN: 'DOE^JOHN'"),
and exception texts carry the path of the file being read, whose folders in an archive
are often named after the patient. ``install`` rewrites every log record of the
process when it is created (``logging.setLogRecordFactory``, so handlers that BentoML,
Ray or a user configure see only the rewritten text) and routes ``warnings`` through
logging:

* DICOM UIDs (dotted numbers of five or more parts) become ``<uid>``;
* file paths with two or more components become ``<path>`` (not the routes of the
  HTTP access log);
* in records from other libraries, quoted values become ``<value>``;
* each message is one printable line (a peer's control characters cannot forge lines);
* radfusion's tracebacks are formatted and rewritten the same way; another library's
  are reduced to the exception's type.

Call ``install()`` once at the start of every process that reads studies (the scorer
and its workers, each service worker, the PACS listener)."""

from __future__ import annotations

import logging
import re
import traceback

# A DICOM UID: digits separated by dots, five parts at least (versions have fewer).
_UID = re.compile(r"(?<![\w.])\d+(?:\.\d+){4,}(?![\w.])")
# A path of two or more components, absolute or relative, POSIX or Windows style.
_PART = r"[^\s'\"`<>|:,;()\[\]{}\\/]+"
_PATH = re.compile(rf"(?:[A-Za-z]:)?(?:[\\/]?{_PART})?(?:[\\/]{_PART}){{2,}}[\\/]?")
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
# Loggers whose messages radfusion writes itself (and keeps free of values).
_OWN = ("radfusion", "bentoml.radfusion", "__main__")
# The HTTP access log: its paths are the service's routes (a DICOMweb route's UIDs are
# still replaced), its quotes the request line.
_ACCESS = "bentoml.access"

_installed = False


def redact(text: str, *, quoted: bool = False, paths: bool = True) -> str:
    """``text`` without UIDs, paths (unless not ``paths``) and quoted values (when ``quoted``)."""
    if quoted:
        text = _QUOTED.sub("<value>", text)
    if paths:
        text = _PATH.sub("<path>", text)
    return _UID.sub("<uid>", text)


def _own(name: str) -> bool:
    return any(name == own or name.startswith(own + ".") for own in _OWN)


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Rewrite ``record`` in place: its message (arguments merged in) on one printable
    line, and its traceback (another library's becomes the exception's type only)."""
    own = _own(record.name)
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record must still be logged, redacted
        message = f"{record.msg!s} {record.args!r}"
    if record.exc_info and record.exc_info[0] is not None:
        if own:
            text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_text = redact(text.rstrip("\n"), quoted=True)
        else:
            # A peer's bytes (an AE title of control characters, a PDU that cannot be
            # decoded) end in library tracebacks that say nothing an operator can act on.
            message = f"{message} ({record.exc_info[0].__name__})"
        record.exc_info = None
    access = record.name == _ACCESS
    record.msg = _printable(redact(message, quoted=not (own or access), paths=not access))
    record.args = None
    if record.stack_info:
        record.stack_info = redact(record.stack_info, quoted=True)
    return record


def _printable(text: str) -> str:
    """One line, control characters shown as '?': a peer cannot forge log lines."""
    return "".join(ch if ch.isprintable() else "?" for ch in " ".join(text.splitlines()))


def install() -> None:
    """Redact every log record this process creates from now on; idempotent."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        return redact_record(previous(*args, **kwargs))

    logging.setLogRecordFactory(factory)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> redacted
    _installed = True
