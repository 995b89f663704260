"""Batch scoring of raw transactions, features computed from the input's own history.

`score_path` streams: chunks of `batch.chunk_rows` rows are read in time order, featurized
with the history they need (`StreamingFeatures`), scored on `batch.threads` threads (the
booster, or its lleaves build) and appended to the output, which is written to a temporary
file renamed into place at the end: a failed run leaves no partial output. The model scores a
chunk on a second thread while the next chunk is read and featurized.
"""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipelines.batch.chunks import count_rows, read_chunks
from pipelines.batch.compiled import BatchPredictor, batch_predictor
from pipelines.batch.streaming import OutOfOrderError, StreamingFeatures
from pipelines.data import DataValidationError, _file_kind
from pipelines.features import build_features
from pipelines.files import replacing
from pipelines.model import FraudScorer
from pipelines.settings import FeatureSettings, Settings

log = logging.getLogger(__name__)
OUTPUT_SCHEMA = pa.schema([("transaction_id", pa.string()), ("fraud_probability", pa.float64())])


def score_transactions(
    transactions: pd.DataFrame,
    scorer: FraudScorer,
    settings: FeatureSettings,
    threads: int = 1,
) -> pd.DataFrame:
    """`transaction_id` and `fraud_probability` for every row of an in-memory frame, in order."""
    features = build_features(transactions, settings)
    scores = scorer.predict_proba(features, threads)
    return pd.DataFrame(
        {"transaction_id": transactions["transaction_id"].to_numpy(), "fraud_probability": scores}
    )


@dataclass(frozen=True)
class ScoreRun:
    """What a batch run did: rows, the engine that scored, seconds of the scoring phase."""

    rows: int
    chunks: int
    engine: str
    threads: int
    seconds: float
    peak_rows_held: int
    labelled: bool

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class _Output:
    """Appends score chunks to an open binary handle as Parquet or CSV (gzip by extension)."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        kind = _file_kind(path)
        if kind is None:
            raise ValueError(f"cannot write {path}: expected .csv, .csv.gz or .parquet")
        self.kind = kind
        self.handle = handle
        self.gzip = gzip.GzipFile(fileobj=handle, mode="wb") if path.name.endswith(".gz") else None
        self.parquet = pq.ParquetWriter(handle, OUTPUT_SCHEMA) if kind == "parquet" else None
        self.header = True

    def write(self, ids: np.ndarray, scores: np.ndarray) -> None:
        if self.parquet is not None:
            table = pa.table(
                [pa.array(ids, pa.string()), pa.array(scores, pa.float64())], schema=OUTPUT_SCHEMA
            )
            self.parquet.write_table(table)
            return
        frame = pd.DataFrame({"transaction_id": ids, "fraud_probability": scores})
        text = frame.to_csv(index=False, header=self.header).encode()
        self.header = False
        (self.gzip or self.handle).write(text)

    def abandon(self) -> None:
        """Release the writer of a failed run (its temporary file is deleted anyway)."""
        if self.parquet is not None:
            try:
                self.parquet.close()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        elif self.header:  # no row at all: still a valid CSV with its header
            self.write(np.array([], dtype=object), np.array([], dtype=np.float64))
        if self.gzip is not None:
            self.gzip.close()


@contextmanager
def _output(path: Path) -> Iterator[_Output]:
    with replacing(path) as handle:
        out = _Output(handle, path)
        try:
            yield out
        except BaseException:
            out.abandon()
            raise
        out.close()


def score_path(
    data: Path,
    output: Path,
    scorer: FraudScorer,
    settings: Settings,
    model_label: str = "",
    progress: bool = True,
) -> ScoreRun:
    """Score every transaction under `data` into `output` (.parquet, .csv or .csv.gz)."""
    batch = settings.batch
    threads = batch.resolved_threads
    predictor = batch_predictor(
        scorer.booster,
        threads,
        batch.compiled,
        settings.under_workdir(batch.compiled_cache_dir),
        model_label,
    )
    columns = list(scorer.features)
    stream = StreamingFeatures(settings.features, parallel=threads > 1)
    started = time.perf_counter()
    rows = chunks = 0
    labelled = False
    pending: Future | None = None
    with (
        _output(Path(output)) as out,
        ThreadPoolExecutor(1, thread_name_prefix="score") as pool,
        tqdm(
            total=count_rows(Path(data)),
            unit="tx",
            desc="scoring",
            disable=None if progress else True,
        ) as bar,
    ):
        for chunk in read_chunks(data, settings.data.columns, batch.chunk_rows):
            labelled = labelled or "tx_fraud" in chunk
            try:
                features = stream.push(chunk)
            except OutOfOrderError as exc:
                raise DataValidationError([str(exc)], str(data)) from None
            matrix = features.loc[:, columns].to_numpy(dtype=np.float64)
            ids = chunk["transaction_id"].to_numpy()
            if pending is not None:
                bar.update(pending.result())
            pending = pool.submit(_score_and_write, predictor, matrix, ids, out)
            rows += len(chunk)
            chunks += 1
        if pending is not None:
            bar.update(pending.result())
    seconds = time.perf_counter() - started
    return ScoreRun(rows, chunks, predictor.engine, threads, seconds, stream.peak_rows, labelled)


def _score_and_write(
    predictor: BatchPredictor, matrix: np.ndarray, ids: np.ndarray, out: _Output
) -> int:
    if len(ids):
        out.write(ids, predictor.predict(matrix))
    return len(ids)
