"""Compaction and retention of the prediction log (run by `fraudflow prune`, never by the API):
closed days' JSON lines replaced by zstd Parquet, days past the retention deleted."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.log.reader import MonitoringInputError, read_log_file
from pipelines.log.record import FILE_MODE, FILE_PREFIX, FILE_SUFFIX, PARQUET_SUFFIX, file_day

# a day's files are closed this long after the day ended: a request that took its day just
# before midnight has written by then
CLOSE_GRACE = timedelta(minutes=10)


@dataclass(frozen=True)
class Compaction:
    """One JSON-lines file replaced by its Parquet copy."""

    source: Path
    target: Path
    rows: int
    json_bytes: int
    parquet_bytes: int
    torn: bool


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def compact_file(path: Path) -> Compaction | None:
    """Replace a closed JSON-lines file by a zstd Parquet file of the same records (a torn last
    line left out). Atomic: written to a temporary file, its row count checked against the
    JSON's, renamed into place; only then is the JSON removed. A file that grew meanwhile is
    left as it was. None when the file held no whole record (it is removed)."""
    path = Path(path)
    target = path.with_suffix(PARQUET_SUFFIX)
    size = path.stat().st_size
    read = read_log_file(path)
    if target.exists():  # a run stopped between the rename and the removal of the JSON
        if pq.read_metadata(target).num_rows != len(read.table):
            raise MonitoringInputError(
                f"{target} holds {pq.read_metadata(target).num_rows} rows but {path} "
                f"{len(read.table)}: both kept, compare them by hand"
            )
        path.unlink()
        return Compaction(path, target, len(read.table), size, target.stat().st_size, read.torn)
    if not len(read.table):
        path.unlink()
        return None
    table = read.table
    tmp = path.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        written = pq.read_metadata(tmp).num_rows
        if written != table.num_rows:
            raise MonitoringInputError(
                f"compacting {path}: Parquet holds {written} rows, not {table.num_rows}"
            )
        if path.stat().st_size != size:
            raise MonitoringInputError(f"compacting {path}: the file is still being written")
        os.replace(tmp, target)
        _fsync_folder(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    path.unlink()
    return Compaction(path, target, table.num_rows, size, target.stat().st_size, read.torn)


def _is_day(text: str) -> bool:
    try:
        datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        return False
    return True


def closed_files(folder: Path, now: datetime | None = None) -> list[Path]:
    """JSON-lines files of days that ended at least CLOSE_GRACE ago: no writer appends to them."""
    now = now or datetime.now(timezone.utc)
    closed = []
    for path in sorted(Path(folder).glob(f"{FILE_PREFIX}*{FILE_SUFFIX}")):
        try:
            day = datetime.fromisoformat(file_day(path)).replace(tzinfo=timezone.utc)
        except ValueError:
            continue  # not a log file of ours
        if day + timedelta(days=1) + CLOSE_GRACE <= now:
            closed.append(path)
    return closed


def compact_closed(folder: Path, now: datetime | None = None) -> list[Compaction]:
    """Compact every closed JSON-lines file of the folder to Parquet."""
    done = []
    for path in closed_files(folder, now):
        result = compact_file(path)
        if result is not None:
            done.append(result)
    return done


def delete_older_than(folder: Path, days: int, now: datetime | None = None) -> list[Path]:
    """Remove the log files (JSON and Parquet) of days that ended more than `days` days ago."""
    today = (now or datetime.now(timezone.utc)).date()
    oldest_kept = (today - timedelta(days=days)).isoformat()
    removed = []
    for path in sorted(Path(folder).glob(f"{FILE_PREFIX}*")):
        if not path.name.endswith((FILE_SUFFIX, PARQUET_SUFFIX)):
            continue
        if _is_day(file_day(path)) and file_day(path) < oldest_kept:
            path.unlink()
            removed.append(path)
    return removed
