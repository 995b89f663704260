"""Plain helpers for tests: settings for the small simulated world and config overlay files.

Fixtures live in conftest.py; servers in servers.py and stack_servers.py."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipelines.backup.artifacts import relocate_files
from pipelines.backup.sqlite_files import backup_sqlite, replace_text
from pipelines.mlflow.promotion import set_stage
from pipelines.settings import Settings, StateSettings, load_settings
from pipelines.training.record import log_training_run
from pipelines.training.train import TrainingResult, train_model

# 90 days of a small world: enough history for 30-day windows, a 7-day delay and three periods.
SMALL_WORLD = {
    "n_customers": 800,
    "n_terminals": 1600,
    "n_days": 90,
    "radius": 8.0,
    "seed": 3,
    "compromised_terminals_per_day": 1,
    "compromised_customers_per_day": 2,
}
FAST_TRAINING = {
    "train_days": 28,
    "validation_days": 7,
    "test_days": 7,
    "max_rounds": 150,
    "early_stopping_rounds": 20,
    "lightgbm": {"learning_rate": 0.1, "num_leaves": 15, "min_child_samples": 20},
}
LENIENT_GATES = {"average_precision": 0.3, "recall": 0.2, "card_precision_at_100": 0.01}


def make_settings(workdir: Path, **sections: Any) -> Settings:
    """Settings for a test: the small world, fast training and a private embedded store."""
    overrides: dict[str, Any] = {
        "workdir": str(workdir),
        "simulation": SMALL_WORLD,
        "training": FAST_TRAINING,
        "backtest": {"folds": 2, "train_days": 21, "test_days": 7, "fold_step_days": 7},
        "promotion": {"gates": LENIENT_GATES, "min_improvement": 0.0},
    }
    for key, value in sections.items():
        overrides[key] = {**overrides.get(key, {}), **value} if isinstance(value, dict) else value
    return load_settings(environ={}, overrides=overrides)


def write_config(path: Path, settings: Settings) -> Path:
    """A --config overlay file that reproduces `settings` for the CLI and `mlflow run`."""
    payload = settings.model_dump(mode="json")
    payload["workdir"] = str(settings.workdir)
    path.write_text(yaml.safe_dump(payload))
    return path


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


def private_serving(
    settings: Settings, folder: Path, state: StateSettings | None = None, **serving: Any
) -> Settings:
    """`settings` with an online state (`state`, or the configured one, its SQLite file under
    `folder`), prediction log and model cache of its own under `folder` (and any other
    `serving` values), so that an app shares nothing with another test's."""
    folder = Path(folder)
    own_state = (state or settings.state).model_copy(
        update={"sqlite_path": str(folder / "state.sqlite")}
    )
    own_log = settings.prediction_log.model_copy(update={"dir": str(folder / "predictions")})
    update = {"model_cache_dir": str(folder / "model-cache"), **serving}
    return settings.model_copy(
        update={
            "state": own_state,
            "prediction_log": own_log,
            "serving": settings.serving.model_copy(update=update),
        }
    )


def train_and_register(
    transactions: pd.DataFrame, settings: Settings, production: str | None = None
) -> tuple[str, TrainingResult]:
    """Train on TRANSACTIONS, log the run and register its model; with PRODUCTION (the reason
    given), also place that version in Production. Returns the version and the result."""
    result = train_model(transactions, settings)
    _, model_version = log_training_run(result, settings, {"data_path": "test"})
    version = str(model_version.version)
    if production is not None:
        set_stage(settings, version, "Production", production)
    return version, result


def register(transactions: pd.DataFrame, settings: Settings) -> str:
    """The version `train_and_register` registers (not placed in any stage)."""
    return train_and_register(transactions, settings)[0]
