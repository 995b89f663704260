"""Time the monitor on a day of 100 k and 1 M logged predictions, and measure its reports.

    .venv/bin/python -m benchmarks.monitor [--sizes 100000 1000000] [--repeats 3] [--markdown F]

Setup (not timed): the default simulated world, a champion trained and promoted in a temporary
embedded store, and prediction-log files in the API's format (two workers' files) holding the
last N transactions with their features and the champion's probabilities. Timed: the whole
`run_monitor` (read the log, join labels, Evidently drift report, verdict, HTML, MLflow run) with
the configured sample (monitoring.max_rows current rows) and, side by side in the same run, with
no sample (Evidently on every row), each the median of the repeats, with the process's CPU time
(all its threads; steadier than wall time on a shared machine). Also: reading the log alone,
and the size of the report pages.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from drift.monitor import run_monitor
from drift.window import Window
from pipelines.features import build_features
from pipelines.log.reader import read_predictions
from pipelines.log.record import log_folder, record
from pipelines.log.writer import PredictionLogWriter
from pipelines.settings import RAW_COLUMNS, Settings, load_settings
from pipelines.training.simulate import simulate_transactions
from pipelines.training.train import TrainingResult, train_model
from tests.support.models import train_and_register

FAST = {
    "train_days": 21,
    "validation_days": 7,
    "max_rounds": 200,
    "lightgbm": {"learning_rate": 0.1},
}


def write_log(folder: Path, frame: pd.DataFrame, features: list[str], version: str) -> None:
    """The prediction log of `frame`, built and written by the log's own record builder and
    writer, as the API writes it."""
    logged_at = pd.Timestamp.now(tz="UTC").isoformat(timespec="milliseconds")
    writer = PredictionLogWriter(folder)
    rows = zip(
        frame["transaction_id"].astype(str),
        frame["tx_datetime"].dt.to_pydatetime(),
        frame["customer_id"].astype(str),
        frame["terminal_id"].astype(str),
        frame["tx_amount"].astype(float),
        frame[features].to_dict(orient="records"),
        frame["fraud_probability"].astype(float),
    )
    batch = []
    for tid, when, customer, terminal, amount, values, probability in rows:
        batch.append(
            record(
                logged_at=logged_at,
                transaction_id=tid,
                tx_datetime=when,
                customer_id=customer,
                terminal_id=terminal,
                tx_amount=amount,
                feature_names=features,
                feature_values=[values[name] for name in features],
                fraud_probability=probability,
                decision="approve",
                model_name="fraud-detector",
                model_version=version,
                latency_ms=1.0,
                resent=False,
            )
        )
        if len(batch) == 10_000:
            writer.write(batch)
            batch = []
    writer.write(batch)
    writer.close()


def median(times: list[float]) -> float:
    return statistics.median(times)


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix == ".html")


def scored_world(workdir: str) -> tuple[Settings, TrainingResult, pd.DataFrame, str]:
    """The default simulated world under WORKDIR, a champion trained on it (fast settings) and
    registered in Production, every transaction as the API logs it (raw columns, probability,
    features), and the champion's version."""
    settings = load_settings(environ={}, overrides={"workdir": workdir, "training": FAST})
    transactions = simulate_transactions(settings.simulation)
    print(f"simulated {len(transactions):,} transactions; training the champion")
    result = train_model(transactions, settings)
    features = build_features(transactions, settings.features)
    scored = transactions[list(RAW_COLUMNS)].assign(
        fraud_probability=result.scorer.predict_proba(features)
    )
    scored = pd.concat([scored, features.drop(columns=["tx_amount"])], axis=1)
    version, _ = train_and_register(
        scored,
        settings,
        "benchmark",
        result=result,
        data={"data_path": "benchmark"},
        actor="benchmark",
    )
    return settings, result, scored, version


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", help="write the results table here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings, result, scored, version = scored_world(tmp)
        names = list(result.scorer.features)
        rows = []
        for size in args.sizes:
            rows += measure(settings, scored.iloc[-size:], names, version, args)
    text = table(rows, args)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


def measure(
    settings: Settings, frame: pd.DataFrame, names: list[str], version: str, args
) -> list[tuple]:
    log_dir = log_folder(settings)
    for old in log_dir.glob("*.jsonl"):
        old.unlink()
    write_log(log_dir, frame, names, version)
    log_mb = sum(f.stat().st_size for f in log_dir.glob("*.jsonl")) / 1e6
    window = Window.last_hours(1)
    read_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        read_predictions(log_dir, window.start, window.end, names)
        read_times.append(time.perf_counter() - start)
    results = []
    unsampled = settings.model_copy(
        update={"monitoring": settings.monitoring.model_copy(update={"max_rows": len(frame)})}
    )
    for label, variant in (
        (f"sampled ({settings.monitoring.max_rows:,} rows)", settings),
        ("every row (no sample)", unsampled),
    ):
        times, cpu, size, verdict, share = [], [], 0, "", 0.0
        for _ in range(args.repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            outcome = run_monitor(variant, window)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            size = folder_size(outcome.folder)
            verdict = outcome.verdict.value
            share = outcome.summary["drift"]["drifted_share"]
        print(f"{len(frame):,} predictions, {label}: {median(times):.1f}s ({times}), cpu {cpu}")
        results.append(
            (
                len(frame),
                log_mb,
                median(read_times),
                label,
                times,
                median(cpu),
                size,
                verdict,
                share,
            )
        )
    return results


def table(rows: list[tuple], args) -> str:
    lines = [
        f"Monitor on {platform.machine()} ({platform.python_version()}), medians of "
        f"{args.repeats} runs:",
        "",
        "| logged predictions | log size | read log | drift compared on | monitor (median) "
        "| vs sampled | CPU time | report HTML | verdict (drift share) |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for i, (n, log_mb, read, label, times, cpu, size, verdict, share) in enumerate(rows):
        base = median(rows[i - i % 2][4])
        lines.append(
            f"| {n:,} | {log_mb:,.0f} MB | {read:.1f} s | {label} | {median(times):.1f} s "
            f"| {median(times) / base:.2f}× | {cpu:.1f} s | {size / 1e6:.1f} MB "
            f"| {verdict} ({share:.2f}) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
