"""Production data: the prediction log of a time window, with the late labels that have arrived.

The log is the serving API's (serving/prediction_log.py): JSON lines, one file per worker and
UTC day, one record per scored transaction with its raw fields, features and probability.
Labels come from the online state (what /feedback received) and from labelled files.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json

FEATURE_PREFIX = "features."
RAW = ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount")


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
        return sorted(Path(folder).glob("predictions-*.jsonl"))
    files: list[Path] = []
    for day in window.days():
        files += sorted(Path(folder).glob(f"predictions-{day}-*.jsonl"))
    return files


# The fields every record has (serving/prediction_log.py); parsing against a known schema is
# about twice as fast as letting Arrow infer one, and skips the fields monitoring never reads.
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


def labels_from_state(state_path: Path) -> pd.DataFrame:
    """Labels received on /feedback, read from the online state without writing to it."""
    columns = ["transaction_id", "tx_fraud"]
    if not Path(state_path).is_file():
        return pd.DataFrame(columns=columns)
    uri = f"{Path(state_path).resolve().as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as connection:
        rows = connection.execute("SELECT transaction_id, label FROM labels").fetchall()
    return pd.DataFrame(rows, columns=columns).astype({"transaction_id": str, "tx_fraud": int})


def labels_from_file(path: Path, columns: dict[str, str]) -> pd.DataFrame:
    """Labels from a CSV or Parquet file (or a folder of them) with a transaction id and a label
    column (named through the config's column mapping)."""
    path = Path(path)
    files = sorted(path.glob("*.parquet")) + sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise MonitoringInputError(f"label file not found: {path}")
    id_column = columns.get("transaction_id", "transaction_id")
    label_column = columns.get("tx_fraud", "tx_fraud")
    frames = []
    for file in files:
        data = pd.read_parquet(file) if file.suffix == ".parquet" else pd.read_csv(file)
        missing = [c for c in (id_column, label_column) if c not in data]
        if missing:
            raise MonitoringInputError(f"label file {file} has no column {missing}")
        labels = pd.to_numeric(data[label_column], errors="coerce")
        bad = ~labels.isin([0, 1])
        if bad.any():
            raise MonitoringInputError(
                f"label file {file}: column {label_column!r} must be 0 or 1; "
                f"{int(bad.sum())} rows are not"
            )
        frames.append(
            pd.DataFrame(
                {"transaction_id": data[id_column].astype(str), "tx_fraud": labels.astype(int)}
            )
        )
    return pd.concat(frames, ignore_index=True)


def attach_labels(predictions: pd.DataFrame, sources: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """`tx_fraud` joined by transaction id (NaN where no label has arrived); a later source
    overrides an earlier one (a corrected label)."""
    if not sources or all(s.empty for s in sources):
        return predictions.assign(tx_fraud=float("nan"))
    labels = pd.concat(sources, ignore_index=True).drop_duplicates("transaction_id", keep="last")
    mapping = labels.set_index("transaction_id")["tx_fraud"]
    return predictions.assign(tx_fraud=predictions["transaction_id"].map(mapping).astype(float))
