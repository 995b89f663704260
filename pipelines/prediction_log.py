"""The prediction log: one record per scored transaction, its writer and its reader.

The one owner of the format: the API builds records with `record` and appends them with
`PredictionLogWriter`; monitoring, retraining, tests and benchmarks read them with
`read_predictions`. JSON lines, one file per worker process and UTC day. One `os.write` on an
O_APPEND descriptor per request: the kernel holds the record as soon as the call returns, so a
killed worker loses nothing it acknowledged, and the request path never waits for a disk flush.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json

from pipelines.settings import Settings

FEATURE_PREFIX = "features."
FILE_PREFIX = "predictions-"
FILE_SUFFIX = ".jsonl"


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


def log_file(folder: Path, day: str, writer: str) -> Path:
    """The file of one writer (a worker process) and UTC day."""
    return Path(folder) / f"{FILE_PREFIX}{day}-{writer}{FILE_SUFFIX}"


class PredictionLogWriter:
    """Appends records to this process's file of the current UTC day."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._day: str | None = None
        self._fd: int | None = None

    def _descriptor(self, day: str) -> int:
        if self._day != day or self._fd is None:
            if self._fd is not None:
                os.close(self._fd)
            path = log_file(self.folder, day, str(os.getpid()))
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._day = day
        return self._fd

    def write(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        payload = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        os.write(self._descriptor(day), payload.encode())

    def close(self) -> None:
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
    """Every worker's log file of the window's days (all days without a window)."""
    if window is None:
        return sorted(Path(folder).glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"))
    files: list[Path] = []
    for day in window.days():
        files += sorted(Path(folder).glob(f"{FILE_PREFIX}{day}-*{FILE_SUFFIX}"))
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


def log_schema(features: Sequence[str]) -> pa.Schema:
    fields = [pa.field(name, kind) for name, kind in LOG_FIELDS]
    if features:
        fields.append(pa.field("features", pa.struct([(f, pa.float64()) for f in features])))
    return pa.schema(fields)


def _read_file(path: Path, schema: pa.Schema | None) -> pa.Table:
    options = None
    if schema is not None:
        options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        return pa_json.read_json(path, parse_options=options)
    except pa.ArrowInvalid as exc:
        raise MonitoringInputError(f"prediction log {path} is not valid JSON lines: {exc}") from exc


def read_predictions(
    folder: Path, window: Window | None = None, features: Sequence[str] | None = None
) -> pd.DataFrame:
    """Logged predictions of the window, one row per transaction (a re-sent transaction keeps
    its first scoring), features as plain columns. Empty when nothing was logged.

    `features`: the feature names to read (none: only the raw fields and the score); by
    default every field of the records, as found.
    """
    schema = None if features is None else log_schema(features)
    tables = [_read_file(f, schema) for f in log_files(folder, window) if f.stat().st_size]
    if not tables:
        return pd.DataFrame()
    table = pa.concat_tables(tables, promote_options="permissive")
    frame = table.flatten().to_pandas()
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
