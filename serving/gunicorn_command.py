"""How the API is run: gunicorn with this folder's `gunicorn.conf.py` on the app factory."""

from __future__ import annotations

import sys
from pathlib import Path

GUNICORN_CONF = Path(__file__).resolve().parent / "gunicorn.conf.py"
APP = "serving.app:create_app()"


def gunicorn_command(bind: str | None = None, workers: int | None = None) -> list[str]:
    """The command line that serves the API (settings from $FRAUDFLOW_CONFIG and the
    environment; `bind` and `workers` override them)."""
    command = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF)]
    if bind:
        command += ["--bind", bind]
    if workers:
        command += ["--workers", str(workers)]
    return [*command, APP]
