"""DICOM de-identification: PS3.15 Annex E Basic Application Level Confidentiality
Profile with the Retain Longitudinal Temporal Information Modified Dates Option.

Entry point: radfusion.deid.run.deidentify_tree (the `radfusion deid` command). Nothing
is imported here, so the command line parser stays cheap to build.
"""
