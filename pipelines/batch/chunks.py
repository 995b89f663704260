"""Transactions read in validated chunks of bounded size, in file order, for batch scoring.

The same files, columns and checks as `pipelines.data.load_transactions`, but read Parquet row
group batch by batch and CSV in pieces, so that no more than about `chunk_rows` input rows are
held at once. Each chunk is validated and sorted by time like a whole load; the chunks must
follow each other in time (a file per day named by date does), which `StreamingFeatures`
checks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.data import (
    _READ_ERRORS,
    ID_COLUMNS,
    DataValidationError,
    _file_kind,
    _list_files,
    _resolve_mapping,
    validate_transactions,
)


def count_rows(path: Path) -> int | None:
    """Rows in the input, from the Parquet footers; None when a CSV file is part of it."""
    total = 0
    for file in _list_files(Path(path)):
        if _file_kind(file) != "parquet":
            return None
        try:
            total += pq.ParquetFile(file).metadata.num_rows
        except _READ_ERRORS + (OSError,):
            return None
    return total


def _pieces(
    file: Path, wanted: Mapping[str, str], chunk_rows: int
) -> Iterator[pa.Table | pd.DataFrame]:
    """A file's mapped columns, at most `chunk_rows` rows at a time (file column names);
    Parquet stays Arrow so a chunk's pieces convert to pandas in one multi-threaded step."""
    if _file_kind(file) == "parquet":
        handle = pq.ParquetFile(file)
        present = [name for name in handle.schema_arrow.names if name in wanted]
        for batch in handle.iter_batches(batch_size=chunk_rows, columns=present):
            yield pa.Table.from_batches([batch])
        return
    id_names = {file_col: str for file_col, ours in wanted.items() if ours in ID_COLUMNS}
    compression = "gzip" if file.name.lower().endswith(".gz") else None
    with pd.read_csv(
        file,
        usecols=lambda name: name in wanted,
        dtype=id_names,
        compression=compression,
        chunksize=chunk_rows,
    ) as reader:
        yield from reader


def read_chunks(
    path: str | Path,
    columns: Mapping[str, str] | None,
    chunk_rows: int,
    require_labels: bool = False,
) -> Iterator[pd.DataFrame]:
    """Validated, time-sorted chunks of about `chunk_rows` rows (at most one file piece more).

    A chunk's index numbers its rows from 0; errors name the files the chunk came from.
    """
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    path = Path(path)
    mapping = _resolve_mapping(columns)
    wanted = {file_col: ours for ours, file_col in mapping.items()}
    pending: list[pa.Table | pd.DataFrame] = []
    sources: list[str] = []
    held = 0
    for file in _list_files(path):
        try:
            for piece in _pieces(file, wanted, chunk_rows):
                pending.append(piece)
                if not sources or sources[-1] != file.name:
                    sources.append(file.name)
                held += len(piece)
                if held >= chunk_rows:
                    yield _validated(pending, sources, wanted, mapping, require_labels)
                    pending, sources, held = [], [], 0
        except DataValidationError:
            raise
        except _READ_ERRORS + (OSError,) as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0]
            raise DataValidationError(
                [f"{file.name}: could not be read ({type(exc).__name__}: {first_line})"],
                str(path),
            ) from None
    if pending:
        yield _validated(pending, sources, wanted, mapping, require_labels)


def _validated(
    pieces: list[pa.Table | pd.DataFrame],
    sources: list[str],
    wanted: Mapping[str, str],
    mapping: Mapping[str, str],
    require_labels: bool,
) -> pd.DataFrame:
    if all(isinstance(p, pa.Table) for p in pieces) and all(
        p.schema.equals(pieces[0].schema) for p in pieces
    ):
        frame = pa.concat_tables(pieces).to_pandas(deduplicate_objects=False)
    else:
        frame = pd.concat(
            [
                p.to_pandas(deduplicate_objects=False) if isinstance(p, pa.Table) else p
                for p in pieces
            ],
            ignore_index=True,
        )
    frame = frame.rename(columns=dict(wanted)).reset_index(drop=True)
    shown = ", ".join(sources) if len(sources) <= 3 else f"{sources[0]} .. {sources[-1]}"
    return validate_transactions(frame, require_labels, source=shown, columns=mapping)
