"""DICOM de-identification: PS3.15 Annex E Basic Application Level Confidentiality
Profile (the whole current Table E.1-1, confidentiality_profile.csv) with its options:
Retain Longitudinal Temporal Information with Modified Dates (the default) or Full
Dates, Retain Patient Characteristics, Device Identity, Institution Identity and UIDs,
Clean Descriptors and Clean Structured Content.

Entry point: radfusion.deid.run.deidentify_tree (the `radfusion deid` command). Nothing
is imported here, so the command line parser stays cheap to build.
"""
