"""Reading, validating and writing raw transactions.

Every other module relies on one guarantee: a frame returned from here has exactly our columns
with fixed dtypes, holds every input row, and nothing in it was guessed. Bad input is never
dropped or coerced away: all problems are collected and raised together in one
DataValidationError, so a user fixes a file in one pass instead of one error at a time.
"""

from __future__ import annotations

import datetime as dt
import gzip
import itertools
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pandas.api import types as ptypes

from pipelines.files import replacing
from pipelines.settings import LABEL_COLUMN, RAW_COLUMNS

ID_COLUMNS = ("transaction_id", "customer_id", "terminal_id")
SUPPORTED_SUFFIXES = (".csv", ".csv.gz", ".parquet")
MAX_EXAMPLES = 3
_NS_MIN = np.datetime64(pd.Timestamp.min.value, "ns")
_NS_MAX = np.datetime64(pd.Timestamp.max.value, "ns")
# Element types accepted in an object tx_datetime column; anything else (e.g. numbers, which
# pandas would silently read as nanoseconds since 1970) is reported as unparsable.
_DATE_LIKE = (str, dt.datetime, dt.date, np.datetime64)
_READ_ERRORS = (ValueError, EOFError, gzip.BadGzipFile, zlib.error)


class DataValidationError(ValueError):
    """Raised with every problem found in the input, so they can all be fixed at once."""

    def __init__(self, problems: Sequence[str], source: str = "") -> None:
        self.problems: list[str] = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        count = len(self.problems)
        header = f"{count} data problem{'s' if count != 1 else ''}{where}:"
        super().__init__("\n".join([header] + [f"  - {p}" for p in self.problems]))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems, self.source))


# ----------------------------------------------------------------------------- public API


def load_transactions(
    path: str | Path,
    columns: Mapping[str, str] | None = None,
    require_labels: bool = False,
) -> pd.DataFrame:
    """Read a .csv/.csv.gz/.parquet file or a folder of them into a validated, normalized frame.

    `columns` maps our column names to the file's (unmapped names are taken as-is). Folder files
    are read in sorted filename order and concatenated; files starting with "." or "_" are
    skipped (e.g. _SUCCESS), any other unsupported file is an error rather than silently ignored.
    """
    path = Path(path)
    mapping = _resolve_mapping(columns)
    files = _list_files(path)
    in_folder = path.is_dir()
    wanted = {file_col: ours for ours, file_col in mapping.items()}

    problems: list[str] = []
    parts: dict[str, pa.Table | pd.DataFrame] = {}
    file_columns: set[str] = set()
    for file in files:
        try:
            parts[file.name] = _read_file(file, wanted, file_columns)
        except _READ_ERRORS as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0]
            problems.append(f"{file.name}: could not be read ({type(exc).__name__}: {first_line})")
    if in_folder and len(parts) > 1:
        problems.extend(_partial_column_problems(parts, mapping))

    frame = _combine(parts, in_folder, list(wanted))
    frame.columns = [wanted[c] for c in frame.columns]  # to our names, without copying data

    try:
        result = validate_transactions(frame, require_labels, source=str(path), columns=mapping)
    except DataValidationError as exc:
        problems += exc.problems
        if any(mapping[c] not in file_columns for c in RAW_COLUMNS) and file_columns:
            shown = sorted(file_columns)[:20]
            problems.append(
                f"the files have columns {shown}; map our names to them with `columns` "
                "(data.columns in the configuration)"
            )
        raise DataValidationError(problems, source=str(path)) from None
    if problems:
        raise DataValidationError(problems, source=str(path))
    return result


def validate_transactions(
    frame: pd.DataFrame,
    require_labels: bool = False,
    source: str = "",
    columns: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Check an already-renamed frame and return it normalized, or raise DataValidationError.

    The result holds only our columns (the label when present) with fixed dtypes: ids as Python
    str, tx_datetime naive datetime64[ns] (UTC when the input had a time zone), tx_amount
    float64, tx_fraud int8; rows stably sorted by tx_datetime, index reset. `columns` is only
    used to name the file's columns in messages. Problem examples name rows by `frame.index`.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    names = _resolve_mapping(columns)
    index = frame.index
    problems: list[str] = []

    duplicated_names = sorted(
        {str(c) for c in frame.columns[frame.columns.duplicated()]}
        & (set(RAW_COLUMNS) | {LABEL_COLUMN})
    )
    for col in duplicated_names:
        problems.append(f"column {_describe(col, names)} appears more than once")

    for col in RAW_COLUMNS:
        if col not in frame.columns:
            problems.append(f"missing required column {_describe(col, names)}")
    has_label = LABEL_COLUMN in frame.columns
    if require_labels and not has_label:
        problems.append(
            f"missing label column {_describe(LABEL_COLUMN, names)}: labels are required here"
        )
    if duplicated_names:
        raise DataValidationError(problems, source)

    out: dict[str, Any] = {}
    for col in ID_COLUMNS:
        if col not in frame.columns:
            continue
        ids, missing = _normalize_ids(frame[col])
        _report_missing(problems, col, names, index, missing)
        out[col] = ids
        if col == "transaction_id":
            _report_duplicates(problems, col, names, index, frame[col], ids, missing)

    if "tx_datetime" in frame.columns:
        raw = frame["tx_datetime"]
        stamps, missing, bad = _normalize_datetimes(raw)
        _report_missing(problems, "tx_datetime", names, index, missing)
        _report(
            problems, "tx_datetime", names, index, bad, raw,
            "unparsable dates (expected ISO-8601 text or timestamps in the supported range)",
        )  # fmt: skip
        out["tx_datetime"] = stamps

    if "tx_amount" in frame.columns:
        raw = frame["tx_amount"]
        amounts, missing, non_numeric = _normalize_amounts(raw)
        _report_missing(problems, "tx_amount", names, index, missing)
        _report(problems, "tx_amount", names, index, non_numeric, raw, "non-numeric amounts")
        with np.errstate(invalid="ignore"):
            negative = np.isfinite(amounts) & (amounts < 0)
        _report(problems, "tx_amount", names, index, negative, raw, "negative amounts")
        _report(
            problems, "tx_amount", names, index, np.isinf(amounts), raw,
            "non-finite amounts (inf)",
        )  # fmt: skip
        out["tx_amount"] = amounts

    if has_label:
        raw = frame[LABEL_COLUMN]
        labels, bad = _normalize_labels(raw)
        _report(
            problems, LABEL_COLUMN, names, index, bad, raw,
            "labels other than 0/1 (missing labels count too)",
        )  # fmt: skip
        out[LABEL_COLUMN] = labels

    if problems:
        raise DataValidationError(problems, source)
    return _assemble(out, has_label)


def write_transactions(frame: pd.DataFrame, path: Path) -> None:
    """Write a frame as .csv, .csv.gz or .parquet by extension, atomically.

    Readers never see a half-written file (`pipelines.files.replacing`).
    """
    path = Path(path)
    kind = _file_kind(path)
    if kind is None:
        raise ValueError(
            f"cannot write {path}: unsupported extension (expected {', '.join(SUPPORTED_SUFFIXES)})"
        )
    with replacing(path) as handle:
        if kind == "parquet":
            frame.to_parquet(handle, index=False)
        else:
            compression = "gzip" if path.name.lower().endswith(".gz") else None
            frame.to_csv(handle, index=False, compression=compression)


# ----------------------------------------------------------------------------- files


def _resolve_mapping(columns: Mapping[str, str] | None) -> dict[str, str]:
    """Our name -> file name for every column we read; unmapped names map to themselves."""
    ours = RAW_COLUMNS + (LABEL_COLUMN,)
    given = dict(columns or {})
    unknown = sorted(str(k) for k in set(given) - set(ours))
    if unknown:
        raise ValueError(f"unknown column keys {unknown}; expected some of {list(ours)}")
    bad_values = sorted(k for k, v in given.items() if not isinstance(v, str) or not v)
    if bad_values:
        raise ValueError(f"column mapping values must be non-empty strings: {bad_values}")
    mapping = {col: given.get(col, col) for col in ours}
    seen: dict[str, str] = {}
    for col, file_col in mapping.items():
        if file_col in seen:
            raise ValueError(
                f"columns {seen[file_col]!r} and {col!r} both map to file column {file_col!r}"
            )
        seen[file_col] = col
    return mapping


def _file_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        return "csv"
    if name.endswith(".parquet"):
        return "parquet"
    return None


def _list_files(path: Path) -> list[Path]:
    if not path.exists():
        raise FileNotFoundError(f"transactions path does not exist: {path}")
    expected = ", ".join(SUPPORTED_SUFFIXES)
    if not path.is_dir():
        if _file_kind(path) is None:
            raise DataValidationError(
                [f"unsupported file type {path.name!r} (expected {expected})"], str(path)
            )
        return [path]
    entries = sorted(
        (p for p in path.iterdir() if not p.name.startswith((".", "_"))), key=lambda p: p.name
    )
    files = [p for p in entries if p.is_file() and _file_kind(p) is not None]
    unsupported = [p.name for p in entries if p.is_file() and _file_kind(p) is None]
    if unsupported:
        raise DataValidationError(
            [f"folder holds unsupported files {unsupported} (expected {expected}); move them out"],
            str(path),
        )
    if not files:
        raise DataValidationError(
            [f"folder {path} holds no {expected} files (subfolders are not read)"], str(path)
        )
    return files


def _read_file(path: Path, wanted: Mapping[str, str], seen: set[str]) -> pa.Table | pd.DataFrame:
    """Read only the mapped columns of one file, keeping the file's column names.

    Every column name in the file is added to `seen`, to suggest a mapping when names differ.
    Parquet stays an Arrow table so that a folder of same-schema files is converted to pandas
    in one multi-threaded step (much faster than one conversion per daily file).
    """
    if _file_kind(path) == "parquet":
        names = pq.read_schema(path).names
        seen.update(names)
        present = [name for name in names if name in wanted]
        return pq.read_table(path, columns=present)
    id_names = {file_col for file_col, ours in wanted.items() if ours in ID_COLUMNS}

    # ids as text so leading zeros survive; everything else is parsed and checked later.
    def keep(name: str) -> bool:
        seen.add(name)
        return name in wanted

    compression = "gzip" if path.name.lower().endswith(".gz") else None
    return pd.read_csv(
        path,
        usecols=keep,
        dtype={c: str for c in id_names},
        compression=compression,
        low_memory=False,
    )


def _column_names(part: pa.Table | pd.DataFrame) -> list[str]:
    return list(part.column_names if isinstance(part, pa.Table) else part.columns)


def _to_pandas(part: pa.Table | pd.DataFrame) -> pd.DataFrame:
    if isinstance(part, pd.DataFrame):
        return part
    # deduplicate_objects hashes every string: slow for unique transaction ids.
    return part.to_pandas(deduplicate_objects=False)


def _combine(
    parts: Mapping[str, pa.Table | pd.DataFrame], in_folder: bool, names: Sequence[str]
) -> pd.DataFrame:
    """Concatenate files in order; for a folder, index rows by (file name, row in file)."""
    tables = list(parts.values())
    if not tables:
        return pd.DataFrame(columns=list(names))
    if len(tables) == 1:
        frame = _to_pandas(tables[0])
    elif all(isinstance(t, pa.Table) for t in tables) and all(
        t.schema.equals(tables[0].schema) for t in tables
    ):
        frame = _to_pandas(pa.concat_tables(tables))
    else:
        frame = pd.concat([_to_pandas(t) for t in tables], ignore_index=True)
    if in_folder:
        lengths = np.array([len(t) for t in tables], dtype=np.int64)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        frame.index = pd.MultiIndex(
            levels=[list(parts), np.arange(lengths.max(initial=0))],
            codes=[np.repeat(np.arange(len(tables)), lengths), np.arange(len(frame)) - starts],
            names=["file", "row"],
            verify_integrity=False,
        )
    return frame


def _partial_column_problems(
    parts: Mapping[str, pa.Table | pd.DataFrame], mapping: Mapping[str, str]
) -> list[str]:
    """Name the files lacking a column that other files have (concat would fill it with NaN)."""
    problems = []
    present = {name: set(_column_names(part)) for name, part in parts.items()}
    for ours, file_col in mapping.items():
        lacking = [name for name, cols in present.items() if file_col not in cols]
        if lacking and len(lacking) < len(parts):
            shown = ", ".join(lacking[:MAX_EXAMPLES]) + (", ..." if len(lacking) > 3 else "")
            problems.append(
                f"column {_describe(ours, mapping)} is missing from {len(lacking)} of "
                f"{len(parts)} files ({shown}); all files must have the same columns"
            )
    return problems


# ----------------------------------------------------------------------------- normalization


def _plain(col: pd.Series) -> pd.Series:
    """Turn pyarrow-backed and categorical columns into the dtypes the checks below expect."""
    if isinstance(col.dtype, pd.ArrowDtype):
        return pa.array(col.array).to_pandas()
    if isinstance(col.dtype, pd.CategoricalDtype):
        return pd.Series(np.asarray(col))
    return col


def _blank_strings(values: np.ndarray) -> np.ndarray:
    """Mask of elements that are empty or whitespace-only strings."""
    if ptypes.infer_dtype(values, skipna=True) == "string":
        try:
            arr = pa.array(values, type=pa.string(), from_pandas=True)
            mask = pc.or_(pc.equal(pc.utf8_length(arr), 0), pc.utf8_is_space(arr))
            return mask.fill_null(False).to_numpy(zero_copy_only=False)
        except (pa.ArrowException, UnicodeEncodeError):
            pass
    return np.fromiter(
        (isinstance(v, str) and not v.strip() for v in values), dtype=bool, count=len(values)
    )


def _int_strings(values: np.ndarray) -> np.ndarray:
    """Integers as decimal text; converts each distinct value once (ids repeat a lot)."""
    codes, uniques = pd.factorize(values)
    texts = pa.array(uniques).cast(pa.string()).to_numpy(zero_copy_only=False)
    return texts.take(codes)


def _id_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _normalize_ids(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Ids as an object array of str (None where missing), plus the missing/empty mask."""
    col = _plain(col)
    missing = col.isna().to_numpy()
    out = np.full(len(col), None, dtype=object)
    present = ~missing
    if ptypes.is_integer_dtype(col.dtype) and not ptypes.is_bool_dtype(col.dtype):
        numpy_dtype = getattr(col.dtype, "numpy_dtype", col.dtype)
        out[present] = _int_strings(col[present].to_numpy(dtype=numpy_dtype))
    elif ptypes.is_float_dtype(col.dtype):
        values = col.to_numpy(dtype=np.float64)[present]
        with np.errstate(invalid="ignore"):
            integral = np.isfinite(values) & (np.floor(values) == values)
            integral &= np.abs(values) < 2.0**63
        texts = np.empty(len(values), dtype=object)
        texts[integral] = _int_strings(values[integral].astype(np.int64))
        texts[~integral] = [str(v) for v in values[~integral]]
        out[present] = texts
    else:
        values = col.to_numpy(dtype=object)
        if ptypes.infer_dtype(values, skipna=True) in ("string", "empty"):
            out[present] = values[present]
        else:
            out[present] = [_id_text(v) for v in values[present]]
        blank = _blank_strings(out)
        missing |= blank
        out[blank] = None
    return out, missing


def _normalize_datetimes(col: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Naive datetime64[ns] values (UTC for zoned input), missing mask, unparsable mask."""
    col = _plain(col)
    n = len(col)
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        col = col.dt.tz_convert("UTC").dt.tz_localize(None)
    if ptypes.is_datetime64_dtype(col.dtype):
        values = col.to_numpy()
        missing = np.isnat(values)
        bad = np.zeros(n, dtype=bool)
        if values.dtype != np.dtype("datetime64[ns]"):
            bad = ~missing & ((values < _NS_MIN) | (values > _NS_MAX))
            values = np.where(bad, np.datetime64("NaT"), values)
        return values.astype("datetime64[ns]"), missing, bad
    if ptypes.is_numeric_dtype(col.dtype):
        # Numbers are not dates: reading them as epoch nanoseconds would silently invent times.
        missing = col.isna().to_numpy()
        return np.full(n, np.datetime64("NaT", "ns")), missing, ~missing
    values = col.to_numpy(dtype=object)
    missing = col.isna().to_numpy() | _blank_strings(values)
    if ptypes.infer_dtype(values, skipna=True) in ("string", "empty"):
        wrong_type = np.zeros(n, dtype=bool)
    else:
        wrong_type = ~missing & ~np.fromiter(
            (isinstance(v, _DATE_LIKE) for v in values), dtype=bool, count=n
        )
    parseable = ~missing & ~wrong_type
    stamps = np.full(n, np.datetime64("NaT", "ns"))
    if parseable.any():
        parsed = pd.to_datetime(values[parseable], format="ISO8601", utc=True, errors="coerce")
        stamps[parseable] = parsed.tz_localize(None).as_unit("ns").to_numpy()
    bad = wrong_type | (parseable & np.isnat(stamps))
    return stamps, missing, bad


def _normalize_amounts(col: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 amounts (NaN where missing or unparsable), missing mask, non-numeric mask."""
    col = _plain(col)
    missing = col.isna().to_numpy()
    if ptypes.is_bool_dtype(col.dtype):
        return np.full(len(col), np.nan), missing, ~missing
    if ptypes.is_numeric_dtype(col.dtype):
        return col.to_numpy(dtype=np.float64, na_value=np.nan), missing, np.zeros_like(missing)
    values = col.to_numpy(dtype=object)
    missing |= _blank_strings(values)
    numbers = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    non_numeric = ~missing & np.isnan(numbers)
    if ptypes.infer_dtype(values, skipna=True) not in ("string", "floating", "integer", "decimal"):
        is_bool = np.fromiter(
            (isinstance(v, (bool, np.bool_)) for v in values), dtype=bool, count=len(values)
        )
        non_numeric |= is_bool
    numbers[missing | non_numeric] = np.nan
    return numbers, missing, non_numeric


def _normalize_labels(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """int8 labels and the mask of values that are not 0/1 (missing included)."""
    col = _plain(col)
    if ptypes.is_bool_dtype(col.dtype) and not col.isna().any():
        return col.to_numpy(dtype=np.int8), np.zeros(len(col), dtype=bool)
    if ptypes.is_numeric_dtype(col.dtype):
        numbers = col.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        numbers = pd.to_numeric(pd.Series(col.to_numpy(dtype=object)), errors="coerce")
        numbers = numbers.to_numpy(dtype=np.float64)
    bad = ~((numbers == 0) | (numbers == 1))
    return np.where(bad, 0, numbers).astype(np.int8), bad


def _assemble(out: Mapping[str, Any], has_label: bool) -> pd.DataFrame:
    order = list(RAW_COLUMNS) + ([LABEL_COLUMN] if has_label else [])
    dtypes = {"tx_datetime": "datetime64[ns]", "tx_amount": np.float64, LABEL_COLUMN: np.int8}
    arrays = {c: np.asarray(out[c], dtype=dtypes.get(c, object)) for c in order}
    stamps = arrays["tx_datetime"]
    if len(stamps) > 1 and not (stamps[1:] >= stamps[:-1]).all():
        positions = np.argsort(stamps, kind="mergesort")  # stable: ties keep input order
        arrays = {c: values[positions] for c, values in arrays.items()}
    # copy=False keeps one block per column instead of stacking same-dtype columns (a copy).
    return pd.DataFrame(arrays, columns=order, copy=False)


# ----------------------------------------------------------------------------- messages


def _describe(col: str, names: Mapping[str, str]) -> str:
    file_col = names.get(col, col)
    return f"{col!r}" if file_col == col else f"{col!r} (file column {file_col!r})"


def _rows(count: int) -> str:
    return f"{count} row{'s' if count != 1 else ''}"


def _row_label(label: Any) -> str:
    if isinstance(label, tuple) and len(label) == 2:
        return f"{label[0]} row {label[1]}"
    return f"row {label}"


def _show(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "<missing>"
    if isinstance(value, np.generic):
        value = value.item()
    text = repr(value) if isinstance(value, (str, int, float)) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _report_missing(
    problems: list[str], col: str, names: Mapping[str, str], index: pd.Index, mask: np.ndarray
) -> None:
    count = int(mask.sum())
    if count:
        rows = ", ".join(_row_label(index[i]) for i in np.flatnonzero(mask)[:MAX_EXAMPLES])
        problems.append(
            f"{_describe(col, names)}: {_rows(count)} with missing or empty values, e.g. {rows}"
        )


def _report(
    problems: list[str],
    col: str,
    names: Mapping[str, str],
    index: pd.Index,
    mask: np.ndarray,
    raw: pd.Series,
    what: str,
) -> None:
    count = int(mask.sum())
    if count:
        examples = ", ".join(
            f"{_row_label(index[i])}: {_show(raw.iloc[i])}"
            for i in np.flatnonzero(mask)[:MAX_EXAMPLES]
        )
        problems.append(f"{_describe(col, names)}: {_rows(count)} with {what}, e.g. {examples}")


def _report_duplicates(
    problems: list[str],
    col: str,
    names: Mapping[str, str],
    index: pd.Index,
    raw: pd.Series,
    ids: np.ndarray,
    missing: np.ndarray,
) -> None:
    if isinstance(raw.dtype, np.dtype) and raw.dtype.kind in "iu":
        keys = pd.Series(raw.to_numpy())  # hashing int64 is ~10x faster than strings
    else:
        present = ids[~missing]
        if len(set(present)) == len(present):
            return
        keys = pd.Series(ids)
    duplicated = keys.duplicated(keep=False).to_numpy() & ~missing
    count = int(duplicated.sum())
    if not count:
        return
    positions = np.flatnonzero(duplicated)
    groups = pd.Series(positions).groupby(ids[positions], sort=False)
    examples = []
    for value, group in itertools.islice(groups, MAX_EXAMPLES):
        rows = ", ".join(_row_label(index[i]) for i in group.to_numpy()[:MAX_EXAMPLES])
        examples.append(f"{value!r} ({rows})")
    problems.append(
        f"{_describe(col, names)}: {_rows(count)} share {groups.ngroups} duplicated "
        f"id{'s' if groups.ngroups != 1 else ''}, e.g. {'; '.join(examples)}"
    )
