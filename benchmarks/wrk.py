"""Running wrk and reading its result.

wrk's own text report rounds and changes units, so every script ends with load_report.lua's
`done`, which prints one JSON line (RESULT_PREFIX) with exact counts, percentiles and errors.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULT_PREFIX = "WRK_RESULT "
ERROR_KINDS = ("connect", "read", "write", "status", "timeout")


def wrk_version(wrk: str) -> str:
    """`wrk -v` first line (wrk prints it and exits non-zero), for the report's setup line."""
    result = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
    first = (result.stdout or result.stderr).splitlines()[0]
    return first.split(" Copyright")[0].strip()


def lua_script(name: str, folder: Path) -> Path:
    """benchmarks/NAME followed by the shared report function, written into FOLDER."""
    path = folder / name
    path.write_text((HERE / name).read_text() + "\n" + (HERE / "load_report.lua").read_text())
    return path


def parse_result(stdout: str) -> dict[str, Any] | None:
    """The last result line of wrk's output with requests/s, the errors and a validity verdict
    (a run with any socket error or non-2xx answer is not a measurement); None if there is none."""
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        return None
    run = json.loads(lines[-1][len(RESULT_PREFIX) :])
    run["rps"] = run["requests"] / (run["duration_us"] / 1e6)
    errors = {k: run[k] for k in ERROR_KINDS if run[k]}
    run["errors"] = errors
    run["valid"] = not errors and run["requests"] > 0
    return run


def run_wrk(
    wrk: str,
    url: str,
    script: Path,
    env: dict[str, str],
    seconds: int,
    *,
    threads: int,
    connections: int,
    timeout: int,
) -> dict[str, Any]:
    """One wrk run of SECONDS against URL with SCRIPT (its settings in ENV), parsed."""
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s"]
    command += ["--latency", "--timeout", f"{timeout}s", "-s", str(script), url]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        env={**os.environ, **env},
        cwd=script.parent,
    )
    run = parse_result(result.stdout) if result.returncode == 0 else None
    if run is None:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr}\n{result.stdout}")
    return run


def describe(run: dict[str, Any]) -> str:
    """requests/s, p50 and p99 of one run, its server CPU if measured, and its errors if any."""
    text = f"{run['rps']:8.0f} req/s  p50 {run['p50_us'] / 1000:7.2f} ms  "
    text += f"p99 {run['p99_us'] / 1000:7.2f} ms"
    if "cpu_us" in run:
        text += f"  server CPU {run['cpu_us'] / 1000:5.2f} ms/request"
    if run["errors"]:
        text += f"  INVALID: {run['errors']} of {run['requests']} requests"
    if run.get("stalled"):
        text += f"  INVALID: generator lag p99 {run['lag_p99_us'] / 1000:.1f} ms"
    return text
