"""Where the benchmark runs from, and the environment its child processes get.

Kept apart so that building the world and starting the servers share one definition: every
process under test must see the same venv and none of the caller's MLflow/fraudflow settings.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without MLflow/fraudflow/Prometheus settings, the venv first on PATH.

    OMP_NUM_THREADS=1 so that LightGBM in a worker does not compete with the other worker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FRAUDFLOW"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env
