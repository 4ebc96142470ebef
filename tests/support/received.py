"""What the listener's SCP does with each received instance (written into the work
folder, recorded in the state), without the network: for tests that drive the pipeline
in-process."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom

from radfusion.serving.pacs.completeness import hints_of
from radfusion.serving.pacs.state import OnResend, StudyState
from radfusion.serving.pacs.storage import WorkDir


def deliver(
    state: StudyState, work: WorkDir, paths: list[Path], now: float, policy: OnResend = OnResend.IGNORE
) -> None:
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        target = work.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        state.record_instance(
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
            ds.SOPClassUID,
            str(target),
            policy,
            now=now,
            hints=hints_of(ds),
        )
