"""The PACS side of radfusion: a DICOM listener that scores studies and sends the
result back into the study as a Structured Report.

    PACS --C-STORE--> scp (instances to disk + state) --quiet period--> pipeline:
        pending -> predict (same ONNX runtime and preprocessing as HTTP)
                -> sr (highdicom Comprehensive SR) -> send (C-STORE / STOW-RS)

Everything a study goes through is recorded in SQLite (state), so a restart resumes
where the last process stopped. ``radfusion listen`` / ``radfusion pacs-status``
(radfusion.serving.pacs.cli) are the commands."""
