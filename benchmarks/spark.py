"""`fraudflow score --engine spark` end to end, and how its cost grows with the data.

`python -m benchmarks.spark [--runs N] [--master URL] [--markdown FILE]`: simulates the default
world (5,000 customers, 183 days), trains and promotes a model on it (fast settings), then times
the whole command (process start, JVM start, read, features, model, write) on that data (×1) and
on four copies of it with shifted customer, terminal and transaction ids (×4: four times the
rows, the same history per card). `spark_score_run` is the one measurement, for other
benchmarks' side-by-side tables.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from benchmarks.env import ROOT, clean_env
from pipelines.settings import Settings, load_settings
from pipelines.training.simulate import simulate_transactions, write_daily_parquet
from tests.support.models import train_and_register

FAST = {"max_rounds": 300, "early_stopping_rounds": 30, "lightgbm": {"learning_rate": 0.1}}
# the local driver's heap: the default 1 GiB spills the window sorts of a few million rows
DRIVER_MEMORY = "4g"


@dataclass(frozen=True)
class SparkRun:
    rows: int
    seconds: float
    # CPU seconds of the whole process tree (driver, JVM, Python workers): what the run costs,
    # whatever share of the cores other jobs leave it
    cpu_seconds: float
    # the machine's 1-minute load average when the run started (other jobs slow Spark down)
    load_before: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    @property
    def seconds_per_million(self) -> float:
        return self.seconds / (self.rows / 1e6)


def spark_score_run(
    config: Path, data: Path, output: Path, rows: int, master: str = "local[2]"
) -> SparkRun:
    """Wall time of one `fraudflow score --engine spark` process on DATA (ROWS transactions)."""
    command = [sys.executable, "-m", "fraudflow.cli", "score", "--engine", "spark"]
    command += ["--master", master, "--config", str(config), "--data", str(data)]
    command += ["--output", str(output)]
    env = clean_env(
        {
            "PYTHONPATH": str(ROOT),
            "PYSPARK_SUBMIT_ARGS": f"--driver-memory {DRIVER_MEMORY} pyspark-shell",
        }
    )
    env.pop("OMP_NUM_THREADS", None)
    load_before = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"spark score failed ({done.returncode}):\n{done.stderr[-3000:]}")
    written = sum(pq.ParquetFile(p).metadata.num_rows for p in output.rglob("*.parquet"))
    if written != rows:
        raise RuntimeError(f"spark score wrote {written} rows for {rows} transactions")
    return SparkRun(rows=rows, seconds=seconds, cpu_seconds=cpu, load_before=load_before)


def build_world(root: Path) -> tuple[Path, Path, int]:
    """The config of a store with a promoted model, the default data's folder, its row count."""
    settings = load_settings(
        environ={}, overrides={"workdir": str(root / "work"), "training": FAST}
    )
    transactions = simulate_transactions(settings.simulation)
    data = root / "x1"
    write_daily_parquet(transactions, data)
    train_and_register(transactions, settings, "spark benchmark", data={"data_path": str(data)})
    return _config(root, settings), data, len(transactions)


def _config(root: Path, settings: Settings) -> Path:
    payload = settings.model_dump(mode="json")
    payload["workdir"] = str(settings.workdir)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


def replicate(data: Path, target: Path, copies: int) -> None:
    """COPIES of every day file of DATA, ids prefixed per copy: independent cards and terminals
    with the same history each, so that only the volume changes."""
    target.mkdir(parents=True)
    for day in sorted(data.glob("*.parquet")):
        table = pq.read_table(day)
        for copy in range(copies):
            columns = {}
            for name in table.column_names:
                column = table[name]
                if name in ("transaction_id", "customer_id", "terminal_id"):
                    column = pc.binary_join_element_wise(
                        pa.scalar(f"c{copy}"), pc.cast(column, pa.string()), "-"
                    )
                columns[name] = column
            pq.write_table(pa.table(columns), target / f"{day.stem}-c{copy}.parquet")


def table(runs: dict[str, list[SparkRun]], args: argparse.Namespace) -> str:
    """The Markdown table of the runs so far: medians per data size."""
    lines = [
        f"Machine: 2 cores, {time.strftime('%Y-%m-%d')}; command: "
        f"`python -m benchmarks.spark --runs {args.runs} --master {args.master}`",
        "",
        "| data | rows | runs | median s (wall) | min–max s | tx/s (median) | s per M rows "
        "| CPU s per M rows (median) | load avg before each run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, done in runs.items():
        if not done:
            continue
        rows = done[0].rows
        median = statistics.median(r.seconds for r in done)
        cpu = statistics.median(r.cpu_seconds for r in done)
        lines.append(
            f"| {name} | {rows:,} | {len(done)} | {median:.1f} | "
            f"{min(r.seconds for r in done):.1f}–{max(r.seconds for r in done):.1f} | "
            f"{rows / median:,.0f} | {median / (rows / 1e6):.1f} | {cpu / (rows / 1e6):.1f} | "
            f"{', '.join(f'{r.load_before:.1f}' for r in done)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--markdown", help="also write the table to this file (after every run)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fraudflow-spark-bench-") as folder:
        root = Path(folder)
        config, x1, rows = build_world(root)
        x4 = root / "x4"
        replicate(x1, x4, 4)
        sizes = {"×1": (x1, rows), "×4": (x4, rows * 4)}
        runs: dict[str, list[SparkRun]] = {name: [] for name in sizes}
        for index in range(args.runs):  # sizes alternate: a load change hits both alike
            for name, (data, count) in sizes.items():
                output = root / f"out-{index}-{name}"
                run = spark_score_run(config, data, output, count, args.master)
                shutil.rmtree(output)
                runs[name].append(run)
                print(
                    f"{name}: {run.seconds:.1f} s, {run.rows_per_s:,.0f} tx/s, "
                    f"{run.cpu_seconds:.1f} CPU s, load {run.load_before:.1f}",
                    flush=True,
                )
                if args.markdown:
                    Path(args.markdown).write_text(table(runs, args))
    print(table(runs, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
