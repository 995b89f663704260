"""Models in a store: the one way tests and benchmarks train, register and promote a version,
and copies of a store that share nothing with the original."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pandas as pd

from pipelines.backup.artifacts import relocate_files
from pipelines.backup.sqlite_files import backup_sqlite, replace_text
from pipelines.mlflow.promotion import set_stage
from pipelines.settings import Settings
from pipelines.training.record import data_description, log_training_run
from pipelines.training.train import TrainingResult, train_model


def train_and_register(
    transactions: pd.DataFrame,
    settings: Settings,
    production: str | None = None,
    *,
    result: TrainingResult | None = None,
    data: dict[str, str | int] | None = None,
    actor: str | None = None,
) -> tuple[str, TrainingResult]:
    """Train on TRANSACTIONS (or take RESULT, already trained on them), log the run with DATA
    as its data params (default: the transactions' window) and register its model; with
    PRODUCTION (the reason given, by ACTOR), also place that version in Production. Returns
    the version and the training result."""
    if result is None:
        result = train_model(transactions, settings)
    data = data if data is not None else data_description("test", transactions)
    _, model_version = log_training_run(result, settings, data)
    version = str(model_version.version)
    if production is not None:
        set_stage(settings, version, "Production", production, actor=actor)
    return version, result


def copy_store(source: Path, target: Path) -> None:
    """Copy a workdir holding an embedded store (mlflow.db and mlartifacts/) to `target`, a
    store of its own: MLflow keeps absolute artifact URIs (experiments, runs, logged models,
    model versions, MLmodel files), so every mention of `source` is rewritten to `target`;
    unchanged, the copy would read and write the original's artifact folder."""
    old, new = str(Path(source).resolve()), str(Path(target).resolve())
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("mlflow.db", "mlflow.db-*"))
    relocate_files(Path(target), old, new)  # the MLmodel files, as a restore does
    database = Path(target) / "mlflow.db"
    backup_sqlite(Path(source) / "mlflow.db", database)
    replace_text(database, old, new)
    with closing(sqlite3.connect(database)) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        left = [
            f"{table}.{column}"
            for table in tables
            for column in [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]
            if db.execute(
                f'SELECT count(*) FROM "{table}" WHERE instr(CAST("{column}" AS TEXT), ?) > 0',
                (old,),
            ).fetchone()[0]
        ]
    assert not left, f"the copied store still points at {old}: {left}"
