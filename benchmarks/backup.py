"""Backup and restore of the demo store: the figures behind the README's RPO/RTO.

    .venv/bin/python -m benchmarks.backup [--log-rows 200000] [--repeats 3] [--markdown F]

Setup, as `make demo` leaves its store: the default simulated world, a champion trained on it
(fast settings) and placed in Production, the online state warmed with every transaction
(`fraudflow warm`), a prediction log of the last `--log-rows` transactions written by the log's
own writer, and a report. Then `make_backup` (what `fraudflow backup` runs) and `restore_backup`
into a new, empty folder (`fraudflow restore`), each repeated; medians reported, with the size
of each part of the backup.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.monitor import scored_world, write_log
from benchmarks.table import loadavg, publish
from pipelines.backup.manifest import MANIFEST
from pipelines.backup.run import make_backup, restore_backup
from pipelines.log.record import log_folder
from pipelines.settings import RAW_COLUMNS
from pipelines.state.factory import open_state


def part_sizes(backup: Path) -> dict[str, int]:
    manifest = json.loads((backup / MANIFEST).read_text())
    sizes: dict[str, int] = {}
    for entry in manifest["files"]:
        part = entry["path"].split("/", 1)[0]
        sizes[part] = sizes.get(part, 0) + entry["size"]
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--log-rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", help="write the results table here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings, result, scored, version = scored_world(str(Path(tmp) / "demo"))
        print("warming the online state")
        open_state(settings).warm(scored[list(RAW_COLUMNS)])
        names = list(result.scorer.features)
        write_log(log_folder(settings), scored.iloc[-args.log_rows :], names, version)
        reports = settings.under_workdir(settings.monitoring.reports_dir)
        reports.mkdir(parents=True, exist_ok=True)
        (reports / "latest.json").write_text('{"verdict": "no_drift"}\n')
        backups, restores, sizes, total = [], [], {}, 0
        for run in range(args.repeats):
            started = time.perf_counter()
            made = make_backup(settings, Path(tmp) / "backups")
            backups.append(time.perf_counter() - started)
            sizes, total = part_sizes(made.folder), made.total_bytes
            target = settings.model_copy(update={"workdir": Path(tmp) / f"restored-{run}"})
            started = time.perf_counter()
            restore_backup(target, made.folder)
            restores.append(time.perf_counter() - started)
            shutil.rmtree(target.workdir)
    lines = [
        f"Demo store: {len(scored):,} transactions in the online state, {args.log_rows:,} "
        f"logged predictions, one model version; {platform.node()}, load average "
        f"{loadavg()}, {args.repeats} runs (median).",
        "",
        "| step | median s | runs (s) |",
        "|---|---:|---|",
        f"| backup (while nothing else writes) | {statistics.median(backups):.1f} | "
        + ", ".join(f"{t:.1f}" for t in backups)
        + " |",
        f"| restore into an empty folder | {statistics.median(restores):.1f} | "
        + ", ".join(f"{t:.1f}" for t in restores)
        + " |",
        "",
        "| part of the backup | MB |",
        "|---|---:|",
        *[f"| {part} | {size / 1e6:.1f} |" for part, size in sorted(sizes.items())],
        f"| total | {total / 1e6:.1f} |",
    ]
    text = "\n".join(lines)
    publish(text, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
