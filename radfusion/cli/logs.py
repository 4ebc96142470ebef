"""Where the command's log records go: stderr, radfusion's own from the chosen level
(--log-level, -q), every other library's from warning (everything at debug)."""

from __future__ import annotations

import logging
import sys

LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Loggers of radfusion itself (the training and serving packages install as radfusion.*).
OWN_LOGGERS = ("radfusion", "__main__")
# Libraries that log at INFO (or set their own level on import): quiet below warnings
# unless --log-level debug. The handler's filter catches those not named here.
NOISY_LIBRARIES = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "bentoml",
    "ray",
    "pynetdicom",
    "highdicom",
    "numexpr",
    "urllib3",
    "matplotlib",
    "PIL",
    "fsspec",
    "filelock",
    "httpx",
    "httpcore",
    "asyncio",
    "torch",
    "monai",
    "mlflow",
    "tensorboard",
)


# What libraries say about themselves that a user cannot act on, kept below errors
# unless --log-level debug: the ONNX exporter's note that torchvision's ops are skipped
# (radfusion uses none), and deprecation notices raised inside torch's exporter.
LIBRARY_NOTICES = ("torch.onnx",)
LIBRARY_WARNINGS = (
    (FutureWarning, r"copyreg"),  # torch's pytree LeafSpec deprecation, seen through pickling
    (UserWarning, r"torch\.onnx\."),
)


class _LibraryFilter(logging.Filter):
    """radfusion's records at the level its loggers let through; every other
    library's (including those that set their own logger's level) from ``level`` up."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or record.name.partition(".")[0] in OWN_LOGGERS


_handler: logging.Handler | None = None
_library_level = logging.WARNING


def configure_logging(level: int = logging.INFO) -> None:
    """Log records on stderr: radfusion's from ``level``, other libraries' from
    warning (everything at debug). Leaves logging alone where the process configured
    it already (the command run inside another program or a test)."""
    global _handler, _library_level
    root = logging.getLogger()
    if _handler is None or _handler not in root.handlers:
        if root.handlers:
            return
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root.addHandler(_handler)
    _library_level = logging.DEBUG if level <= logging.DEBUG else max(level, logging.WARNING)
    _handler.filters = [_LibraryFilter(_library_level)]
    root.setLevel(_library_level)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
    quiet_libraries()


def quiet_libraries() -> None:
    """The libraries' loggers at the chosen level; again after importing one that sets
    its own on import and logs through its own handler (Ray)."""
    if _handler is None:
        return
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(_library_level)
    if _library_level > logging.DEBUG:
        import warnings

        for name in LIBRARY_NOTICES:
            logging.getLogger(name).setLevel(logging.ERROR)
        for category, module in LIBRARY_WARNINGS:
            warnings.filterwarnings("ignore", category=category, module=module)
