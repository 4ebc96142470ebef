"""radfusion core: DICOM and genomics reading, the one preprocessing definition,
the model contract and the ONNX Runtime wrapper. Light dependencies only."""

__version__ = "0.1.0"
