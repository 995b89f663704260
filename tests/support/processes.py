"""Processes for the tests: free ports, readiness polls, a clean environment, servers in
the background stopped with their children, and the system tools they need."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

BIN = Path(sys.executable).parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")


# Servers listen on ports below the kernel's ephemeral range (32768-60999 by default), where
# no client connection and no other program's bind(0) takes them between our check and the
# server's own bind; each pytest-xdist worker draws from a slice of its own.
PORTS = range(20000, 32000)
PORT_SLICE = 1000


def _port_slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    start = PORTS.start + (index * PORT_SLICE) % len(PORTS)
    return range(start, start + PORT_SLICE)


def free_port() -> int:
    """A loopback port nobody listens on, from this worker's slice (tried in random order)."""
    candidates = list(_port_slice())
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_port_slice()}")


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


def system_tool(*names: str) -> str:
    """A system binary the stack needs; missing means the machine was not set up."""
    for name in names:
        found = shutil.which(name) or (str(PG_BIN / name) if (PG_BIN / name).exists() else None)
        if found:
            return found
    pytest.fail(f"{' or '.join(names)} not found: run scripts/install-system-deps.sh")
