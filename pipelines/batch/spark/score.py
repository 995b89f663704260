"""`fraudflow score --engine spark`: read, compute features, score with the registered model's
booster on the executors, write Parquet partitioned by day.

The driver downloads the booster and its metadata and checks them (`load_scorer`, as every
other job does); the executors receive the checked booster as text in a broadcast variable and
build it with `lightgbm.Booster(model_str=...)`, once per partition. Nothing logged with the
model runs anywhere: the pyfunc is never loaded (MLflow's `spark_udf` would run its code), and
the executors need lightgbm, numpy and pandas, not fraudflow or MLflow.

The output appears whole or not at all: Spark writes into a hidden temporary folder beside the
output, which is renamed into place only after the job succeeded (an older output of the same
name is replaced then); a failed run removes the temporary folder. The output path must be on a
file system that the driver and every executor see (a local disk for `local[*]`, a shared
volume on a cluster).
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.batch.spark.features import col, spark_features
from pipelines.batch.spark.read import read_transactions
from pipelines.batch.spark.session import spark_errors
from pipelines.features import feature_names
from pipelines.mlflow.models import load_scorer
from pipelines.model import FraudScorer
from pipelines.settings import Settings

log = logging.getLogger(__name__)

DAY_COLUMN = "day"


class OutputError(ValueError):
    """The output path cannot take a Spark result (a file, or a CSV name)."""


@dataclass(frozen=True)
class SparkScoreResult:
    rows: int
    days: int
    output: Path


def check_output(output: str | Path) -> Path:
    """The output folder, or OutputError: the Spark engine writes a folder of Parquet files."""
    path = Path(output)
    if path.name.lower().endswith((".csv", ".csv.gz")):
        raise OutputError(
            f"{path}: the spark engine writes a Parquet folder partitioned by day, not CSV"
        )
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file; the spark engine writes a folder")
    return path


def scored_frame(
    spark: SparkSession, settings: Settings, data_path: str | Path, model_uri: str
) -> DataFrame:
    """`transaction_id`, `fraud_probability` and `day` (UTC, YYYY-MM-DD) for every input row."""
    scorer = load_scorer(settings, model_uri)  # the files are checked before Spark gets them
    available = feature_names(settings.features)
    missing = [name for name in scorer.features if name not in available]
    if missing:
        raise ValueError(f"{model_uri} needs features the configuration does not define: {missing}")
    transactions, has_label = read_transactions(spark, data_path, settings.data.columns)
    if not has_label:
        log.warning("no labels in the input: terminal risk features count no known fraud")
    features = spark_features(transactions, settings.features)
    return features.select(
        "transaction_id",
        booster_scores(spark, scorer).alias("fraud_probability"),
        F.date_format("tx_datetime", "yyyy-MM-dd").alias(DAY_COLUMN),
    )


def booster_scores(spark: SparkSession, scorer: FraudScorer) -> Column:
    """The fraud probability of each row, computed on the executors from the checked booster's
    text (a broadcast variable) over the model's feature columns, in its feature order."""
    model = spark.sparkContext.broadcast(scorer.booster.model_to_string())
    names = list(scorer.features)

    # a local function: cloudpickle sends it by value, so executors need no fraudflow package
    @F.pandas_udf("double")
    def predict(batches: Iterator[pd.DataFrame]) -> Iterator[pd.Series]:
        booster = lgb.Booster(model_str=model.value)
        for frame in batches:
            matrix = frame.loc[:, names].to_numpy(dtype=np.float64)
            yield pd.Series(booster.predict(matrix, num_threads=1), index=frame.index)

    return predict(F.struct(*[col(name).alias(name) for name in names]))


def score_with_spark(
    spark: SparkSession,
    settings: Settings,
    data_path: str | Path,
    output: str | Path,
    model_uri: str,
) -> SparkScoreResult:
    """Score every transaction under `data_path` into `output`/day=YYYY-MM-DD/*.parquet."""
    target = check_output(output)
    with spark_errors("reading the transactions"):
        scores = scored_frame(spark, settings, data_path, model_uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        with spark_errors("the Spark scoring job"):
            scores.write.partitionBy(DAY_COLUMN).parquet(str(staging))
            rows = spark.read.parquet(str(staging)).count()
        days = sum(1 for p in staging.iterdir() if p.name.startswith(f"{DAY_COLUMN}="))
        _replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SparkScoreResult(rows=rows, days=days, output=target)


def _replace_folder(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`; an existing `target` is moved aside first, then deleted."""
    if not target.exists():
        staging.rename(target)
        return
    old = target.parent / f".{target.name}.{uuid.uuid4().hex}.old"
    target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)
