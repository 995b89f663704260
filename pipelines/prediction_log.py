"""The prediction log: one record per scored transaction, its writer and its reader.

The one owner of the format: the API builds records with `record` and appends them with
`PredictionLogWriter`; monitoring, retraining, tests and benchmarks read them with
`read_predictions`. JSON lines, one file per worker process and UTC day. One `os.write` on an
O_APPEND descriptor per request: the kernel holds the record as soon as the call returns, so a
killed worker loses nothing it acknowledged, and the request path never waits for a disk flush.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
import socket
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from pipelines.settings import Settings

FEATURE_PREFIX = "features."
FILE_PREFIX = "predictions-"
FILE_SUFFIX = ".jsonl"
PARQUET_SUFFIX = ".parquet"
# records hold card and terminal ids: owner and group (the monitor job) only
FILE_MODE = 0o640
log = logging.getLogger("fraudflow.prediction_log")


def record(
    *,
    logged_at: str,
    transaction_id: str,
    tx_datetime: datetime,
    customer_id: str,
    terminal_id: str,
    tx_amount: float,
    feature_names: Sequence[str],
    feature_values: Sequence[float],
    fraud_probability: float,
    decision: str,
    model_name: str,
    model_version: str,
    latency_ms: float,
    resent: bool,
) -> dict[str, Any]:
    """One scored transaction as logged: its raw fields, its features (NaN logged as null),
    the score and decision, and the model that gave them."""
    return {
        "logged_at": logged_at,
        "transaction_id": transaction_id,
        "tx_datetime": tx_datetime.isoformat(),
        "customer_id": customer_id,
        "terminal_id": terminal_id,
        "tx_amount": tx_amount,
        "features": dict(
            zip(feature_names, [None if math.isnan(v) else v for v in feature_values])
        ),
        "fraud_probability": fraud_probability,
        "decision": decision,
        "model_name": model_name,
        "model_version": model_version,
        "latency_ms": round(latency_ms, 3),
        "resent": resent,
    }


def log_folder(settings: Settings) -> Path:
    """Where the API writes its prediction log and monitoring reads it."""
    return settings.under_workdir(settings.serving.prediction_log_dir)


def writer_name(hostname: str | None = None, pid: int | None = None) -> str:
    """This process's part of a file name: the host (letters, digits, dots, dashes; anything
    else becomes "_") and the process id, so that replicas sharing a folder never share a file
    (containers' workers get the same small pids)."""
    host = re.sub(r"[^A-Za-z0-9.-]", "_", hostname or socket.gethostname())[:64] or "host"
    return f"{host}-{os.getpid() if pid is None else pid}"


def log_file(folder: Path, day: str, writer: str, suffix: str = FILE_SUFFIX) -> Path:
    """The file of one writer (host and process) and UTC day."""
    return Path(folder) / f"{FILE_PREFIX}{day}-{writer}{suffix}"


def file_day(path: Path) -> str:
    """The UTC day (YYYY-MM-DD) a log file holds."""
    return path.name[len(FILE_PREFIX) : len(FILE_PREFIX) + 10]


class PredictionLogError(OSError):
    """The log could not take a record (disk full, I/O error): the request must fail."""


class PredictionLogWriter:
    """Appends records to this process's file of the current UTC day.

    A record is acknowledged only once all its bytes are in the file: a short write is
    continued, and a failed one (ENOSPC, EIO) is cut back to the previous end of the file and
    raised, so that no torn record is ever left behind an answered request."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._key: tuple[str, int] | None = None
        self._fd: int | None = None
        self._size = 0
        # the end of the file's whole records, when a failed write could not be cut back yet
        self._torn_at: int | None = None

    def _descriptor(self, day: str) -> int:
        key = (day, os.getpid())
        if self._key != key or self._fd is None:
            if self._fd is not None and self._key is not None and self._key[1] == key[1]:
                os.close(self._fd)  # a forked child leaves its parent's descriptor alone
            path = log_file(self.folder, day, writer_name())
            self._fd = None
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
            self._fd, self._key, self._size = fd, key, os.fstat(fd).st_size
            self._torn_at = None
        return self._fd

    def write(self, records: list[dict[str, Any]]) -> None:
        """Append the records, all or none; raises PredictionLogError when the disk refuses."""
        if not records:
            return
        payload = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        with self._lock:
            try:
                fd = self._descriptor(day)
            except OSError as exc:
                raise PredictionLogError(exc.errno, f"cannot open the log: {exc}") from exc
            if self._torn_at is not None:
                self._cut_back(fd)
            view, written = memoryview(payload), 0
            try:
                while written < len(payload):
                    count = os.write(fd, view[written:])
                    if count <= 0:
                        raise OSError(errno.ENOSPC, "the disk took no byte")
                    written += count
            except OSError as exc:
                if written:
                    self._torn_at = self._size
                    self._cut_back(fd)
                raise PredictionLogError(exc.errno, f"cannot append to the log: {exc}") from exc
            self._size += written

    def _cut_back(self, fd: int) -> None:
        """Remove the bytes of a failed write; until that succeeds nothing else is appended."""
        try:
            os.ftruncate(fd, self._torn_at)
        except OSError as exc:
            raise PredictionLogError(exc.errno, f"cannot remove a torn record: {exc}") from exc
        self._torn_at = None

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class MonitoringInputError(ValueError):
    """Unreadable or inconsistent monitoring input (log, labels, window), named precisely."""


@dataclass(frozen=True)
class Window:
    """A half-open UTC time window [start, end) of logging times."""

    start: datetime
    end: datetime

    @classmethod
    def last_hours(cls, hours: float, now: datetime | None = None) -> "Window":
        end = now or datetime.now(timezone.utc)
        return cls(end - timedelta(hours=hours), end)

    @classmethod
    def day(cls, day: str) -> "Window":
        try:
            start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
        except ValueError as exc:
            raise MonitoringInputError(f"--day must be YYYY-MM-DD, not {day!r}") from exc
        return cls(start, start + timedelta(days=1))

    def days(self) -> list[str]:
        first, last = self.start.date(), (self.end - timedelta(microseconds=1)).date()
        return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]

    def as_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


def log_files(folder: Path, window: Window | None = None) -> list[Path]:
    """Every writer's log file of the window's days (all days without a window): JSON lines,
    or their Parquet compaction (a JSON file whose Parquet copy exists is left out)."""
    patterns = [f"{FILE_PREFIX}{day}-*" for day in window.days()] if window else [f"{FILE_PREFIX}*"]
    files: list[Path] = []
    for pattern in patterns:
        found = sorted(Path(folder).glob(pattern))
        compacted = {f.with_suffix("") for f in found if f.name.endswith(PARQUET_SUFFIX)}
        files += [
            f
            for f in found
            if f.name.endswith(PARQUET_SUFFIX)
            or (f.name.endswith(FILE_SUFFIX) and f.with_suffix("") not in compacted)
        ]
    return files


# The fields every record has (see `record`); parsing against a known schema is about twice as
# fast as letting Arrow infer one, and skips the fields monitoring never reads.
LOG_FIELDS = (
    ("logged_at", pa.string()),
    ("transaction_id", pa.string()),
    ("tx_datetime", pa.string()),
    ("customer_id", pa.string()),
    ("terminal_id", pa.string()),
    ("tx_amount", pa.float64()),
    ("fraud_probability", pa.float64()),
    ("model_version", pa.string()),
)
# the rest of a record, kept by the Parquet compaction
OTHER_FIELDS = (
    ("decision", pa.string()),
    ("model_name", pa.string()),
    ("latency_ms", pa.float64()),
    ("resent", pa.bool_()),
)


def log_schema(features: Sequence[str]) -> pa.Schema:
    fields = [pa.field(name, kind) for name, kind in LOG_FIELDS]
    if features:
        fields.append(pa.field("features", pa.struct([(f, pa.float64()) for f in features])))
    return pa.schema(fields)


@dataclass(frozen=True)
class LogFile:
    """One file's records (flat columns: `features.<name>`), and whether a torn trailing line
    (a record the writer never finished, so never acknowledged) was left out."""

    table: pa.Table
    torn: bool


def whole_lines(path: Path) -> tuple[pa.Buffer, bool]:
    """The file up to its last newline (memory-mapped), and whether bytes followed it: only
    the last line of a file can be torn, by a writer that failed or died in the middle."""
    data = pa.memory_map(str(path)).read_buffer()
    if not data.size or data[data.size - 1 : data.size].to_pybytes() == b"\n":
        return data, False
    return data.slice(0, _last_newline(path)), True


def _last_newline(path: Path) -> int:
    """The offset after the last newline of a large file, read backwards in blocks."""
    with open(path, "rb") as handle:
        position = handle.seek(0, os.SEEK_END)
        while position > 0:
            start = max(0, position - (1 << 16))
            handle.seek(start)
            block = handle.read(position - start)
            found = block.rfind(b"\n")
            if found >= 0:
                return start + found + 1
            position = start
    return 0


def _flat_schema(schema: pa.Schema) -> pa.Schema:
    """The schema's columns as `Table.flatten` names them (`features.<name>`)."""
    fields = []
    for field in schema:
        if pa.types.is_struct(field.type):
            fields += [pa.field(f"{field.name}.{c.name}", c.type) for c in field.type]
        else:
            fields.append(field)
    return pa.schema(fields)


def _conform(table: pa.Table, schema: pa.Schema | None) -> pa.Table:
    """A flat table with exactly the schema's columns (a column the file lacks is null)."""
    if schema is None:
        return table
    flat = _flat_schema(schema)
    columns = [
        (
            table.column(field.name).cast(field.type)
            if field.name in table.column_names
            else pa.nulls(len(table), field.type)
        )
        for field in flat
    ]
    return pa.table(columns, schema=flat)


def read_log_file(path: Path, schema: pa.Schema | None = None) -> LogFile:
    """One JSON-lines or Parquet log file as a flat table (`schema`: the fields to read)."""
    path = Path(path)
    if path.name.endswith(PARQUET_SUFFIX):
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise MonitoringInputError(
                f"prediction log {path} is not valid Parquet: {exc}"
            ) from exc
        return LogFile(_conform(table, schema), False)
    data, torn = whole_lines(path)
    if not data.size:
        empty = pa.table({}) if schema is None else log_schema(()).empty_table()
        return LogFile(_conform(empty, schema), torn)
    if schema is None:  # every field: the known ones typed, the features as found
        known = pa.schema([pa.field(n, k) for n, k in LOG_FIELDS + OTHER_FIELDS])
        options = pa_json.ParseOptions(explicit_schema=known, unexpected_field_behavior="infer")
    else:
        options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        table = pa_json.read_json(pa.BufferReader(data), parse_options=options)
    except pa.ArrowInvalid as exc:
        raise MonitoringInputError(f"prediction log {path} is not valid JSON lines: {exc}") from exc
    if schema is None:
        return LogFile(_normalised(table.flatten()), torn)
    return LogFile(_conform(table.flatten(), schema), torn)


@dataclass(frozen=True)
class LogRead:
    """What `read_log` found: the predictions, and the files whose torn last line it skipped."""

    predictions: pd.DataFrame
    torn_files: tuple[Path, ...]

    @property
    def torn_records(self) -> int:
        return len(self.torn_files)


def read_log(
    folder: Path, window: Window | None = None, features: Sequence[str] | None = None
) -> LogRead:
    """Logged predictions of the window, one row per transaction (a re-sent transaction keeps
    its first scoring), features as plain columns; empty when nothing was logged. JSON lines
    and their Parquet compaction alike. A torn last line of a file is skipped and counted; a
    torn line anywhere else is an error naming the file.

    `features`: the feature names to read (none: only the raw fields and the score); by
    default every field of the records, as found.
    """
    schema = None if features is None else log_schema(features)
    tables, torn = [], []
    for path in log_files(folder, window):
        if not path.stat().st_size:
            continue
        read = read_log_file(path, schema)
        tables.append(read.table)
        if read.torn:
            torn.append(path)
    if torn:
        log.warning("skipped the torn last record of %d log files: %s", len(torn), torn)
    if not tables or not any(len(t) for t in tables):
        return LogRead(pd.DataFrame(), tuple(torn))
    table = pa.concat_tables([t for t in tables if len(t)], promote_options="permissive")
    return LogRead(_frame(table.to_pandas(), window), tuple(torn))


def _frame(frame: pd.DataFrame, window: Window | None) -> pd.DataFrame:
    # a feature named like a raw field (tx_amount) is that field: keep one column
    frame = frame.drop(
        columns=[f"{FEATURE_PREFIX}{c}" for c in frame.columns if f"{FEATURE_PREFIX}{c}" in frame]
    )
    features = [
        c.removeprefix(FEATURE_PREFIX) for c in frame.columns if c.startswith(FEATURE_PREFIX)
    ]
    frame.columns = [c.removeprefix(FEATURE_PREFIX) for c in frame.columns]
    frame = frame.astype({name: float for name in features})  # all-null columns too
    frame["logged_at"] = pd.to_datetime(frame["logged_at"], utc=True, format="ISO8601")
    if window is not None:
        inside = (frame["logged_at"] >= window.start) & (frame["logged_at"] < window.end)
        frame = frame.loc[inside.to_numpy()]
    frame["tx_datetime"] = pd.to_datetime(frame["tx_datetime"], format="ISO8601")
    for column in ("transaction_id", "customer_id", "terminal_id", "model_version"):
        frame[column] = frame[column].astype(str)
    frame = frame.sort_values("logged_at", kind="stable")
    return frame.drop_duplicates("transaction_id", keep="first").reset_index(drop=True)


def read_predictions(
    folder: Path, window: Window | None = None, features: Sequence[str] | None = None
) -> pd.DataFrame:
    """`read_log`'s predictions (see there)."""
    return read_log(folder, window, features).predictions


# --- compaction and retention (run by `fraudflow prune`, never by the API) -------------------

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


def _normalised(table: pa.Table) -> pa.Table:
    """Every known field in its type and every feature as a float (an all-null or all-integer
    column is inferred otherwise), so that the days' files share one schema."""
    kinds = dict(LOG_FIELDS + OTHER_FIELDS)
    columns = []
    for name, column in zip(table.column_names, table.columns):
        kind = pa.float64() if name.startswith(FEATURE_PREFIX) else kinds.get(name)
        columns.append(column.cast(kind) if kind is not None else column)
    return pa.table(columns, names=table.column_names)


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


def snapshot_log(folder: Path, target: Path) -> list[Path]:
    """Copy the log to `target` while writers append: every Parquet file whole, every JSON-lines
    file up to its last complete record (a record being written is not yet acknowledged). A
    file compacted while this runs is taken from its Parquet copy, one deleted past its
    retention is left out. Returns the copies."""
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(Path(folder).glob(f"{FILE_PREFIX}*")):
        if not path.name.endswith((FILE_SUFFIX, PARQUET_SUFFIX)) or path.name.startswith("."):
            continue
        destination = target / path.name
        if destination.exists():
            continue  # its Parquet copy, taken when the JSON file vanished under us
        try:
            data = whole_lines(path)[0] if path.name.endswith(FILE_SUFFIX) else None
            if data is None:
                shutil.copyfile(path, destination)
            else:
                destination.write_bytes(data.to_pybytes())
        except FileNotFoundError:
            compacted = path.with_suffix(PARQUET_SUFFIX)
            if not compacted.is_file():
                continue  # deleted past its retention (`fraudflow prune`) while this ran
            shutil.copyfile(compacted, target / compacted.name)
            destination = target / compacted.name
        copied.append(destination)
    return copied
