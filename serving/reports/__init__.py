"""The DICOM results radfusion writes into a patient's study, shared by the HTTP
service (STOW-RS) and the PACS listener: the prediction as a Structured Report and the
patient and study attributes such an object may carry."""
