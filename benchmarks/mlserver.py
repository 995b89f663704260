"""Seldon MLServer with its LightGBM runtime: a second reference for our /invocations.

MLServer runs from its own virtualenv (its pins, benchmarks/mlserver-requirements.txt, clash
with ours), created on first use. It serves the very booster file the registry holds for the
served version, and gets the same one-row feature vector as a V2 inference request, so the two
servers answer the same probability (checked before any load).

Its best working configuration on this 2-core machine: `parallel_workers: 2` (one inference
process per core, like our 2 gunicorn workers) behind its one uvicorn front-end, metrics and
gRPC on their own ports. `parallel_workers: 0` (inference in the front-end's event loop) is the
other choice; `--mlserver-workers 0` selects it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.env import ROOT, clean_env

REQUIREMENTS = ROOT / "benchmarks" / "mlserver-requirements.txt"
DEFAULT_VENV = ROOT / ".venv-mlserver"
MODEL = "fraud"


def ensure_venv(venv: Path) -> Path:
    """The MLServer virtualenv at VENV, created from the pinned requirements when absent;
    returns its `mlserver` executable."""
    executable = venv / "bin" / "mlserver"
    stamp = venv / ".requirements"
    wanted = REQUIREMENTS.read_text()
    if executable.exists() and stamp.exists() and stamp.read_text() == wanted:
        return executable
    print(f"creating MLServer's own virtualenv in {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
        check=True,
    )
    stamp.write_text(wanted)
    return executable


def model_repository(
    root: Path, booster: Path, ports: tuple[int, int, int], parallel_workers: int
) -> Path:
    """An MLServer folder: settings.json (HTTP, gRPC and metrics ports, workers) and
    models/fraud serving BOOSTER."""
    http_port, grpc_port, metrics_port = ports
    folder = root / "mlserver"
    model = folder / "models" / MODEL
    model.mkdir(parents=True, exist_ok=True)
    (model / "booster.txt").write_bytes(booster.read_bytes())
    (model / "model-settings.json").write_text(
        json.dumps(
            {
                "name": MODEL,
                "implementation": "mlserver_lightgbm.LightGBMModel",
                "parameters": {"uri": "./booster.txt"},
            }
        )
    )
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                "parallel_workers": parallel_workers,
                "debug": False,
            }
        )
    )
    return folder


def command(executable: Path, folder: Path) -> list[str]:
    """`mlserver start FOLDER`."""
    return [str(executable), "start", str(folder)]


def environment() -> dict[str, str]:
    """The server's environment: the same clean one as the others (OMP_NUM_THREADS=1)."""
    return clean_env({})


def infer_path() -> str:
    """The V2 inference path of the served model."""
    return f"/v2/models/{MODEL}/infer"


def v2_body(invocation_body: str) -> str:
    """The V2 request for the row our /invocations body holds (same values, same order)."""
    row = json.loads(invocation_body)["dataframe_split"]["data"][0]
    return json.dumps(
        {"inputs": [{"name": "predict", "shape": [1, len(row)], "datatype": "FP64", "data": row}]}
    )


def v2_probability(answer: dict) -> float:
    """The probability in a V2 answer of the LightGBM runtime."""
    return float(answer["outputs"][0]["data"][0])
