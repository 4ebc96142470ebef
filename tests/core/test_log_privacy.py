"""Log records are rewritten before any handler sees them: no UID, no path, no quoted
header value from another library, one printable line."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

from radfusion.log_privacy import redact, redact_record

UID = "1.2.826.0.1.3680043.8.498.75513436224566510876101788962646017244"


def _record(name: str, msg: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, exc_info)


def test_uids_paths_and_quoted_values_are_replaced() -> None:
    text = f"Invalid value for VR PN: 'DOE^JOHN' in /archive/DOE_JOHN/{UID}/IM0001.dcm, C:\\scans\\SMITH\\1.dcm"
    assert redact(text, quoted=True) == "Invalid value for VR PN: <value> in <path>, <path>"
    # what radfusion itself writes survives: counts, ratios, versions, URLs' hosts
    kept = "scored 25 of 25 studies (12/13 ok) with onnxruntime 1.20.1 on http://127.0.0.1:3000"
    assert redact(kept) == kept


def test_a_library_record_loses_its_values_its_traceback_and_its_line_breaks() -> None:
    try:
        raise ValueError(f"bad element in /archive/DOE_JOHN/{UID}")
    except ValueError:
        record = _record("pydicom", "value %r of %s\nforged line \x07", "DOE^JOHN", UID, exc_info=sys.exc_info())
    redact_record(record)
    assert record.getMessage() == "value <value> of <uid> forged line ? (ValueError)"
    assert record.exc_info is None and record.exc_text is None


def test_radfusion_keeps_its_traceback_redacted() -> None:
    try:
        open(f"/archive/DOE_JOHN/{UID}.dcm")  # noqa: SIM115 - the error is the point
    except OSError:
        record = _record("radfusion.serving.scoring", "could not read a study", exc_info=sys.exc_info())
    redact_record(record)
    assert "FileNotFoundError" in record.exc_text and "DOE_JOHN" not in record.exc_text and UID not in record.exc_text


def test_install_covers_warnings_and_every_logger_of_the_process() -> None:
    script = textwrap.dedent(
        f"""
        import logging, warnings
        from radfusion import log_privacy
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        log_privacy.install()
        warnings.warn("Invalid value 'DOE^JOHN' for {UID}")
        logging.getLogger("pydicom").warning("file %s", "/archive/DOE_JOHN/x.dcm")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "DOE" not in done.stderr and UID not in done.stderr
    assert "Invalid value <value> for <uid>" in done.stderr and "pydicom: file <path>" in done.stderr


def test_the_access_log_keeps_its_routes_but_not_uids() -> None:
    record = _record(
        "bentoml.access", f"127.0.0.1:5000 (scheme=http,method=POST,path=/dicom-web/studies/{UID}) (status=200)"
    )
    redact_record(record)
    assert record.getMessage() == "127.0.0.1:5000 (scheme=http,method=POST,path=/dicom-web/studies/<uid>) (status=200)"
