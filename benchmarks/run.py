"""Time the training side on the default dataset and compare featurizing with the handbook's way.

    .venv/bin/python -m benchmarks.run [--repeats 3] [--skip-backtest] [--skip-train]
        [--skip-handbook] [--markdown OUT.md]

Simulate, load, featurize (ours; ours with the reference configuration's features,
conf/model-reference.yaml, i.e. before issue 22, alternating with ours; and the Fraud Detection
Handbook's pandas groupby/rolling reference, all in the same run), train and backtest, each
repeated and reported as the median (the machine is shared and noisy), plus the ratios. The
handbook's implementation and ours are also compared value by value.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.handbook import handbook_features
from benchmarks.table import publish
from pipelines.data import load_transactions
from pipelines.features import build_features
from pipelines.settings import REFERENCE_MODEL_CONFIG, load_settings, read_overlay
from pipelines.training.ablation import reference_settings
from pipelines.training.backtest import run_backtest
from pipelines.training.simulate import simulate_transactions, write_daily_parquet
from pipelines.training.train import train_model


def timed(func: Callable[[], object], repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return times, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-repeats", type=int, default=3)
    parser.add_argument("--skip-backtest", action="store_true")
    parser.add_argument("--skip-train", action="store_true", help="no training, no backtest")
    parser.add_argument("--skip-handbook", action="store_true")
    parser.add_argument("--markdown", help="write the results table here")
    args = parser.parse_args()
    settings = load_settings(environ={})
    rows: list[tuple[str, str, list[float]]] = []

    sim_times, transactions = timed(
        lambda: simulate_transactions(settings.simulation), args.repeats
    )
    rows.append(("simulate", f"{len(transactions):,} transactions", sim_times))
    with tempfile.TemporaryDirectory() as folder:
        write_times, _ = timed(
            lambda: write_daily_parquet(transactions, Path(folder), overwrite=True),
            args.repeats,
        )
        rows.append(("write daily Parquet", "183 files", write_times))
        load_times, loaded = timed(
            lambda: load_transactions(folder, require_labels=True), args.repeats
        )
        rows.append(("load + validate", f"{len(loaded):,} rows", load_times))

    today = reference_settings(settings, read_overlay(REFERENCE_MODEL_CONFIG)).features
    ours_times, today_times = [], []
    for _ in range(args.repeats):  # alternating, so that the machine's noise hits both alike
        once, ours = timed(lambda: build_features(loaded, settings.features), 1)
        ours_times += once
        once, before = timed(lambda: build_features(loaded, today), 1)
        today_times += once
    rows.append(("featurize (fraudflow)", f"{ours.shape[1]} features", ours_times))
    rows.append(
        ("featurize (fraudflow, reference features)", f"{before.shape[1]} features", today_times)
    )
    notes = [
        f"Featurizing with the configured features takes "
        f"{statistics.median(ours_times) / statistics.median(today_times):.2f}× the time of the "
        f"reference configuration's (conf/model-reference.yaml; ratio of medians, alternating "
        f"runs)."
    ]
    if not args.skip_handbook:
        ref_times, reference = timed(lambda: handbook_features(loaded), args.reference_repeats)
        rows.append(("featurize (handbook groupby/rolling)", "12 features", ref_times))
        diff = (ours[reference.columns] - reference).abs().max().max()
        notes.append(
            f"Featurizing: the handbook's reference takes "
            f"{statistics.median(ref_times) / statistics.median(ours_times):.1f}× the time of "
            f"ours (ratio of medians, same data, same run); largest difference between the two "
            f"on the 12 shared features: {diff:.2e}."
        )

    if not args.skip_train:
        train_times, result = timed(lambda: train_model(loaded, settings), 1)
        rows.append(
            (
                "train (featurize + fit + evaluate)",
                f"{result.row_counts['rows_train']:,} train rows, "
                f"{result.best_iteration} rounds",
                train_times,
            )
        )
    if not args.skip_backtest and not args.skip_train:
        bt_times, report = timed(lambda: run_backtest(loaded, settings, log_to_mlflow=False), 1)
        rows.append(
            (
                "backtest (4 folds)",
                f"AP {report['summary']['average_precision']['mean']:.3f}",
                bt_times,
            )
        )

    lines = [
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}; command: `.venv/bin/python -m benchmarks.run`",
        "",
        "| step | size | runs | median s | min s | max s |",
        "|---|---|---|---|---|---|",
    ]
    for name, size, times in rows:
        lines.append(
            f"| {name} | {size} | {len(times)} | {statistics.median(times):.2f} "
            f"| {min(times):.2f} | {max(times):.2f} |"
        )
    for note in notes:
        lines += ["", note]
    text = "\n".join(lines)
    publish(text, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
