"""Bytes per million logged predictions: the API's JSON lines against their Parquet compaction.

    .venv/bin/python -m benchmarks.log_size [--rows 1000000] [--markdown F]

Setup: the default simulated world, a champion trained on it (fast settings), and the last
`--rows` transactions with their features and the champion's probabilities written by the
log's own writer, as one worker's file of one day. Then `fraudflow prune`'s compaction of that
file (zstd Parquet, row count verified), and the monitor's read of the day (the champion's
features) from each format. Bytes are scaled to one million predictions.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from benchmarks.monitor import scored_world, write_log
from benchmarks.table import publish
from pipelines.log.reader import log_files, read_log
from pipelines.log.retention import compact_file


def _timed(function, *args):
    cpu, wall = time.process_time(), time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--markdown", help="write the results table here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        _, result, scored, _ = scored_world(tmp)
        names = list(result.scorer.features)
        frame = scored.iloc[-args.rows :]
        folder = Path(tmp) / "predictions"
        write_log(folder, frame, names, "1")
        (json_file,) = log_files(folder)
        json_bytes = json_file.stat().st_size
        json_read, json_s, json_cpu = _timed(read_log, folder, None, None, names)
        compaction, compact_s, compact_cpu = _timed(compact_file, json_file)
        parquet_read, parquet_s, parquet_cpu = _timed(read_log, folder, None, None, names)
        assert parquet_read.predictions.equals(json_read.predictions)
    rows = len(frame)
    per_million = 1_000_000 / rows
    parquet_bytes = compaction.parquet_bytes
    lines = [
        f"{rows:,} predictions, {len(names)} features each; {platform.node()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| format | bytes per million predictions | ratio | monitor's read of the day (CPU) |",
        "|---|---:|---:|---:|",
        f"| JSON lines (as the API writes) | {json_bytes * per_million / 1e6:,.0f} MB | 1.00x "
        f"| {json_s:.1f} s ({json_cpu:.1f} s) |",
        f"| Parquet, zstd (after `fraudflow prune`) | {parquet_bytes * per_million / 1e6:,.0f} MB "
        f"| {parquet_bytes / json_bytes:.3f}x | {parquet_s:.1f} s ({parquet_cpu:.1f} s) |",
        "",
        f"Compaction of the file: {compact_s:.1f} s ({compact_cpu:.1f} s CPU), row count "
        f"verified ({compaction.rows:,}); the Parquet read equals the JSON read.",
    ]
    text = "\n".join(lines)
    publish(text, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
