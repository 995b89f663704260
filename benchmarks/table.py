"""The Markdown section of the load benchmark: setup, the medians table, the ratios vs targets.

The machine is shared and noisy, so the table gives medians of the valid runs only and the
ratios between servers measured side by side, with the setup needed to compare runs later.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from pathlib import Path
from typing import Any

from benchmarks.servers import WORKERS
from benchmarks.targets import Target
from benchmarks.wrk import wrk_version

TARGETS_INV_RATIO = 10.0  # our /invocations ÷ mlflow serve throughput
TARGETS_MLSERVER_RATIO = 3.0  # our /invocations ÷ MLServer throughput
TARGETS_FLOOR_SHARE = 0.5  # our /predict ÷ hello throughput


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
    """The 1/5/15-minute load averages: how busy the shared machine was around the run."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def publish(text: str, markdown: str | None) -> None:
    """Print a benchmark's results section, and write it to `markdown` when one is named."""
    print(text)
    if markdown:
        Path(markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown).write_text(text + "\n")


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None if either is missing."""
    return a / b if a is not None and b else None


def render(
    items: list[Target],
    args: argparse.Namespace,
    info: dict[str, str],
    notes: dict[str, Any],
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
    seldon = ratio(median_of(by["ours_inv"].runs, "rps"), median_of(by["mlserver_inv"].runs, "rps"))
    seldon_cpu = ratio(
        median_of(by["mlserver_inv"].runs, "cpu_us"), median_of(by["ours_inv"].runs, "cpu_us")
    )
    p99_ours = median_of(by["ours_inv"].runs, "p99_us")
    p99_theirs = median_of(by["mlflow_inv"].runs, "p99_us")
    p99_ok = p99_ours is not None and p99_theirs is not None and p99_ours < p99_theirs

    def verdict(value: float | None, goal: float, extra: bool = True) -> str:
        if value is None:
            return "not measured (no valid run)"
        return "met" if value >= goal and extra else "**missed**"

    inv_text = "—" if inv is None else f"{inv:.1f}×"
    seldon_text = "—" if seldon is None else f"{seldon:.1f}×"
    seldon_cpu_text = "—" if seldon_cpu is None else f"{seldon_cpu:.1f}×"
    floor_text = "—" if floor is None else f"{floor:.0%}"
    cpu = ratio(median_of(by["predict"].runs, "cpu_us"), median_of(by["hello"].runs, "cpu_us"))
    cpu_text = "—" if cpu is None else f"{cpu:.1f}×"
    floor_redis = ratio(
        median_of(by["predict_redis"].runs, "rps"), median_of(by["hello"].runs, "rps")
    )
    floor_redis_text = "—" if floor_redis is None else f"{floor_redis:.0%}"
    cpu_redis = ratio(
        median_of(by["predict_redis"].runs, "cpu_us"), median_of(by["hello"].runs, "cpu_us")
    )
    cpu_redis_text = "—" if cpu_redis is None else f"{cpu_redis:.1f}×"
    warm_rows = [
        "| online state | warm: rows | seconds | rows/s | state after it, MB | MB per million "
        "transactions |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for backend, figures in notes["warm"].items():
        per_million = figures["bytes"] / notes["rows"] * 1e6 / 1e6
        warm_rows.append(
            f"| {backend} | {notes['rows']:,} | {figures['seconds']:.1f} | "
            f"{figures['rows_per_s']:,.0f} | {figures['bytes'] / 1e6:.1f} | {per_million:.0f} |"
        )
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
        "--env-manager local` under uvicorn, MLServer with `parallel_workers: "
        f"{args.mlserver_workers}` (its LightGBM runtime, the same booster file). Each target: "
        f"`wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency --timeout "
        f"{args.timeout}s`, one "
        f"{args.warmup} s warm-up, then {args.repeats} runs round-robin over the five targets "
        "(medians below; ✗ marks a run with socket errors or non-2xx answers, left out). "
        "hello gets a transaction-shaped JSON body; "
        f"/predict sends one raw transaction per request, every `transaction_id` new, "
        f"customer/terminal pairs drawn from the last 30 days of the {notes['history']} "
        f"warmed transactions, `tx_datetime` moving forward; both /invocations get the same "
        f"one-row `dataframe_split` body and MLServer the same row as a V2 request (answers "
        f"checked equal: p = {notes['probability']}).",
        "",
        *rows,
        "",
        f"- our /invocations ÷ mlflow serve throughput: **{inv_text}** (target ≥ "
        f"{TARGETS_INV_RATIO:.0f}×, with a lower p99: {ms(p99_ours)} vs {ms(p99_theirs)} ms) — "
        f"{verdict(inv, TARGETS_INV_RATIO, p99_ok)}",
        f"- our /invocations ÷ MLServer throughput: **{seldon_text}** (target ≥ "
        f"{TARGETS_MLSERVER_RATIO:.0f}×; MLServer's CPU per request is {seldon_cpu_text} ours) — "
        f"{verdict(seldon, TARGETS_MLSERVER_RATIO)}",
        f"- our /predict ÷ hello floor throughput: **{floor_text}** on SQLite, "
        f"**{floor_redis_text}** on Redis (target ≥ {TARGETS_FLOOR_SHARE:.0%}) — "
        f"{verdict(floor, TARGETS_FLOOR_SHARE)} / {verdict(floor_redis, TARGETS_FLOOR_SHARE)}",
        f"- server CPU per request (all processes of the server, wrk excluded), /predict ÷ hello: "
        f"**{cpu_text}** on SQLite, **{cpu_redis_text}** on Redis (the Redis server's CPU "
        "included) — what throughput ratios measure on an idle machine, but unaffected "
        "by other jobs competing for the cores",
        "",
        "`fraudflow warm` of the same history into each backend (its own timing, process "
        "start-up apart), and the state's size after it (SQLite: the database files; Redis: "
        "`used_memory_dataset`):",
        "",
        *warm_rows,
    ]
    if invalid:
        lines += ["", "Runs with errors (not measurements):", *invalid]
    return "\n".join(lines) + "\n"
