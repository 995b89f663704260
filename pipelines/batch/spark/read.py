"""Raw transactions into a Spark DataFrame, checked as `pipelines.data.load_transactions` checks
them: the same files (sorted by name; `.`/`_` files skipped), the same `data.columns` mapping,
the same problems reported together in one DataValidationError, and the same tie order.

Files are checked on the driver first (a Parquet footer, a CSV header): an unreadable file or a
missing column is reported before any Spark job runs. The values are then checked in one pass:
missing ids, unparsable dates, non-numeric or negative amounts, labels other than 0/1, and
duplicated transaction ids. `input_order` keeps the local path's order for transactions at the
same time: file name order, then row order in the file.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.data import DataValidationError, _file_kind, _list_files, _resolve_mapping
from pipelines.settings import LABEL_COLUMN, RAW_COLUMNS

ID_COLUMNS = ("transaction_id", "customer_id", "terminal_id")
MAX_EXAMPLES = 3
_READ_ERRORS = (ValueError, OSError, EOFError, gzip.BadGzipFile, zlib.error, pa.ArrowException)


def _describe(col: str, mapping: Mapping[str, str]) -> str:
    file_col = mapping.get(col, col)
    return f"{col!r}" if file_col == col else f"{col!r} (file column {file_col!r})"


def _file_columns(path: Path) -> dict[str, pa.DataType | None]:
    """Column names of a file with their Arrow types (Parquet) or None (CSV: all text)."""
    if _file_kind(path) == "parquet":
        schema = pq.read_schema(path)
        return {name: schema.field(name).type for name in schema.names}
    compression = "gzip" if path.name.lower().endswith(".gz") else None
    return {str(c): None for c in pd.read_csv(path, nrows=0, compression=compression).columns}


def _nanosecond_times(columns: Mapping[str, Mapping[str, pa.DataType | None]], name: str) -> bool:
    """Whether the Parquet files store the time column as nanosecond timestamps (pandas' unit),
    which Spark reads as longs (spark.sql.legacy.parquet.nanosAsLong)."""
    kinds = {
        t.unit for cols in columns.values() if isinstance(t := cols.get(name), pa.TimestampType)
    }
    return "ns" in kinds


def check_files(path: Path, mapping: Mapping[str, str]) -> tuple[list[Path], bool, bool]:
    """The input files in read order, whether they hold labels and whether their times are
    nanosecond timestamps, or DataValidationError naming every unreadable file and every column
    missing from some file."""
    files = _list_files(path)
    problems: list[str] = []
    columns: dict[str, dict[str, pa.DataType | None]] = {}
    for file in files:
        try:
            columns[file.name] = _file_columns(file)
        except _READ_ERRORS as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            problems.append(f"{file.name}: could not be read ({type(exc).__name__}: {first})")
    for ours in RAW_COLUMNS + (LABEL_COLUMN,):
        lacking = [name for name, cols in columns.items() if mapping[ours] not in cols]
        if not lacking or (ours == LABEL_COLUMN and len(lacking) == len(columns)):
            continue
        if len(lacking) == len(columns):
            problems.append(f"missing required column {_describe(ours, mapping)}")
        else:
            shown = ", ".join(lacking[:MAX_EXAMPLES]) + (", ..." if len(lacking) > 3 else "")
            problems.append(
                f"column {_describe(ours, mapping)} is missing from {len(lacking)} of "
                f"{len(columns)} files ({shown}); all files must have the same columns"
            )
    if problems:
        if any("missing" in p for p in problems):
            seen = sorted(set().union(*columns.values()))[:20]
            problems.append(
                f"the files have columns {seen}; map our names to them with `columns` "
                "(data.columns in the configuration)"
            )
        raise DataValidationError(problems, source=str(path))
    has_label = bool(columns) and all(mapping[LABEL_COLUMN] in c for c in columns.values())
    return files, has_label, _nanosecond_times(columns, mapping["tx_datetime"])


def check_input(path: str | Path, columns: Mapping[str, str] | None = None) -> None:
    """DataValidationError (or FileNotFoundError) for input that no Spark job could read: the
    files and their columns are checked on this machine, without Spark."""
    check_files(Path(path), _resolve_mapping(columns))


def _read_kind(
    spark: SparkSession, kind: str, files: list[Path], names: list[str], as_text: bool
) -> DataFrame:
    paths = [str(p) for p in files]
    if kind == "parquet":
        frame = spark.read.parquet(*paths)
    else:  # every column as text, parsed and checked below (ids keep leading zeros)
        frame = spark.read.csv(paths, header=True, inferSchema=False, enforceSchema=False)
    values = [F.col(f"`{n}`") for n in names]
    return frame.select(
        *[v.cast("string").alias(n) if as_text else v for v, n in zip(values, names)],
        F.col("_metadata.file_name").alias("_file"),
        F.monotonically_increasing_id().alias("input_row"),
    )


def _blank(column: Column, data_type: T.DataType) -> Column:
    if isinstance(data_type, T.StringType):
        return column.isNull() | (F.trim(column) == "")
    return column.isNull()


def _id_text(column: Column, data_type: T.DataType) -> Column:
    if isinstance(data_type, (T.FloatType, T.DoubleType, T.DecimalType)):
        integral = column == F.floor(column)
        return F.when(integral, column.cast("long").cast("string")).otherwise(column.cast("string"))
    return F.when(_blank(column, data_type), F.lit(None)).otherwise(column.cast("string"))


def _timestamp(name: str, data_type: T.DataType, nanos: bool) -> Column:
    column = F.col(f"`{name}`")
    if nanos and isinstance(data_type, T.LongType):  # nanoseconds since the epoch, UTC
        return F.expr(f"timestamp_micros(`{name}` div 1000)")  # exact integer division
    if isinstance(data_type, (T.TimestampType, T.TimestampNTZType, T.DateType)):
        return column.cast("timestamp")
    if isinstance(data_type, T.StringType):
        return F.to_timestamp(F.trim(column))
    return F.lit(None).cast("timestamp")  # numbers are not dates (as in the local path)


def read_transactions(
    spark: SparkSession, path: str | Path, columns: Mapping[str, str] | None = None
) -> tuple[DataFrame, bool]:
    """The checked transactions with our column names and types (ids as text, tx_datetime a UTC
    timestamp, tx_amount and tx_fraud doubles), the tie order `input_file`, `input_row`, and
    whether the input holds labels."""
    path = Path(path)
    mapping = _resolve_mapping(columns)
    files, has_label, nanos = check_files(path, mapping)
    ours = list(RAW_COLUMNS) + ([LABEL_COLUMN] if has_label else [])
    names = [mapping[c] for c in ours]
    kinds = sorted({_file_kind(f) for f in files})
    parts = [
        _read_kind(spark, k, [f for f in files if _file_kind(f) == k], names, len(kinds) > 1)
        for k in kinds
    ]
    raw = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
    types = {n: raw.schema[n].dataType for n in names}
    order = spark.createDataFrame(
        [(f.name, i) for i, f in enumerate(files)], "_file string, input_file long"
    )
    raw = raw.join(F.broadcast(order), "_file")

    def source(ours_name: str) -> Column:
        return F.col(f"`{mapping[ours_name]}`")

    frame = raw.select(
        *[_id_text(source(c), types[mapping[c]]).alias(c) for c in ID_COLUMNS],
        _timestamp(mapping["tx_datetime"], types[mapping["tx_datetime"]], nanos).alias(
            "tx_datetime"
        ),
        source("tx_amount").cast("double").alias("tx_amount"),
        *([source(LABEL_COLUMN).cast("double").alias(LABEL_COLUMN)] if has_label else []),
        *[source(c).alias(f"_raw_{c}") for c in ours],
        "_file",
        "input_file",
        "input_row",
    )
    _check_values(frame, ours, mapping, {c: types[mapping[c]] for c in ours}, str(path))
    return frame.select(*ours, "input_file", "input_row"), has_label


def _problem_checks(
    ours: list[str], types: Mapping[str, T.DataType]
) -> list[tuple[str, Column, str]]:
    """(our column, condition of a bad row, what is wrong) for every check of the values."""
    checks = []
    for col in ID_COLUMNS:
        checks.append((col, F.col(col).isNull(), "missing or empty values"))
    raw_time = F.col("_raw_tx_datetime")
    missing_time = _blank(raw_time, types["tx_datetime"])
    checks.append(("tx_datetime", missing_time, "missing or empty values"))
    checks.append(
        (
            "tx_datetime",
            ~missing_time & F.col("tx_datetime").isNull(),
            "unparsable dates (expected ISO-8601 text or timestamps in the supported range)",
        )
    )
    amount = F.col("tx_amount")
    missing_amount = _blank(F.col("_raw_tx_amount"), types["tx_amount"]) | (
        F.lit(not isinstance(types["tx_amount"], T.StringType)) & F.isnan(amount)
    )
    checks.append(("tx_amount", missing_amount, "missing or empty values"))
    checks.append(
        ("tx_amount", ~missing_amount & (amount.isNull() | F.isnan(amount)), "non-numeric amounts")
    )
    checks.append(("tx_amount", amount < 0, "negative amounts"))
    infinite = amount.isin(float("inf"), float("-inf"))
    checks.append(("tx_amount", infinite, "non-finite amounts (inf)"))
    if LABEL_COLUMN in ours:
        label = F.col(LABEL_COLUMN)
        checks.append(
            (
                LABEL_COLUMN,
                label.isNull() | ~label.isin(0.0, 1.0),
                "labels other than 0/1 (missing labels count too)",
            )
        )
    return [(c, F.coalesce(cond, F.lit(False)), what) for c, cond, what in checks]


def _check_values(
    frame: DataFrame,
    ours: list[str],
    mapping: Mapping[str, str],
    types: Mapping[str, T.DataType],
    source: str,
) -> None:
    """Every problem of the values at once (one pass, then a few examples of each)."""
    checks = _problem_checks(ours, types)
    counts = frame.agg(
        *[F.sum(cond.cast("long")).alias(f"c{i}") for i, (_, cond, _) in enumerate(checks)],
        F.count(F.lit(1)).alias("rows"),
        F.countDistinct("transaction_id").alias("ids"),
        F.count("transaction_id").alias("present_ids"),
    ).first()
    problems = []
    for i, (col, cond, what) in enumerate(checks):
        count = int(counts[f"c{i}"] or 0)
        if count:
            rows = frame.filter(cond).select("_file", f"_raw_{col}").limit(MAX_EXAMPLES).collect()
            examples = ", ".join(f"{r[0]}: {_show(r[1])}" for r in rows)
            problems.append(
                f"{_describe(col, mapping)}: {count} row{'s' if count != 1 else ''} "
                f"with {what}, e.g. {examples}"
            )
    if counts["ids"] != counts["present_ids"]:
        problems.append(_duplicates(frame, mapping))
    if problems:
        raise DataValidationError(problems, source=source)


def _duplicates(frame: DataFrame, mapping: Mapping[str, str]) -> str:
    repeated = (
        frame.filter(F.col("transaction_id").isNotNull())
        .groupBy("transaction_id")
        .agg(F.count(F.lit(1)).alias("n"), F.sort_array(F.collect_set("_file")).alias("files"))
        .filter(F.col("n") > 1)
    )
    summary = repeated.agg(F.count(F.lit(1)).alias("ids"), F.sum("n").alias("rows")).first()
    examples = "; ".join(
        f"{r['transaction_id']!r} ({', '.join(r['files'][:MAX_EXAMPLES])})"
        for r in repeated.limit(MAX_EXAMPLES).collect()
    )
    ids, rows = int(summary["ids"]), int(summary["rows"])
    return (
        f"{_describe('transaction_id', mapping)}: {rows} rows share {ids} duplicated "
        f"id{'s' if ids != 1 else ''}, e.g. {examples}"
    )


def _show(value: object) -> str:
    if value is None:
        return "<missing>"
    text = repr(value) if isinstance(value, (str, int, float)) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."
