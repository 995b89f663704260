"""`fraudflow prune`: bounded growth of everything the system writes on its data volume.

Compacts the prediction log's closed days to Parquet, deletes the log days, labels and report
folders past their retention, and the online-state rows no feature can read any more. The
monitor job runs it before each check; it is safe beside a running API.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from drift.monitor import reports_dir
from drift.retention import prune_reports
from pipelines.log import record, retention
from pipelines.settings import Settings
from pipelines.state.factory import open_state, retention_ms
from pipelines.state.sqlite import SqliteOnlineState

log = logging.getLogger("fraudflow.prune")


def run_prune(settings: Settings, now: datetime | None = None) -> dict[str, Any]:
    """One pass; returns what it did (files, bytes, rows)."""
    now = now or datetime.now(timezone.utc)
    monitoring = settings.monitoring
    folder = record.log_folder(settings)
    removed_logs = (
        retention.delete_older_than(folder, settings.prediction_log.retention_days, now)
        if folder.is_dir()
        else []
    )
    compacted = retention.compact_closed(folder, now) if folder.is_dir() else []
    for item in compacted:
        log.info(
            "compacted %s: %d rows, %d -> %d bytes%s",
            item.source.name,
            item.rows,
            item.json_bytes,
            item.parquet_bytes,
            " (a torn last record left out)" if item.torn else "",
        )
    removed_reports = prune_reports(reports_dir(settings), monitoring.reports_retention_days, now)
    state: dict[str, Any] = {"backend": "sqlite", "transactions": 0, "labels": 0}
    online = open_state(settings)
    if isinstance(online, SqliteOnlineState):
        labels_before = now - timedelta(days=settings.prediction_log.retention_days + 1)
        pruned = online.prune(retention_ms(settings), int(labels_before.timestamp() * 1000))
        state.update(transactions=pruned.transactions, labels=pruned.labels)
    else:  # a networked backend trims itself on every write, by the same rule
        state = {"backend": type(online).__name__, "trimmed_on_write": True}
    return {
        "compacted": [
            {
                "file": c.target.name,
                "rows": c.rows,
                "json_bytes": c.json_bytes,
                "parquet_bytes": c.parquet_bytes,
                "torn_record_skipped": c.torn,
            }
            for c in compacted
        ],
        "removed_log_files": [p.name for p in removed_logs],
        "removed_reports": [p.name for p in removed_reports],
        "state_rows_removed": state,
        "at": now.isoformat(timespec="seconds"),
    }


def describe(result: dict[str, Any], seconds: float | None = None) -> str:
    state = result["state_rows_removed"]
    rows = (
        f"{state['transactions']:,} state rows and {state['labels']:,} labels"
        if "transactions" in state
        else f"no state rows ({state['backend']} trims on write)"
    )
    took = f" in {seconds:.1f}s" if seconds is not None else ""
    return (
        f"pruned: {len(result['compacted'])} log files compacted to Parquet, "
        f"{len(result['removed_log_files'])} log files and {len(result['removed_reports'])} "
        f"report folders past retention removed, {rows} deleted{took}"
    )


def prune_and_describe(settings: Settings) -> tuple[dict[str, Any], str]:
    started = time.perf_counter()
    result = run_prune(settings)
    return result, describe(result, time.perf_counter() - started)
