"""HTTP load: the Flask floor, our API and `mlflow models serve`, side by side in one run.

    .venv/bin/python -m benchmarks.load [--duration 15] [--repeats 3] [--markdown OUT.md]

Builds a throw-away embedded MLflow store (small simulated world, one trained model promoted to
Production), warms the online state with the history, then starts on free loopback ports, each
with 2 workers and OMP_NUM_THREADS=1:

- a bare Flask "hello" app (benchmarks/hello_app.py) under serving/gunicorn.conf.py: the floor;
- our API, `fraudflow serve` (the same gunicorn settings);
- `mlflow models serve -m models:/fraud-detector/Production --env-manager local` (uvicorn).

wrk drives four targets: hello, our /predict (one raw transaction per request, every id new,
real customer/terminal pairs, time moving forward), our /invocations and mlflow's /invocations
(the same one-row `dataframe_split` body). After one warm-up run per target the targets are run
round-robin `--repeats` times, so that noise from the shared machine hits all of them alike;
the table gives the medians. A run with socket errors or non-2xx answers is not a measurement:
it is reported and left out of the medians. Needs `wrk` (apt-get install -y wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
GUNICORN_CONF = ROOT / "serving" / "gunicorn.conf.py"
RESULT_PREFIX = "WRK_RESULT "
JSON = {"Content-Type": "application/json"}
WORKERS = 2
TARGETS_INV_RATIO = 8.0  # our /invocations ÷ mlflow serve throughput
TARGETS_FLOOR_SHARE = 0.5  # our /predict ÷ hello throughput


@dataclass
class World:
    """The temporary store, the served model and what the load scripts send."""

    root: Path
    config: Path
    tracking_uri: str
    model_name: str
    version: str
    invocation_body: str
    sample: Path
    start_s: float
    step_s: float
    history_rows: int


@dataclass
class Server:
    """A server process started in its own session (its whole group is stopped at the end)."""

    name: str
    process: subprocess.Popen
    url: str
    log: Path


@dataclass
class Target:
    """One wrk target: which server, which path, which Lua script and its environment."""

    key: str
    label: str
    server: str
    path: str
    script: str
    env: Callable[[int], dict[str, str]]
    runs: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- the world


def build_world(root: Path) -> World:
    """Simulate, train, register and promote; warm the online state; write the payloads."""
    from pipelines.data import load_transactions
    from pipelines.registry import set_stage
    from pipelines.simulate import simulate_transactions, write_daily_parquet
    from pipelines.tracking import log_training_run
    from pipelines.train import train_model
    from tests.conftest import make_settings, write_config

    settings = make_settings(
        root / "work",
        serving={
            "state_path": str(root / "state.sqlite"),
            "prediction_log_dir": str(root / "predictions"),
            "metrics_dir": str(root / "prom-api"),
        },
    )
    data = root / "data"
    write_daily_parquet(simulate_transactions(settings.simulation), data)
    transactions = load_transactions(data, require_labels=True)
    result = train_model(transactions, settings)
    _, model_version = log_training_run(result, settings, {"data_path": str(data)})
    version = str(model_version.version)
    set_stage(settings, version, "Production", "HTTP load benchmark", actor="benchmarks.load")
    config = write_config(root / "serve.yaml", settings)
    warm = subprocess.run(
        [str(BIN / "fraudflow"), "warm", "--config", str(config), "--data", str(data)],
        env=clean_env({}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if warm.returncode != 0:
        raise RuntimeError(f"fraudflow warm failed ({warm.returncode}):\n{warm.stderr[-2000:]}")

    columns = list(result.scorer.features)
    test_rows = result.test.features.loc[:, columns]
    finite = test_rows[np.isfinite(test_rows.to_numpy(dtype=np.float64)).all(axis=1)]
    row = [float(v) for v in finite.iloc[-1].tolist()]
    body = json.dumps({"dataframe_split": {"columns": columns, "data": [row]}})
    (root / "invocation.json").write_text(body)

    times = transactions["tx_datetime"]
    last = times.max()
    step_s = (last - times.min()).total_seconds() / max(len(transactions) - 1, 1)
    recent = transactions[times > last - pd.Timedelta(days=30)]
    picked = recent.sample(n=min(5000, len(recent)), random_state=0)
    sample = root / "sample.lua"
    lines = [
        f'{{"{c}","{t}",{a:.2f}}},'
        for c, t, a in zip(
            picked["customer_id"].astype(str),
            picked["terminal_id"].astype(str),
            picked["tx_amount"].astype(float),
        )
    ]
    sample.write_text("return {\n" + "\n".join(lines) + "\n}\n")
    start = last.tz_localize(None) if last.tzinfo else last
    start_s = (start - pd.Timestamp("1970-01-01")).total_seconds() + 60
    return World(
        root=root,
        config=config,
        tracking_uri=settings.tracking_uri,
        model_name=settings.mlflow.model_name,
        version=version,
        invocation_body=body,
        sample=sample,
        start_s=start_s,
        step_s=step_s,
        history_rows=len(transactions),
    )


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without MLflow/fraudflow/Prometheus settings, the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FRAUDFLOW"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


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
    """Poll until probe(url) is true; fail early if the server exits."""
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


@contextmanager
def servers(world: World) -> Iterator[dict[str, Server]]:
    """The three servers, started together, ready, and always stopped (process groups)."""
    started: dict[str, Server] = {}
    try:
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
        port = free_port()
        started["api"] = launch(
            "api",
            [str(BIN / "fraudflow"), "serve", "--config", str(world.config)]
            + ["--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS)],
            clean_env({}),
            world.root,
            port,
        )
        port = free_port()
        started["mlflow"] = launch(
            "mlflow",
            [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{world.model_name}/Production"]
            + ["--env-manager", "local", "-p", str(port), "--workers", str(WORKERS)]
            + ["--host", "127.0.0.1"],
            clean_env({"MLFLOW_TRACKING_URI": world.tracking_uri}),
            world.root,
            port,
        )
        hello_body = json.dumps({"hello": "world"})
        wait_ready(
            started["hello"],
            lambda url: requests.post(f"{url}/hello", data=hello_body, headers=JSON, timeout=2).ok,
        )
        wait_ready(started["api"], lambda url: requests.get(f"{url}/ready", timeout=2).ok)
        wait_ready(started["mlflow"], lambda url: requests.get(f"{url}/ping", timeout=2).ok)
        yield started
    finally:
        for server in started.values():
            stop(server)


def sanity_check(world: World, running: dict[str, Server]) -> dict[str, Any]:
    """One request per target before loading them; both /invocations must agree."""
    ours = requests.post(
        f"{running['api'].url}/invocations", data=world.invocation_body, headers=JSON, timeout=10
    )
    theirs = requests.post(
        f"{running['mlflow'].url}/invocations",
        data=world.invocation_body,
        headers=JSON,
        timeout=30,
    )
    for name, response in (("our /invocations", ours), ("mlflow /invocations", theirs)):
        if response.status_code != 200:
            raise RuntimeError(f"{name} answered {response.status_code}: {response.text[:500]}")
    ours_p = ours.json()["predictions"][0]
    theirs_p = theirs.json()["predictions"][0]
    if isinstance(theirs_p, dict):  # mlflow may wrap a scalar in a column mapping
        theirs_p = next(iter(theirs_p.values()))
    if abs(float(ours_p) - float(theirs_p)) > 1e-9:
        raise RuntimeError(f"the two /invocations disagree: ours {ours_p}, mlflow {theirs_p}")
    transaction = {
        "transaction_id": "load-sanity-1",
        "tx_datetime": datetime.fromtimestamp(world.start_s - 30, timezone.utc)
        .replace(tzinfo=None)
        .isoformat(timespec="seconds"),
        "customer_id": "1",
        "terminal_id": "1",
        "tx_amount": 12.5,
    }
    predict = requests.post(f"{running['api'].url}/predict", json=transaction, timeout=10)
    if predict.status_code != 200:
        raise RuntimeError(f"/predict answered {predict.status_code}: {predict.text[:500]}")
    model = requests.get(f"{running['api'].url}/model", timeout=5).json()
    return {"probability": float(ours_p), "model_version": model["version"]}


# --------------------------------------------------------------------------- wrk


def wrk_version(wrk: str) -> str:
    """`wrk -v` first line (wrk prints it and exits non-zero)."""
    result = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
    first = (result.stdout or result.stderr).splitlines()[0]
    return first.split(" Copyright")[0].strip()


def lua_script(name: str, folder: Path) -> Path:
    """benchmarks/NAME followed by the shared report function, written into FOLDER."""
    path = folder / name
    path.write_text((HERE / name).read_text() + "\n" + (HERE / "load_report.lua").read_text())
    return path


def run_wrk(
    wrk: str, url: str, script: Path, env: dict[str, str], args: argparse.Namespace, seconds: int
) -> dict[str, Any]:
    """One wrk run; its result line parsed, with requests/s and a validity verdict."""
    command = [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s"]
    command += ["--latency", "--timeout", f"{args.timeout}s", "-s", str(script), url]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        env={**os.environ, **env},
        cwd=script.parent,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr}\n{result.stdout}")
    run = json.loads(lines[-1][len(RESULT_PREFIX) :])
    run["rps"] = run["requests"] / (run["duration_us"] / 1e6)
    errors = {k: run[k] for k in ("connect", "read", "write", "status", "timeout") if run[k]}
    run["errors"] = errors
    run["valid"] = not errors and run["requests"] > 0
    return run


def describe(run: dict[str, Any]) -> str:
    """requests/s, p50 and p99 of one run, and its errors if any."""
    text = f"{run['rps']:8.0f} req/s  p50 {run['p50_us'] / 1000:7.2f} ms  "
    text += f"p99 {run['p99_us'] / 1000:7.2f} ms"
    if "cpu_us" in run:
        text += f"  server CPU {run['cpu_us'] / 1000:5.2f} ms/request"
    if run["errors"]:
        text += f"  INVALID: {run['errors']} of {run['requests']} requests"
    return text


def targets(world: World, args: argparse.Namespace) -> tuple[list[Target], dict[str, float]]:
    """The four targets in round-robin order, and the /predict clock (moved after each run)."""
    cursor = {"start": world.start_s, "run": 0}
    hello_body = json.dumps(
        {
            "transaction_id": "hello-1",
            "tx_datetime": "2018-07-01T12:00:00",
            "customer_id": "123",
            "terminal_id": "4567",
            "tx_amount": 57.16,
        }
    )

    def static(body: str) -> Callable[[int], dict[str, str]]:
        return lambda _: {"WRK_BODY": body}

    def predict_env(_: int) -> dict[str, str]:
        cursor["run"] += 1
        return {
            "WRK_SAMPLE": str(world.sample),
            "WRK_RUN": f"load{cursor['run']}",
            "WRK_START_S": f"{cursor['start']:.0f}",
            "WRK_STEP_S": f"{world.step_s:.3f}",
            "WRK_THREADS": str(args.threads),
        }

    body = world.invocation_body
    items = [
        Target(
            "hello", "Flask hello (floor)", "hello", "/hello", "load_static.lua", static(hello_body)
        ),
        Target("predict", "fraudflow /predict", "api", "/predict", "load_predict.lua", predict_env),
        Target(
            "ours_inv",
            "fraudflow /invocations",
            "api",
            "/invocations",
            "load_static.lua",
            static(body),
        ),
        Target(
            "mlflow_inv",
            "mlflow serve /invocations",
            "mlflow",
            "/invocations",
            "load_static.lua",
            static(body),
        ),
    ]
    return items, cursor


def advance(
    cursor: dict[str, float], run: dict[str, Any], world: World, args: argparse.Namespace
) -> None:
    """Move the /predict clock past every transaction the last run could have sent.

    Thread k sends k, k + T, k + 2T, ...: however unevenly the threads ran, no sequence number
    exceeds T x (completed + in-flight requests)."""
    highest = (run["requests"] + args.connections) * args.threads
    cursor["start"] += highest * world.step_s + 3600


# --------------------------------------------------------------------------- report


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    """Median of KEY over the valid runs (None when none is valid)."""
    values = [r[key] for r in runs if r["valid"]]
    return statistics.median(values) if values else None


def machine_info(wrk: str) -> dict[str, str]:
    """CPU, cores, OS and the versions that matter here."""
    from importlib.metadata import version

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": ", ".join(
            f"{p} {version(p)}" for p in ("flask", "gunicorn", "mlflow", "uvicorn", "lightgbm")
        ),
        "wrk": wrk_version(wrk),
    }


def loadavg() -> str:
    """The 1/5/15-minute load averages."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None if either is missing."""
    return a / b if a is not None and b else None


def render(
    items: list[Target],
    args: argparse.Namespace,
    info: dict[str, str],
    notes: dict[str, str],
    command: str,
) -> str:
    """The Markdown section: setup, the table, the two ratios against their targets."""

    def ms(micros: float | None) -> str:
        return "—" if micros is None else f"{micros / 1000:.2f}"

    rows = [
        "| target | requests/s (median) | p50 ms | p99 ms | server CPU ms per request (median) "
        "| valid runs | requests/s per run |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for t in items:
        rps = median_of(t.runs, "rps")
        per_run = ", ".join(f"{r['rps']:.0f}" + ("" if r["valid"] else " ✗") for r in t.runs)
        rows.append(
            f"| {t.label} | {'—' if rps is None else f'{rps:,.0f}'} | "
            f"{ms(median_of(t.runs, 'p50_us'))} | {ms(median_of(t.runs, 'p99_us'))} | "
            f"{ms(median_of(t.runs, 'cpu_us'))} | "
            f"{sum(r['valid'] for r in t.runs)}/{len(t.runs)} | {per_run} |"
        )
    by = {t.key: t for t in items}
    inv = ratio(median_of(by["ours_inv"].runs, "rps"), median_of(by["mlflow_inv"].runs, "rps"))
    floor = ratio(median_of(by["predict"].runs, "rps"), median_of(by["hello"].runs, "rps"))
    p99_ours = median_of(by["ours_inv"].runs, "p99_us")
    p99_theirs = median_of(by["mlflow_inv"].runs, "p99_us")
    p99_ok = p99_ours is not None and p99_theirs is not None and p99_ours < p99_theirs

    def verdict(value: float | None, goal: float, extra: bool = True) -> str:
        if value is None:
            return "not measured (no valid run)"
        return "met" if value >= goal and extra else "**missed**"

    inv_text = "—" if inv is None else f"{inv:.1f}×"
    floor_text = "—" if floor is None else f"{floor:.0%}"
    cpu = ratio(median_of(by["predict"].runs, "cpu_us"), median_of(by["hello"].runs, "cpu_us"))
    cpu_text = "—" if cpu is None else f"{cpu:.1f}×"
    invalid = [
        f"- {t.label}, run {i + 1}: {r['errors']} of {r['requests']} requests"
        for t in items
        for i, r in enumerate(t.runs)
        if not r["valid"]
    ]
    lines = [
        "## HTTP load (issue 3)",
        "",
        f"Measured {notes['when']} on {info['cpu']} ({info['cores']} cores, shared with other "
        f"jobs), {info['os']}, Python {info['python']}, {info['versions']}, {info['wrk']}. "
        f"Load average before/after: {notes['load_before']} / {notes['load_after']}.",
        "",
        "```sh",
        command,
        "```",
        "",
        f"Every server has {WORKERS} workers and OMP_NUM_THREADS=1; hello and our API run under "
        "`serving/gunicorn.conf.py` (sync workers, 1 thread each), `mlflow models serve "
        "--env-manager local` under uvicorn. Each target: `wrk "
        f"-t{args.threads} -c{args.connections} -d{args.duration}s --latency --timeout "
        f"{args.timeout}s`, one "
        f"{args.warmup} s warm-up, then {args.repeats} runs round-robin over the four targets "
        "(medians below; ✗ marks a run with socket errors or non-2xx answers, left out). "
        "hello gets a transaction-shaped JSON body; "
        f"/predict sends one raw transaction per request, every `transaction_id` new, "
        f"customer/terminal pairs drawn from the last 30 days of the {notes['history']} "
        f"warmed transactions, `tx_datetime` moving forward; both /invocations get the same "
        f"one-row `dataframe_split` body (answers checked equal: p = {notes['probability']}).",
        "",
        *rows,
        "",
        f"- our /invocations ÷ mlflow serve throughput: **{inv_text}** (target ≥ "
        f"{TARGETS_INV_RATIO:.0f}×, with a lower p99: {ms(p99_ours)} vs {ms(p99_theirs)} ms) — "
        f"{verdict(inv, TARGETS_INV_RATIO, p99_ok)}",
        f"- our /predict ÷ hello floor throughput: **{floor_text}** (target ≥ "
        f"{TARGETS_FLOOR_SHARE:.0%}) — {verdict(floor, TARGETS_FLOOR_SHARE)}",
        f"- server CPU per request (all processes of the server, wrk excluded), /predict ÷ hello: "
        f"**{cpu_text}** — what throughput ratios measure on an idle machine, but unaffected "
        "by other jobs competing for the cores",
    ]
    if invalid:
        lines += ["", "Runs with errors (not measurements):", *invalid]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- profile

# Frames whose inclusive share of the API workers' samples is reported (substring of
# "function (file"), in the order of the request path; whatever is missing shows 0.
PROFILE_FRAMES = (
    ("Flask app (all of the request inside Flask)", "Flask.wsgi_app (flask/app.py"),
    ("/predict view", "predict (serving/routes.py"),
    ("  body read + json.loads", "_json_body (serving/routes.py"),
    ("  pydantic validation", "_validate (serving/routes.py"),
    ("  Predictor.predict", "Predictor.predict (serving/predictor.py"),
    ("    state.observe (SQLite insert + history reads)", "SqliteOnlineState.observe (serving"),
    ("    features_from_history", "features_from_history (pipelines/features.py"),
    ("    LightGBM pred_contrib, one row", "SingleRowContributions.__call__ (pipelines/model.py"),
    ("    formatting the reasons", "Predictor.reasons (serving/predictor.py"),
    ("  prediction log write", "PredictionLog.write (serving/prediction_log.py"),
    ("  jsonify response", "jsonify (flask/json"),
    ("Prometheus exporter hooks", "prometheus_flask_exporter/__init__.py"),
    ("gunicorn response writes (socket)", "Response.write (gunicorn/http/wsgi.py"),
    ("gunicorn request parsing", "Parser.__next__ (gunicorn/http/parser.py"),
)
LINE_NUMBER = re.compile(r":\d+\)$")


def children(pid: int) -> list[int]:
    """Direct child processes of PID (gunicorn workers of a master)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of PID and all its descendants (every thread of each)."""
    total, pending, tick = 0.0, [pid], os.sysconf("SC_CLK_TCK")
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
        pending += children(current)
    return total


def aggregate_profile(files: list[Path]) -> dict[str, Any]:
    """Inclusive shares of PROFILE_FRAMES and the top self-time frames from py-spy raw files."""
    stacks: dict[str, int] = {}
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            if line.strip():
                stack, count = line.rsplit(" ", 1)
                stacks[stack] = stacks.get(stack, 0) + int(count)
    total = sum(stacks.values())
    inclusive = {label: 0 for label, _ in PROFILE_FRAMES}
    own: dict[str, int] = {}
    for stack, count in stacks.items():
        frames = [LINE_NUMBER.sub(")", f) for f in stack.split(";")]
        for label, needle in PROFILE_FRAMES:
            if any(needle in f for f in frames):
                inclusive[label] += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    return {
        "samples": total,
        "frames": [(k, v / max(total, 1)) for k, v in inclusive.items()],
        "self": [
            (k, v / max(total, 1)) for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:12]
        ],
    }


def profile_predict(
    spy: str, api: Server, run_once: Callable[[int], dict[str, Any]], seconds: int, root: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """py-spy (and perf, when installed) on every API worker during one more /predict run;
    returns the run and the shares."""
    rate = 200
    workers = children(api.process.pid)
    outputs, spies = [], []
    for pid in workers:
        out = root / f"py-spy-{pid}.txt"
        outputs.append(out)
        spies.append(
            subprocess.Popen(
                [spy, "record", "-p", str(pid), "-d", str(seconds + 1), "-r", str(rate)]
                + ["-f", "raw", "-o", str(out), "--nonblocking"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    perf, perf_data = shutil.which("perf"), root / "perf.data"
    if perf:
        spies.append(
            subprocess.Popen(
                [perf, "record", "-F", "499", "-o", str(perf_data)]
                + ["-p", ",".join(map(str, workers)), "--", "sleep", str(seconds + 1)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    time.sleep(0.5)
    run = run_once(seconds)
    for process in spies:
        try:
            process.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            process.kill()
    shares = aggregate_profile(outputs)
    shares["libraries"] = perf_libraries(perf, perf_data) if perf else []
    return run, shares


LIBRARY_NAMES = (
    ("libpython", "Python interpreter (Flask, gunicorn, our code)"),
    ("kernel", "kernel (sockets, files, scheduling)"),
    ("lib_lightgbm", "LightGBM (TreeSHAP contributions)"),
    ("libsqlite3", "SQLite"),
    ("libc.so", "C library (malloc, memcpy, ...)"),
)


def perf_libraries(perf: str, data: Path) -> list[tuple[str, float]]:
    """CPU samples of the workers by shared object (`perf report --sort dso`), largest first."""
    result = subprocess.run(
        [perf, "report", "-i", str(data), "--sort", "dso", "--stdio", "-g", "none"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    rows = []
    for line in result.stdout.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(\S.*?)\s*$", line)
        if match:
            name = match.group(2)
            label = next((text for key, text in LIBRARY_NAMES if key in name), name)
            rows.append((label, float(match.group(1)) / 100))
    return rows


def render_profile(run: dict[str, Any], shares: dict[str, Any]) -> str:
    """The profile as Markdown: CPU by library, inclusive shares, the hottest frames."""
    cpu_ms = run.get("cpu_us", 0.0) / 1000
    lines = [
        "",
        f"Profile of /predict under the same load (both workers, one extra run: "
        f"{describe(run).strip()}). The CPU column spreads the run's measured server CPU per "
        "request by each share.",
    ]
    if shares.get("libraries"):
        lines += [
            "",
            "By library (perf, CPU samples of the workers):",
            "",
            "| library | share of CPU | ≈ CPU ms per request |",
            "|---|---:|---:|",
        ]
        for label, share in shares["libraries"]:
            if share >= 0.005:
                lines.append(f"| {label} | {share:.1%} | {share * cpu_ms:.3f} |")
    lines += [
        "",
        f"By Python function (py-spy, 200 Hz, {shares['samples']} samples of threads not idle; "
        "native code is counted in the Python function that called it):",
        "",
        "| where (inclusive) | share | ≈ CPU ms per request |",
        "|---|---:|---:|",
    ]
    for label, share in shares["frames"]:
        name = label.replace("  ", "&nbsp;&nbsp;")
        lines.append(f"| {name} | {share:.1%} | {share * cpu_ms:.3f} |")
    lines += ["", "| hottest frames (self) | share | ≈ CPU ms per request |", "|---|---:|---:|"]
    for frame, share in shares["self"]:
        lines.append(f"| `{frame}` | {share:.1%} | {share * cpu_ms:.3f} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of warm-up per target")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per target")
    parser.add_argument("--threads", type=int, default=2, help="wrk -t")
    parser.add_argument("--connections", type=int, default=16, help="wrk -c")
    parser.add_argument("--timeout", type=int, default=10, help="wrk --timeout, seconds")
    parser.add_argument("--markdown", help="also write the Markdown section to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the measurements, one more /predict run with py-spy (and perf, if installed) "
        "on the API workers",
    )
    return parser.parse_args(argv)


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM/SIGHUP: unwind so that every server is stopped."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Build the world, start the servers, load them, report, stop everything."""
    args = parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit(
            "benchmarks.load needs wrk, the HTTP load generator, on PATH; install it with "
            "`apt-get update && apt-get install -y wrk` (or build it from "
            "https://github.com/wg/wrk) and run again"
        )
    spy = shutil.which("py-spy") or (str(BIN / "py-spy") if (BIN / "py-spy").exists() else None)
    if args.profile and spy is None:
        sys.exit("--profile needs py-spy: .venv/bin/pip install py-spy")
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    command = shlex.join([".venv/bin/python", "-m", "benchmarks.load", *(argv or sys.argv[1:])])
    root = Path(tempfile.mkdtemp(prefix="fraudflow-load-"))
    began = time.monotonic()
    try:
        print(f"building the world in {root} ...", flush=True)
        world = build_world(root)
        print(
            f"  {world.history_rows:,} transactions, model v{world.version} in Production "
            f"({time.monotonic() - began:.0f} s)",
            flush=True,
        )
        scripts = root / "lua"
        scripts.mkdir()
        for name in ("load_static.lua", "load_predict.lua"):
            lua_script(name, scripts)
        with servers(world) as running:
            print(f"servers ready ({time.monotonic() - began:.0f} s)", flush=True)
            checked = sanity_check(world, running)
            info = machine_info(wrk)
            load_before = loadavg()
            items, cursor = targets(world, args)

            def one(target: Target, seconds: int) -> dict[str, Any]:
                url = running[target.server].url + target.path
                server_pid = running[target.server].process.pid
                cpu_before = tree_cpu_seconds(server_pid)
                run = run_wrk(wrk, url, scripts / target.script, target.env(seconds), args, seconds)
                cpu = tree_cpu_seconds(server_pid) - cpu_before
                run["cpu_us"] = cpu * 1e6 / max(run["requests"], 1)
                if target.key == "predict":
                    advance(cursor, run, world, args)
                return run

            for target in items:
                run = one(target, args.warmup)
                print(f"warm-up  {target.label:28s} {describe(run)}", flush=True)
            for repeat in range(args.repeats):
                for target in items:
                    run = one(target, args.duration)
                    target.runs.append(run)
                    print(f"run {repeat + 1}/{args.repeats} {target.label:28s} {describe(run)}")
                    sys.stdout.flush()
            profile = ""
            if args.profile:
                by_key = {t.key: t for t in items}
                run, shares = profile_predict(
                    spy,
                    running["api"],
                    lambda seconds: one(by_key["predict"], seconds),
                    args.duration,
                    root,
                )
                profile = render_profile(run, shares)
            notes = {
                "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "load_before": load_before,
                "load_after": loadavg(),
                "history": f"{world.history_rows:,}",
                "probability": f"{checked['probability']:.6f}",
            }
        text = render(items, args, info, notes, command) + profile
        print()
        print(text)
        if args.markdown:
            Path(args.markdown).write_text(text)
            print(f"written to {args.markdown}")
        print(f"total {time.monotonic() - began:.0f} s")
        return 0
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
