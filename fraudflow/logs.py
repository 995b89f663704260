"""The one logging set-up of every fraudflow command."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY = ("alembic", "mlflow.store", "urllib3")


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with --verbose) to stderr; the libraries' chatter at WARNING; no download
    progress bars from MLflow between the lines of a command's output."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def logging_to(path: Path) -> Iterator[None]:
    """Send every log record and warning to `path` instead of the console while the block runs
    (the demo keeps its own output readable and the monitor's log beside it)."""
    root = logging.getLogger()
    saved = root.handlers[:]
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.handlers = [handler]
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.handlers = saved
        handler.close()
