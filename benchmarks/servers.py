"""The servers under test: start them alike, wait until they answer, check, stop them.

Each server runs in its own session so that stopping its process group also stops the workers
(and uvicorn's leftovers) it spawned; a benchmark must never leave servers behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import requests

from benchmarks import mlserver
from benchmarks.env import BIN, ROOT, clean_env
from benchmarks.world import CHALLENGER_MODES, REFERENCE_SERVER, World
from serving.gunicorn_command import GUNICORN_CONF
from tests.support.processes import poll_until
from tests.support.servers import wait_every_worker, worker_gauge

JSON = {"Content-Type": "application/json"}
WORKERS = 2


@dataclass
class Server:
    """A server process started in its own session (its whole group is stopped at the end)."""

    name: str
    process: subprocess.Popen
    url: str
    log: Path


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(name: str, command: list[str], env: dict[str, str], root: Path, port: int) -> Server:
    """Start a server in a new session, its output in ROOT/NAME.log."""
    log = root / f"{name}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Server(name, process, f"http://127.0.0.1:{port}", log)


def stop(server: Server) -> None:
    """SIGTERM the server's process group, SIGKILL it if it is still there after 20 s."""
    process = server.process
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # leftovers (e.g. uvicorn workers) too
    except ProcessLookupError:
        pass
    if process.poll() is None:
        process.wait(5)


def wait_ready(server: Server, probe: Callable[[str], bool], timeout: float = 120.0) -> None:
    """Poll until probe(url) is true; fail early, with its log, if the server exits."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{tail}")
        try:
            if probe(server.url):
                return
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.25)
    raise TimeoutError(f"{server.name} at {server.url} not ready in {timeout}s (last: {last})")


def wait_every_challenger(server: Server, version: str, timeout: float = 180.0) -> None:
    """Until every worker of SERVER scores challenger VERSION beside its champion."""

    def check() -> tuple[bool, object]:
        values = worker_gauge(server.url, "fraudflow_model_version", role="challenger")
        return len(values) == WORKERS and set(values.values()) == {float(version)}, values

    poll_until(check, f"challenger v{version} on all {WORKERS} workers", timeout, server.process)


def role_counts(server: Server) -> dict[str, float]:
    """From SERVER's /metrics: transactions answered by each role (`champion`, `challenger`),
    and `shadow`, those the other model scored off the answer, and challenger `errors`."""
    text = requests.get(f"{server.url}/metrics", timeout=30).text
    counts = {"champion": 0.0, "challenger": 0.0, "shadow": 0.0, "errors": 0.0}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("fraudflow_predictions_total{"):
            for role in ("champion", "challenger"):
                if f'model_role="{role}"' in name:
                    counts[role] += float(value)
        elif name.startswith("fraudflow_shadow_decisions_total{"):
            counts["shadow"] += float(value)
        elif name.startswith("fraudflow_challenger_errors_total"):
            counts["errors"] += float(value)
    # a canary the guard stopped (the challenger left its band) has gone back to shadow
    canary = requests.get(f"{server.url}/model", timeout=10).json()["challenger"].get("canary")
    if canary is not None:
        counts["canary_open"] = float(bool(canary.get("open")))
    return counts


API_SERVERS = ("api", REFERENCE_SERVER, "api_shadow", "api_canary", "api_redis")
ALL_SERVERS = ("hello", *API_SERVERS, "mlflow", "mlserver")


@contextmanager
def servers(
    world: World,
    mlserver_bin: Path | None,
    mlserver_workers: int = WORKERS,
    wanted: frozenset[str] | None = None,
) -> Iterator[dict[str, Server]]:
    """The servers named in WANTED (default: all), started together, ready, and always stopped
    (process groups).

    Same worker count and OMP_NUM_THREADS for all, so the comparison is of the code served."""
    wanted = frozenset(ALL_SERVERS) if wanted is None else wanted
    started: dict[str, Server] = {}
    try:
        if "hello" in wanted:
            port = free_port()
            started["hello"] = launch(
                "hello",
                [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF)]
                + ["--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS)]
                + ["benchmarks.hello_app:create_app()"],
                clean_env(
                    {
                        "FRAUDFLOW_CONFIG": str(world.config),
                        "PROMETHEUS_MULTIPROC_DIR": str(world.root / "prom-hello"),
                    }
                ),
                world.root,
                port,
            )
        apis = [name for name in API_SERVERS if name in wanted]
        for name in apis:
            port = free_port()
            started[name] = launch(
                name,
                [str(BIN / "fraudflow"), "serve", "--config", str(world.configs[name])]
                + ["--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS)],
                clean_env({}),
                world.root,
                port,
            )
        if "mlflow" in wanted:
            port = free_port()
            started["mlflow"] = launch(
                "mlflow",
                [str(BIN / "mlflow"), "models", "serve", "-m"]
                + [f"models:/{world.model_name}/Production", "--env-manager", "local"]
                + ["-p", str(port), "--workers", str(WORKERS), "--host", "127.0.0.1"],
                clean_env({"MLFLOW_TRACKING_URI": world.tracking_uri}),
                world.root,
                port,
            )
        if "mlserver" in wanted:
            if mlserver_bin is None:
                raise ValueError("MLServer is wanted but has no venv")
            port = free_port()
            folder = mlserver.model_repository(
                world.root, world.booster, (port, free_port(), free_port()), mlserver_workers
            )
            started["mlserver"] = launch(
                "mlserver",
                mlserver.command(mlserver_bin, folder),
                mlserver.environment(),
                world.root,
                port,
            )
        if "hello" in started:
            hello_body = json.dumps({"hello": "world"})
            wait_ready(
                started["hello"],
                lambda url: requests.post(
                    f"{url}/hello", data=hello_body, headers=JSON, timeout=2
                ).ok,
            )
        for name in apis:
            wait_ready(started[name], lambda url: requests.get(f"{url}/ready", timeout=2).ok)
            # one worker's /ready says nothing of the other: each loads its model at boot
            wait_every_worker(
                started[name].url,
                WORKERS,
                world.served_version(name),
                process=started[name].process,
            )
            if CHALLENGER_MODES.get(name, "off") != "off":
                wait_every_challenger(started[name], world.challenger_version)
        if "mlflow" in started:
            wait_ready(started["mlflow"], lambda url: requests.get(f"{url}/ping", timeout=2).ok)
        if "mlserver" in started:
            wait_ready(
                started["mlserver"],
                lambda url: requests.get(f"{url}/v2/health/ready", timeout=2).ok,
            )
        yield started
    finally:
        for server in started.values():
            stop(server)


def sanity_check(world: World, running: dict[str, Server]) -> float | None:
    """One request per running target before loading them; returns the probability both
    /invocations agree on (a throughput ratio between servers that answer differently would
    mean nothing), None when they are not both running."""
    probability = None
    if "api" in running:
        ours = requests.post(
            f"{running['api'].url}/invocations",
            data=world.invocation_body,
            headers=JSON,
            timeout=10,
        )
        if ours.status_code != 200:
            raise RuntimeError(f"our /invocations answered {ours.status_code}: {ours.text[:500]}")
        ours_p = float(ours.json()["predictions"][0])
        if "mlflow" in running:
            theirs = requests.post(
                f"{running['mlflow'].url}/invocations",
                data=world.invocation_body,
                headers=JSON,
                timeout=30,
            )
            if theirs.status_code != 200:
                raise RuntimeError(
                    f"mlflow /invocations answered {theirs.status_code}: {theirs.text[:500]}"
                )
            theirs_p = theirs.json()["predictions"][0]
            if isinstance(theirs_p, dict):  # mlflow may wrap a scalar in a column mapping
                theirs_p = next(iter(theirs_p.values()))
            if abs(ours_p - float(theirs_p)) > 1e-9:
                raise RuntimeError(
                    f"the two /invocations disagree: ours {ours_p}, mlflow {theirs_p}"
                )
            probability = ours_p
        if "mlserver" in running:
            seldon = requests.post(
                f"{running['mlserver'].url}{mlserver.infer_path()}",
                data=mlserver.v2_body(world.invocation_body),
                headers=JSON,
                timeout=30,
            )
            if seldon.status_code != 200:
                raise RuntimeError(f"MLServer answered {seldon.status_code}: {seldon.text[:500]}")
            seldon_p = mlserver.v2_probability(seldon.json())
            if abs(ours_p - seldon_p) > 1e-9:
                raise RuntimeError(f"MLServer disagrees: ours {ours_p}, MLServer {seldon_p}")
    transaction = {
        "tx_datetime": datetime.fromtimestamp(world.start_s - 30, timezone.utc)
        .replace(tzinfo=None)
        .isoformat(timespec="seconds"),
        "customer_id": "1",
        "terminal_id": "1",
        "tx_amount": 12.5,
    }
    for name in API_SERVERS:
        if name not in running:
            continue
        body = {**transaction, "transaction_id": f"load-sanity-{name}"}
        predict = requests.post(f"{running[name].url}/predict", json=body, timeout=10)
        if predict.status_code != 200:
            raise RuntimeError(
                f"{name} /predict answered {predict.status_code}: {predict.text[:500]}"
            )
        described = requests.get(f"{running[name].url}/model", timeout=10).json()
        challenger = described.get("challenger", {})
        mode = CHALLENGER_MODES.get(name, "off")
        scored = mode == "off" or (
            challenger.get("scored") and challenger.get("version") == world.challenger_version
        )
        if challenger.get("mode") != mode or not scored:
            raise RuntimeError(f"{name} should score the challenger in {mode}: {challenger}")
    return probability
