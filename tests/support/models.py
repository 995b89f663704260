"""Models in a store: the one way tests and benchmarks train, register and promote a version,
and copies of a store that share nothing with the original."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import mlflow
import pandas as pd

from pipelines.backup.artifacts import relocate_files
from pipelines.backup.sqlite_files import backup_sqlite, replace_text
from pipelines.mlflow import store
from pipelines.mlflow.models import PYFUNC_CODE
from pipelines.mlflow.promotion import set_stage
from pipelines.model import BOOSTER_FILE, BOOSTER_SHA256_TAG, META_FILE, file_hashes, sha256_bytes
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


def one_token(text: str) -> str:
    """The first split_feature value replaced by another number: one token, and the tree
    sizes no longer agree with the trees (LightGBM aborts on it inside a parallel region)."""
    return re.sub(r"split_feature=\d+", "split_feature=12345", text, count=1)


def child_out_of_range(text: str) -> str:
    """The first left child far past the tree, with tree_sizes made to agree (LightGBM reads
    outside the tree when it scores)."""
    return with_tree_sizes(re.sub(r"left_child=-?\d+", "left_child=1000000", text, count=1))


def with_tree_sizes(text: str) -> str:
    """`text` with its header's tree_sizes made to agree with its tree blocks."""
    start, end = text.index("\nTree=") + 1, text.index("end of trees\n")
    blocks = re.split(r"(?=^Tree=)", text[start:end], flags=re.M)
    sizes = " ".join(str(len(block)) for block in blocks if block)
    return (
        re.sub(r"^tree_sizes=.*$", f"tree_sizes={sizes}", text[:start], flags=re.M) + text[start:]
    )


def cut_short(text: str) -> str:
    """Cut in the middle of the last tree (LightGBM loads it as a model one tree smaller)."""
    last = text.rindex("\nTree=")
    return text[: last + (text.index("end of trees") - last) // 2]


def register_altered(
    settings, good: str, alter: Callable[[str], str], tags_from_good: bool = False
) -> str:
    """A version holding the good version's files with the booster altered, its meta.json and
    hash tags made to match the altered file (or those of the good files)."""
    name = settings.mlflow.model_name
    store.use_store(settings)
    folder = Path(tempfile.mkdtemp())
    files = {
        file: Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{good}/artifacts/{file}", dst_path=str(folder)
            )
        )
        for file in (BOOSTER_FILE, META_FILE)
    }
    good_hashes = file_hashes(files[BOOSTER_FILE], files[META_FILE])
    altered = alter(files[BOOSTER_FILE].read_text())
    files[BOOSTER_FILE].write_text(altered)
    if not tags_from_good:
        meta = json.loads(files[META_FILE].read_text())
        meta[BOOSTER_SHA256_TAG] = sha256_bytes(altered.encode())
        files[META_FILE].write_text(json.dumps(meta))
    client = store.client(settings)
    experiment = client.get_experiment_by_name(settings.mlflow.experiment)
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts={"booster": str(files[BOOSTER_FILE]), "meta": str(files[META_FILE])},
            registered_model_name=name,
            pip_requirements=["mlflow"],
        )
    version = str(info.registered_model_version)
    hashes = good_hashes if tags_from_good else file_hashes(files[BOOSTER_FILE], files[META_FILE])
    for file, tag in (("booster.txt", "booster_sha256"), ("meta.json", "meta_sha256")):
        client.set_model_version_tag(name, version, tag, hashes[file])
    return version
