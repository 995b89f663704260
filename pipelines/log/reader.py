"""The prediction log's reader: every writer's files of a time range, JSON lines and their
Parquet compaction alike, as one frame with one row per transaction. A torn last line (a
record its writer never finished, so never acknowledged) is skipped and counted."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from pipelines.log.record import (
    FEATURE_PREFIX,
    FILE_PREFIX,
    FILE_SUFFIX,
    LOG_FIELDS,
    OTHER_FIELDS,
    PARQUET_SUFFIX,
    ROLE_FIELDS,
    log_schema,
)

log = logging.getLogger("fraudflow.prediction_log")


class MonitoringInputError(ValueError):
    """Unreadable or inconsistent monitoring input (log, labels, window), named precisely."""


def log_days(since: datetime, until: datetime) -> list[str]:
    """The UTC days (YYYY-MM-DD) the half-open range [since, until) touches."""
    first, last = since.date(), (until - timedelta(microseconds=1)).date()
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def log_files(
    folder: Path, since: datetime | None = None, until: datetime | None = None
) -> list[Path]:
    """Every writer's log file of the days [since, until) touches (all days without a range):
    JSON lines, or their Parquet compaction (a JSON file whose Parquet copy exists is left
    out)."""
    if since is not None and until is not None:
        patterns = [f"{FILE_PREFIX}{day}-*" for day in log_days(since, until)]
    else:
        patterns = [f"{FILE_PREFIX}*"]
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


def _normalised(table: pa.Table) -> pa.Table:
    """Every known field in its type and every feature as a float (an all-null or all-integer
    column is inferred otherwise), so that the days' files share one schema."""
    kinds = dict(LOG_FIELDS + OTHER_FIELDS + ROLE_FIELDS)
    columns = []
    for name, column in zip(table.column_names, table.columns):
        kind = pa.float64() if name.startswith(FEATURE_PREFIX) else kinds.get(name)
        columns.append(column.cast(kind) if kind is not None else column)
    return pa.table(columns, names=table.column_names)


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
        known = pa.schema([pa.field(n, k) for n, k in LOG_FIELDS + OTHER_FIELDS + ROLE_FIELDS])
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
    folder: Path,
    since: datetime | None = None,
    until: datetime | None = None,
    features: Sequence[str] | None = None,
    roles: bool = False,
) -> LogRead:
    """Logged predictions of [since, until) by logging time (all without a range), one row
    per transaction (a re-sent transaction keeps its first scoring), features as plain
    columns; empty when nothing was logged. JSON lines and their Parquet compaction alike. A
    torn last line of a file is skipped and counted; a torn line anywhere else is an error
    naming the file.

    `features`: the feature names to read (none: only the raw fields and the score); by
    default every field of the records, as found. `roles`: with named features, also the
    champion's and challenger's fields (null in records written without a challenger).
    """
    schema = None if features is None else log_schema(features, roles)
    tables, torn = [], []
    for path in log_files(folder, since, until):
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
    return LogRead(_frame(table.to_pandas(), since, until), tuple(torn))


def _frame(frame: pd.DataFrame, since: datetime | None, until: datetime | None) -> pd.DataFrame:
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
    if since is not None:
        frame = frame.loc[(frame["logged_at"] >= since).to_numpy()]
    if until is not None:
        frame = frame.loc[(frame["logged_at"] < until).to_numpy()]
    frame["tx_datetime"] = pd.to_datetime(frame["tx_datetime"], format="ISO8601")
    for column in ("transaction_id", "customer_id", "terminal_id", "model_version"):
        frame[column] = frame[column].astype(str)
    frame = frame.sort_values("logged_at", kind="stable")
    return frame.drop_duplicates("transaction_id", keep="first").reset_index(drop=True)


def read_predictions(
    folder: Path,
    since: datetime | None = None,
    until: datetime | None = None,
    features: Sequence[str] | None = None,
    roles: bool = False,
) -> pd.DataFrame:
    """`read_log`'s predictions (see there)."""
    return read_log(folder, since, until, features, roles).predictions
