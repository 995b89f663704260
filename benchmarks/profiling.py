"""--profile: where a /predict's server CPU goes, by Python function (py-spy) and by library (perf).

Sampling runs during one extra /predict run after the measurements, so that the profilers'
overhead never touches the measured runs; the shares are then applied to that run's measured
CPU per request. (Not named `profile`, which would shadow the standard library's module when
benchmarks/ is on sys.path.)
"""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.cpu import children
from benchmarks.env import ROOT
from benchmarks.wrk import describe
from pipelines.features import features_from_history
from pipelines.log.writer import PredictionLogWriter
from pipelines.state.sqlite import SqliteOnlineState
from serving import routes
from serving.online_scorer import SingleRowContributions, SingleRowProbability
from serving.predictor import Predictor


def frame(function: Callable[..., Any]) -> str:
    """How py-spy names a frame of FUNCTION, up to its line number: "Class.method (file", the
    file relative to the repository. Derived from the function object, so a function that
    moves or is renamed moves its row with it (or fails here) instead of showing 0."""
    function = inspect.unwrap(function)
    name = function.__qualname__.rsplit(".<locals>.", 1)[-1]
    path = Path(function.__code__.co_filename).resolve().relative_to(ROOT)
    return f"{name} ({path.as_posix()}"


# Frames whose inclusive share of the API workers' samples is reported (substring of
# "function (file"), in the order of the request path; whatever is missing shows 0. Our own
# frames come from the functions themselves; the libraries' are named as py-spy shows them.
PROFILE_FRAMES = (
    ("Flask app (all of the request inside Flask)", "Flask.wsgi_app (flask/app.py"),
    ("/predict view", frame(routes.predict)),
    ("  body read + json.loads", frame(routes._json_body)),
    ("  pydantic validation", frame(routes._validate)),
    ("  Predictor.predict", frame(Predictor.predict)),
    ("    state.observe (SQLite insert + history reads)", frame(SqliteOnlineState.observe)),
    ("    features_from_history", frame(features_from_history)),
    ("    LightGBM predict, one row", frame(SingleRowProbability.__call__)),
    (
        "    LightGBM pred_contrib, one row (review, decline, explain)",
        frame(SingleRowContributions.__call__),
    ),
    ("    formatting the reasons", frame(Predictor.reasons)),
    ("  prediction log write", frame(PredictionLogWriter.write)),
    ("  jsonify response", "jsonify (flask/json"),
    ("Prometheus exporter hooks", "prometheus_flask_exporter/__init__.py"),
    ("gunicorn response writes (socket)", "Response.write (gunicorn/http/wsgi.py"),
    ("gunicorn request parsing", "Parser.__next__ (gunicorn/http/parser.py"),
)
LINE_NUMBER = re.compile(r":\d+\)$")
RATE_HZ = 200  # py-spy samples per second and worker
# perf's shared objects (substring) and how the table names them; others keep their file name.
LIBRARY_NAMES = (
    ("libpython", "Python interpreter (Flask, gunicorn, our code)"),
    ("kernel", "kernel (sockets, files, scheduling)"),
    ("lib_lightgbm", "LightGBM (TreeSHAP contributions)"),
    ("libsqlite3", "SQLite"),
    ("libc.so", "C library (malloc, memcpy, ...)"),
)


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


def parse_perf_report(text: str) -> list[tuple[str, float]]:
    """`perf report --sort dso --stdio` rows as (library label, share), in perf's order."""
    rows = []
    for line in text.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(\S.*?)\s*$", line)
        if match:
            name = match.group(2)
            label = next((text for key, text in LIBRARY_NAMES if key in name), name)
            rows.append((label, float(match.group(1)) / 100))
    return rows


def perf_libraries(perf: str, data: Path) -> list[tuple[str, float]]:
    """CPU samples of the workers by shared object (`perf report --sort dso`), largest first."""
    result = subprocess.run(
        [perf, "report", "-i", str(data), "--sort", "dso", "--stdio", "-g", "none"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return parse_perf_report(result.stdout)


def profile_predict(
    spy: str,
    master_pid: int,
    run_once: Callable[[int], dict[str, Any]],
    seconds: int,
    root: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """py-spy (and perf, when installed) on every worker of the API's gunicorn master during one
    more /predict run (run_once); returns the run and the shares."""
    workers = children(master_pid)
    outputs, spies = [], []
    for pid in workers:
        out = root / f"py-spy-{pid}.txt"
        outputs.append(out)
        spies.append(
            subprocess.Popen(
                [spy, "record", "-p", str(pid), "-d", str(seconds + 1), "-r", str(RATE_HZ)]
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
        f"By Python function (py-spy, {RATE_HZ} Hz, {shares['samples']} samples of threads not "
        "idle; native code is counted in the Python function that called it):",
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
