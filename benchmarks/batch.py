"""Batch scoring throughput: the old single-thread path, every core, the compiled model.

    .venv/bin/python -m benchmarks.batch [--repeats 3] [--markdown OUT.md] [--spark local[2]]
        [--data FOLDER --config OVERLAY.yaml --model-uri URI]

On the default simulated data (1.78 M transactions; simulated and a model trained and
registered in a temporary store unless --data/--config/--model-uri name existing ones), one
run times `fraudflow score` side by side in each configuration, each repeated: the whole
command (a fresh process: imports and model load included) and its scoring phase (read ->
features -> model -> write, as the command reports it). Medians, against the goals of
>= 500 k tx/s for the scoring phase and >= 200 k tx/s for the whole command.

With --spark MASTER the same run adds `fraudflow score --engine spark --master MASTER` on the
same data and model (its own growth with the data's size: benchmarks/spark.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.env import BIN, ROOT, clean_env
from benchmarks.table import loadavg, publish

GOAL_PHASE = 500_000.0
GOAL_COMMAND = 200_000.0
PHASE_LINE = re.compile(r"scored (\d+) transactions .* in ([\d.]+) s")


@dataclass
class Row:
    """One configuration's runs: whole-command seconds, scoring-phase seconds, peak memory."""

    name: str
    rows: int
    command_s: list[float]
    phase_s: list[float]
    peak_rss_mb: list[float]

    @staticmethod
    def _rate(rows: int, seconds: list[float]) -> float | None:
        return rows / statistics.median(seconds) if seconds else None

    @property
    def command_rate(self) -> float | None:
        return self._rate(self.rows, self.command_s)

    @property
    def phase_rate(self) -> float | None:
        return self._rate(self.rows, self.phase_s)


def _run_once(command: Sequence[str], env: dict[str, str]) -> tuple[float, str, float]:
    """Wall seconds, stdout and peak RSS (MB, the process's own) of one run of COMMAND."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(list(command), cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            tail = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{list(command)[:5]} failed ({process.returncode}):\n{tail}")
        return seconds, out.read().decode(errors="replace"), usage.ru_maxrss / 1024


def time_command(
    name: str,
    command: Sequence[str],
    rows: int,
    repeats: int,
    env: dict[str, str] | None = None,
    phase: Callable[[str], float | None] | None = None,
    warmup: bool = False,
) -> Row:
    """Time COMMAND `repeats` times (after one untimed run with `warmup`): the whole command,
    and with PHASE (stdout -> seconds) its scoring phase. The hook for other engines' rows."""
    env = env if env is not None else _env({})
    if warmup:
        _run_once(command, env)
    row = Row(name, rows, [], [], [])
    for _ in range(repeats):
        seconds, out, rss = _run_once(command, env)
        row.command_s.append(seconds)
        row.peak_rss_mb.append(rss)
        found = phase(out) if phase else None
        if found is not None:
            row.phase_s.append(found)
    return row


def fraudflow_phase(out: str) -> float | None:
    """The scoring phase's seconds as `fraudflow score` prints them."""
    found = PHASE_LINE.search(out)
    return float(found[2]) if found else None


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = clean_env({"PYTHONPATH": str(ROOT), **extra})
    env.pop("OMP_NUM_THREADS", None)  # the batch chooses its threads (batch.threads)
    return env


# (name, batch settings) of the local engine's configurations, timed in this order
LOCAL = (
    ("old path: 1 thread, booster", {"THREADS": "1", "COMPILED": "off"}),
    ("all cores, booster", {"COMPILED": "off"}),
    ("all cores, lleaves", {"COMPILED": "lleaves"}),
)


def build_world(root: Path) -> tuple[Path, Path, str, int]:
    """Default simulated data, a model trained on it and registered: (data, config, uri, rows)."""
    import yaml

    from pipelines.data import load_transactions
    from pipelines.settings import load_settings
    from pipelines.training.simulate import simulate_transactions, write_daily_parquet
    from tests.support.models import train_and_register

    data = root / "data"
    config = root / "overlay.yaml"
    config.write_text(yaml.safe_dump({"workdir": str(root / "work"), "data": {"path": str(data)}}))
    settings = load_settings(config, environ={})
    write_daily_parquet(simulate_transactions(settings.simulation), data)
    transactions = load_transactions(data, require_labels=True)
    version, _ = train_and_register(transactions, settings, data={"data_path": str(data)})
    return data, config, f"models:/{settings.mlflow.model_name}/{version}", len(transactions)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data")
    parser.add_argument("--config")
    parser.add_argument("--model-uri")
    parser.add_argument("--markdown", help="write the results section here")
    parser.add_argument("--spark", metavar="MASTER", help="also time the Spark engine there")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fraudflow-batch-") as folder:
        root = Path(folder)
        if args.data and args.config and args.model_uri:
            from pipelines.batch.chunks import count_rows

            data, config, uri = Path(args.data), Path(args.config), args.model_uri
            rows = count_rows(data) or 0
        else:
            data, config, uri, rows = build_world(root)
        trees = _trees(config, uri)
        table: list[tuple[str, str, Row]] = []
        for name, batch in LOCAL:
            command = [
                str(BIN / "python"), "-m", "fraudflow.cli", "score", "--config", str(config),
                "--data", str(data), "--model-uri", uri, "--output", str(root / "scores.parquet"),
            ]  # fmt: skip
            env = _env({f"FRAUDFLOW__BATCH__{k}": v for k, v in batch.items()})
            warm = batch.get("COMPILED") == "lleaves"  # the one-off compile is not timed
            row = time_command(name, command, rows, args.repeats, env, fraudflow_phase, warm)
            table.append((name, "local", row))
            print(_line(row), flush=True)
        if args.spark:
            from benchmarks.spark import DRIVER_MEMORY

            name = f"Spark {args.spark} (`--engine spark`)"
            command = [
                str(BIN / "python"), "-m", "fraudflow.cli", "score", "--engine", "spark",
                "--master", args.spark, "--config", str(config), "--data", str(data),
                "--model-uri", uri, "--output", str(root / "spark-scores"),
            ]  # fmt: skip
            env = _env({"PYSPARK_SUBMIT_ARGS": f"--driver-memory {DRIVER_MEMORY} pyspark-shell"})
            row = time_command(name, command, rows, args.repeats, env)
            table.append((name, "spark", row))
            print(_line(row), flush=True)
    text = render(table, rows, trees, args.repeats)
    publish(text, args.markdown)
    return 0


def _trees(config: Path, uri: str) -> int:
    from pipelines.mlflow.models import load_scorer
    from pipelines.settings import load_settings

    return load_scorer(load_settings(config, environ={}), uri).booster.num_trees()


def _line(row: Row) -> str:
    phase = f"{row.phase_rate:,.0f}" if row.phase_rate else "n/a"
    return f"{row.name}: command {row.command_rate:,.0f} tx/s, scoring phase {phase} tx/s"


def _goal(rate: float | None, goal: float) -> str:
    if rate is None:
        return "n/a"
    return f"{rate:,.0f} ({'met' if rate >= goal else 'missed'})"


def render(table: list[tuple[str, str, Row]], rows: int, trees: int, repeats: int) -> str:
    load = loadavg()
    lines = [
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average after the run {load}; "
        f"{rows:,} transactions (default simulation), a {trees}-tree model; medians of "
        f"{repeats} runs; command: `.venv/bin/python -m benchmarks.batch`",
        "",
        f"| configuration | scoring phase tx/s (goal ≥ {GOAL_PHASE:,.0f}) | whole command "
        f"tx/s (goal ≥ {GOAL_COMMAND:,.0f}) | command s (min–max) | peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for name, _, row in table:
        lines.append(
            f"| {name} | {_goal(row.phase_rate, GOAL_PHASE)} "
            f"| {_goal(row.command_rate, GOAL_COMMAND)} "
            f"| {statistics.median(row.command_s):.1f} ({min(row.command_s):.1f}–"
            f"{max(row.command_s):.1f}) | {max(row.peak_rss_mb):,.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
