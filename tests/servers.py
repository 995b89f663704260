"""Start and stop real servers for integration tests: gunicorn (our API) and `mlflow server`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def poll_until(
    check: Callable[[], tuple[bool, object]], what: str, timeout: float, process=None
) -> object:
    """Call `check` (which returns whether it is done, and what it saw) every 0.25 s until it is
    done; fail when `process` exits or `timeout` passes, with the last thing seen."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {what} ({last})")
        try:
            done, last = check()
            if done:
                return last
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.25)
    raise TimeoutError(f"{what} not reached in {timeout}s (last: {last})")


def wait_for(url: str, status: int = 200, timeout: float = 90.0, process=None) -> requests.Response:
    def check() -> tuple[bool, object]:
        response = requests.get(url, timeout=2)
        return response.status_code == status, response

    return poll_until(check, f"{url} answering {status}", timeout, process)


def worker_gauge(url: str, name: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    """One scrape of /metrics (`headers`: the metrics token, if the API wants one): gauge NAME
    of every live gunicorn worker, by pid.

    In multiprocess mode any worker answers for all of them: each worker's `liveall` gauge is
    one sample labelled with its pid (a worker that exited is marked dead and left out)."""
    response = requests.get(f"{url}/metrics", timeout=30, headers=headers)
    response.raise_for_status()
    text = response.text
    values = {}
    for line in text.splitlines():
        if line.startswith(f"{name}{{"):
            labels, value = line.rsplit(" ", 1)
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
) -> None:
    """Until exactly `workers` live workers export gauge NAME, each equal to `value`: an answer
    from one worker says nothing of the others (each polls the registry on its own)."""

    def check() -> tuple[bool, object]:
        values = worker_gauge(url, name, headers)
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


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without MLflow/fraudflow settings that would leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FRAUDFLOW"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def stop(process: subprocess.Popen, timeout: float = 20.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


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
def mlflow_server(root: Path, port: int | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `mlflow server` (SQLite backend, served artifacts) on loopback."""
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
    with background(command, root / "mlflow-server.log") as process:
        wait_for(f"{url}/health", process=process, timeout=120)
        yield url, process


def kill_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """Stop a server and every process it started (mlflow server runs uvicorn/gunicorn):
    SIGTERM to its group, SIGKILL after `grace` seconds (a uvicorn server otherwise waits for
    every keep-alive connection a client, such as MLflow's pooled session, still holds)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


@contextmanager
def background(
    command: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    grace: float = 20.0,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen]:
    """A server in its own process group, its output in `log`, stopped with its children."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            env=env if env is not None else clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
        )
    try:
        yield process
    finally:
        kill_group(process, grace)
