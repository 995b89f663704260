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
TARGETS_SHADOW_CPU = 1.25  # /predict server CPU per request, shadow on ÷ off (at most)
# /predict server CPU per request, configured ÷ reference model configuration (issue 22, at most)
TARGETS_REFERENCE_CPU = 1.15


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


def why_invalid(run: dict[str, Any]) -> str:
    """Why a run is not a measurement: its errors (a count from wrk, counts by kind from the
    paced generator) and, for a paced run, a generator the machine stalled."""
    errors = run["errors"]
    count = sum(errors.values()) if isinstance(errors, dict) else errors
    reasons = []
    if count:
        kinds = (
            f" ({', '.join(f'{k} {v}' for k, v in errors.items())})"
            if isinstance(errors, dict)
            else ""
        )
        reasons.append(f"{count} errors of {run['requests']} requests{kinds}")
    if run.get("stalled"):
        reasons.append(f"generator stalled, lag p99 {run['lag_p99_us'] / 1000:.1f} ms")
    return "; ".join(reasons) or f"no answer among {run['requests']} requests"


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

    def med(key: str, field: str) -> float | None:
        return median_of(by[key].runs, field) if key in by else None

    inv = ratio(med("ours_inv", "rps"), med("mlflow_inv", "rps"))
    floor = ratio(med("predict", "rps"), med("hello", "rps"))
    seldon = ratio(med("ours_inv", "rps"), med("mlserver_inv", "rps"))
    seldon_cpu = ratio(med("mlserver_inv", "cpu_us"), med("ours_inv", "cpu_us"))
    p99_ours = med("ours_inv", "p99_us")
    p99_theirs = med("mlflow_inv", "p99_us")
    p99_ok = p99_ours is not None and p99_theirs is not None and p99_ours < p99_theirs

    def verdict(value: float | None, goal: float, extra: bool = True) -> str:
        if value is None:
            return "not measured (no valid run)"
        return "met" if value >= goal and extra else "**missed**"

    inv_text = "—" if inv is None else f"{inv:.1f}×"
    seldon_text = "—" if seldon is None else f"{seldon:.1f}×"
    seldon_cpu_text = "—" if seldon_cpu is None else f"{seldon_cpu:.1f}×"
    floor_text = "—" if floor is None else f"{floor:.0%}"
    cpu = ratio(med("predict", "cpu_us"), med("hello", "cpu_us"))
    cpu_text = "—" if cpu is None else f"{cpu:.1f}×"
    floor_redis = ratio(med("predict_redis", "rps"), med("hello", "rps"))
    floor_redis_text = "—" if floor_redis is None else f"{floor_redis:.0%}"
    cpu_redis = ratio(med("predict_redis", "cpu_us"), med("hello", "cpu_us"))
    cpu_redis_text = "—" if cpu_redis is None else f"{cpu_redis:.1f}×"
    headline = []
    if "ours_inv" in by and "mlflow_inv" in by:
        headline.append(
            f"- our /invocations ÷ mlflow serve throughput: **{inv_text}** (target ≥ "
            f"{TARGETS_INV_RATIO:.0f}×, with a lower p99: {ms(p99_ours)} vs {ms(p99_theirs)} "
            f"ms) — {verdict(inv, TARGETS_INV_RATIO, p99_ok)}"
        )
    if "ours_inv" in by and "mlserver_inv" in by:
        headline.append(
            f"- our /invocations ÷ MLServer throughput: **{seldon_text}** (target ≥ "
            f"{TARGETS_MLSERVER_RATIO:.0f}×; MLServer's CPU per request is {seldon_cpu_text} "
            f"ours) — {verdict(seldon, TARGETS_MLSERVER_RATIO)}"
        )
    if "hello" in by and ("predict" in by or "predict_redis" in by):
        headline += [
            f"- our /predict ÷ hello floor throughput: **{floor_text}** on SQLite, "
            f"**{floor_redis_text}** on Redis (target ≥ {TARGETS_FLOOR_SHARE:.0%}) — "
            f"{verdict(floor, TARGETS_FLOOR_SHARE)} / {verdict(floor_redis, TARGETS_FLOOR_SHARE)}",
            f"- server CPU per request (all processes of the server, wrk excluded), /predict ÷ "
            f"hello: **{cpu_text}** on SQLite, **{cpu_redis_text}** on Redis (the Redis "
            "server's CPU included) — what throughput ratios measure on an idle machine, but "
            "unaffected by other jobs competing for the cores",
        ]
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
        f"- {t.label}, {kind}run {i + 1}: {why_invalid(r)}"
        for t in items
        for kind, runs in (("", t.runs), ("fixed-rate ", t.paced))
        for i, r in enumerate(runs)
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
        f"{args.warmup} s warm-up, then {args.repeats} runs round-robin over the {len(items)} "
        "targets "
        "(medians below; ✗ marks a run with socket errors or non-2xx answers, left out). "
        "hello gets a transaction-shaped JSON body; "
        f"/predict sends one raw transaction per request, every `transaction_id` new, "
        f"customer/terminal pairs drawn from the last 30 days of the {notes['history']} "
        f"warmed transactions, `tx_datetime` moving forward; both /invocations get the same "
        f"one-row `dataframe_split` body and MLServer the same row as a V2 request"
        + (
            f" (answers checked equal: p = {notes['probability']})."
            if notes["probability"]
            else "."
        ),
        "",
        *rows,
        "",
        *headline,
        *reference_lines(items, notes.get("models")),
        *challenger_section(items, notes, args),
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


def round_ratios(
    runs: list[dict[str, Any]], reference: list[dict[str, Any]], key: str
) -> list[float | None]:
    """KEY of each run ÷ KEY of the reference's run of the same round (None where either run
    is not valid): ratios of runs measured a few seconds apart, one per round."""
    return [
        run[key] / ref[key] if run["valid"] and ref["valid"] and ref[key] else None
        for run, ref in zip(runs, reference)
    ]


def reference_lines(items: list[Target], models: dict[str, dict[str, int]] | None) -> list[str]:
    """The line on /predict under the configured and the reference model configuration: server
    CPU per request, predict ÷ predict-reference (medians over the repeats, and per round),
    against issue 22's goal; MODELS: the champion's and the reference's figures
    (world.model_figures). Nothing unless both targets ran."""
    by = {t.key: t for t in items}
    if "predict" not in by or "predict_reference" not in by:
        return []
    now, before = by["predict"].runs, by["predict_reference"].runs
    value = ratio(median_of(now, "cpu_us"), median_of(before, "cpu_us"))
    rounds = ", ".join(
        "✗" if v is None else f"{v:.2f}" for v in round_ratios(now, before, "cpu_us")
    )
    if value is None:
        text, met = "—", "not measured (no valid run)"
    else:
        text, met = f"{value:.2f}×", "met" if value <= TARGETS_REFERENCE_CPU else "**missed**"
    served = ""
    if models and "reference" in models:
        champion, reference = models["champion"], models["reference"]
        served = (
            f"; served: v{champion['version']}, {champion['trees']} trees on "
            f"{champion['features']} features, against v{reference['version']} of the "
            f"reference's own store, {reference['trees']} trees on {reference['features']} "
            "features"
        )
    return [
        f"- server CPU per /predict, configured ÷ reference model configuration "
        f"(conf/model-reference.yaml laid over the same settings, its own model and warmed "
        f"state): **{text}** (goal ≤ {TARGETS_REFERENCE_CPU:.2f}×) — {met}; per round: "
        f"{rounds}{served}"
    ]


def challenger_section(
    items: list[Target], notes: dict[str, Any], args: argparse.Namespace
) -> list[str]:
    """The lines on /predict with the challenger off, in shadow and in canary: the maximum runs
    with their CPU ratios to the challenger-off figure, and the fixed-rate runs."""
    by = {t.key: t for t in items}
    keys = [k for k in ("predict", "predict_shadow", "predict_canary") if k in by]
    if "predict" not in by or len(keys) < 2:
        return []

    def ms(micros: float | None) -> str:
        return "—" if micros is None else f"{micros / 1000:.2f}"

    def times(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}×"

    def per_round(values: list[float | None]) -> str:
        return ", ".join("✗" if v is None else f"{v:.2f}" for v in values)

    off = by["predict"]
    models = notes["challenger"]
    champion, challenger = models["champion"], models["challenger"]
    lines = [
        "",
        f"Champion and challenger (issue 21): the same /predict with `serving.challenger.mode` "
        f"off, shadow and canary ({args.canary_percent:g} % of cards), each API on its own copy "
        f"of the warmed SQLite state. Champion v{champion['version']} ({champion['trees']} "
        f"trees, {champion['train_days']}-day training window), challenger "
        f"v{challenger['version']} ({challenger['trees']} trees, {challenger['train_days']}-day "
        "window, another seed).",
        "",
        "| /predict (SQLite), at full load | requests/s | p50 ms | p99 ms | server CPU ms per "
        "request | CPU per request ÷ challenger off | ÷ off, per round |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    cpu_ratio: dict[str, float | None] = {}
    for key in keys:
        t = by[key]
        rps = median_of(t.runs, "rps")
        cpu_ratio[key] = ratio(median_of(t.runs, "cpu_us"), median_of(off.runs, "cpu_us"))
        lines.append(
            f"| {t.label} | {'—' if rps is None else f'{rps:,.0f}'} | "
            f"{ms(median_of(t.runs, 'p50_us'))} | {ms(median_of(t.runs, 'p99_us'))} | "
            f"{ms(median_of(t.runs, 'cpu_us'))} | {times(cpu_ratio[key])} | "
            f"{per_round(round_ratios(t.runs, off.runs, 'cpu_us'))} |"
        )
    lines.append("")
    if "predict_shadow" in by:
        shadow = cpu_ratio["predict_shadow"]
        met = (
            "not measured (no valid run)"
            if shadow is None
            else ("met" if shadow <= TARGETS_SHADOW_CPU else "**missed**")
        )
        lines.append(
            f"- server CPU per /predict, shadow on ÷ off: **{times(shadow)}** (goal ≤ "
            f"{TARGETS_SHADOW_CPU:.2f}×) — {met}"
        )
    if "predict_canary" in by:
        lines.append(
            f"- server CPU per /predict, canary ÷ off: **{times(cpu_ratio['predict_canary'])}**"
        )
    lines += role_lines(notes.get("roles", {}))
    rate = notes.get("fixed_rate")
    if rate is None:
        return lines
    lines += [
        "",
        f"At a fixed rate of {rate:,.0f} requests/s ({args.fixed_rate:.0%} of the challenger-off "
        "/predict's median maximum above): an open-loop generator (benchmarks/paced.py, one new "
        "connection per request as under wrk) sends each request when it is due whatever the "
        "earlier ones did, and each latency runs from that due time, so a stall is not hidden "
        f"(no coordinated omission); {args.repeats} runs of {args.duration} s round-robin, "
        "medians of the valid runs. Generator lag: how late the generator itself started "
        f"requests; ✗: a run whose generator lag p99 exceeded {args.max_lag_ms:g} ms (the "
        "machine stalled the generator, so the tail is not the server's) or with errors, left "
        "out.",
        "",
        "| /predict (SQLite), at a fixed rate | requests/s | p50 ms | p90 ms | p99 ms | "
        "p99 ÷ challenger off | server CPU ms per request | CPU ÷ challenger off | generator "
        "lag p99 ms | valid runs | p99 ms per run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key in keys:
        t = by[key]
        rps = median_of(t.paced, "rps")
        p99 = ratio(median_of(t.paced, "p99_us"), median_of(off.paced, "p99_us"))
        cpu = ratio(median_of(t.paced, "cpu_us"), median_of(off.paced, "cpu_us"))
        lines.append(
            f"| {t.label} | {'—' if rps is None else f'{rps:,.0f}'} | "
            f"{ms(median_of(t.paced, 'p50_us'))} | {ms(median_of(t.paced, 'p90_us'))} | "
            f"{ms(median_of(t.paced, 'p99_us'))} | {times(p99)} | "
            f"{ms(median_of(t.paced, 'cpu_us'))} | {times(cpu)} | "
            f"{ms(median_of(t.paced, 'lag_p99_us'))} | "
            f"{sum(r['valid'] for r in t.paced)}/{len(t.paced)} | "
            + ", ".join(f"{r['p99_us'] / 1000:.1f}" + ("" if r["valid"] else " ✗") for r in t.paced)
            + " |"
        )
    return lines


def role_lines(roles: dict[str, dict[str, float]]) -> list[str]:
    """What the shadow and canary servers' metrics counted over the whole run (warm-ups and
    fixed-rate runs included): proof that the challenger really scored."""
    lines = []
    shadow = roles.get("api_shadow")
    if shadow is not None:
        lines.append(
            f"- shadow: the challenger scored {shadow['shadow']:,.0f} of the "
            f"{shadow['champion'] + shadow['challenger']:,.0f} transactions the champion "
            f"answered ({shadow['errors']:,.0f} failures)"
        )
    canary = roles.get("api_canary")
    if canary is not None:
        total = canary["champion"] + canary["challenger"]
        share = canary["challenger"] / total if total else 0.0
        lines.append(
            f"- canary: the challenger answered {canary['challenger']:,.0f} of {total:,.0f} "
            f"transactions ({share:.1%}; the champion scored them in shadow), "
            f"{canary['errors']:,.0f} failures"
            + (
                ""
                if "canary_open" not in canary
                else (
                    "; the canary was still open at the end"
                    if canary["canary_open"]
                    else "; **the canary guard had stopped the canary** by the end"
                )
            )
        )
    return lines
