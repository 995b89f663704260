"""Real servers for integration tests: our API under gunicorn (ready when every worker serves
the model asked for), and a plain `mlflow server`."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.support.processes import (
    BIN,
    background,
    clean_env,
    free_port,
    poll_until,
    stop,
    wait_for,
)


def worker_gauge(
    url: str, name: str, headers: dict[str, str] | None = None, role: str = "champion"
) -> dict[str, float]:
    """One scrape of /metrics (`headers`: the metrics token, if the API wants one): gauge NAME
    of every live gunicorn worker, by pid (a gauge with a `model_role` label: that `role`'s).

    In multiprocess mode any worker answers for all of them: each worker's `liveall` gauge is
    one sample labelled with its pid (a worker that exited is marked dead and left out)."""
    response = requests.get(f"{url}/metrics", timeout=30, headers=headers)
    response.raise_for_status()
    text = response.text
    values = {}
    for line in text.splitlines():
        if line.startswith(f"{name}{{"):
            labels, value = line.rsplit(" ", 1)
            if "model_role=" in labels and f'model_role="{role}"' not in labels:
                continue
            values[labels[len(name) :]] = float(value)
    return values


def wait_every_worker_gauge(
    url: str,
    name: str,
    workers: int,
    value: float,
    timeout: float = 180.0,
    process=None,
    headers: dict[str, str] | None = None,
    role: str = "champion",
) -> None:
    """Until exactly `workers` live workers export gauge NAME (of `role`, for a gauge with a
    `model_role` label), each equal to `value`: an answer from one worker says nothing of the
    others (each polls the registry on its own)."""

    def check() -> tuple[bool, object]:
        values = worker_gauge(url, name, headers, role)
        return len(values) == workers and set(values.values()) == {value}, values

    poll_until(check, f"{name} = {value} on all {workers} workers", timeout, process)


def wait_every_worker(
    url: str,
    workers: int,
    version: str | None,
    timeout: float = 180.0,
    process=None,
    headers: dict[str, str] | None = None,
) -> None:
    """Until every one of `workers` gunicorn workers has booted and serves model `version`
    (None: has checked the registry and serves no model). A worker builds its app, and so
    loads its model, before it accepts a request; a promotion reaches each worker at its own
    next poll."""
    if version is None:
        for name, value in (("fraudflow_registry_up", 1.0), ("fraudflow_model_version", 0.0)):
            wait_every_worker_gauge(url, name, workers, value, timeout, process, headers)
    else:
        wait_every_worker_gauge(
            url, "fraudflow_model_version", workers, float(version), timeout, process, headers
        )


@contextmanager
def gunicorn_api(
    config: Path,
    log: Path,
    *,
    version: str | None,
    workers: int = 2,
    env: dict[str, str] | None = None,
    metrics_headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
) -> Iterator[str]:
    """`fraudflow serve` on a free port; yields the base URL once every worker has booted and
    serves model `version` (None: no model, the registry checked): see wait_every_worker
    (`metrics_headers`: what /metrics wants, if the config sets serving.metrics_token; `host`:
    the address bound, 0.0.0.0 for every interface; the URL is always on loopback)."""
    port = free_port()
    command = [
        str(BIN / "fraudflow"),
        "serve",
        "--config",
        str(config),
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
    ]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, env=clean_env(env), stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", process=process)
        wait_every_worker(url, workers, version, process=process, headers=metrics_headers)
        yield url
    finally:
        stop(process)


@contextmanager
def mlflow_server(
    root: Path, port: int | None = None, grace: float = 20.0
) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `mlflow server` (SQLite backend, served artifacts) on loopback; stopped with
    SIGTERM, then SIGKILL after `grace` seconds (it waits for its clients' idle keep-alive
    connections, MLflow's pooled session in the test process among them)."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    command = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--serve-artifacts",
        "--workers",
        "1",
    ]
    url = f"http://127.0.0.1:{port}"
    with background(command, root / "mlflow-server.log", grace=grace) as process:
        wait_for(f"{url}/health", process=process, timeout=120)
        yield url, process
