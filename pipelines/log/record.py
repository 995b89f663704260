"""The prediction-log record and the names of the log's files: one record per scored
transaction, JSON lines, one file per writer (host and process) and UTC day; its Parquet
compaction keeps the name with another suffix."""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.settings import Settings

FEATURE_PREFIX = "features."


FILE_PREFIX = "predictions-"


FILE_SUFFIX = ".jsonl"


PARQUET_SUFFIX = ".parquet"


# records hold card and terminal ids: owner and group (the monitor job) only
FILE_MODE = 0o640


ROLES = ("champion", "challenger")


@dataclass(frozen=True)
class RoleScore:
    """What one model (a role: champion or challenger) said of a transaction; probability and
    decision are None when it failed to score it."""

    version: str
    probability: float | None
    decision: str | None


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
    model_role: str | None = None,
    champion: RoleScore | None = None,
    challenger: RoleScore | None = None,
) -> dict[str, Any]:
    """One scored transaction as logged: its raw fields, its features (NaN logged as null),
    the score and decision, and the model that gave them (the answer). With a challenger
    served, also the role that answered (`model_role`) and both models' versions,
    probabilities and decisions (`champion_*`, `challenger_*`)."""
    logged = {
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
    if challenger is not None and champion is not None:
        logged["model_role"] = model_role
        for role, score in (("champion", champion), ("challenger", challenger)):
            logged[f"{role}_version"] = score.version
            logged[f"{role}_probability"] = score.probability
            logged[f"{role}_decision"] = score.decision
    return logged


def log_folder(settings: Settings) -> Path:
    """Where the API writes its prediction log and monitoring reads it."""
    return settings.under_workdir(settings.prediction_log.dir)


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


# a record's fields while a challenger is served (null in the records of other times)
ROLE_FIELDS = (
    ("model_role", pa.string()),
    ("champion_version", pa.string()),
    ("champion_probability", pa.float64()),
    ("champion_decision", pa.string()),
    ("challenger_version", pa.string()),
    ("challenger_probability", pa.float64()),
    ("challenger_decision", pa.string()),
)


def log_schema(features: Sequence[str], roles: bool = False) -> pa.Schema:
    """The fields a reader asks for: the known ones, the named features and, with `roles`,
    the champion's and challenger's fields."""
    known = LOG_FIELDS + ROLE_FIELDS if roles else LOG_FIELDS
    fields = [pa.field(name, kind) for name, kind in known]
    if features:
        fields.append(pa.field("features", pa.struct([(f, pa.float64()) for f in features])))
    return pa.schema(fields)
