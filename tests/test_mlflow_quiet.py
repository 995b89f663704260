"""fraudflow's own MLflow calls give no deprecation notice: the commands a user runs (train,
promote by hand and --auto, the history, score, the API's model loading, monitor, retrain)
in-process with every warning and MLflow log record kept, and a promotion through the console
script with Python's default warning filters, as a user sees it.

The registry stages are deprecated in MLflow since 2.9 and kept on purpose (DESIGN.md: the
stage and the alias are both promotion markers), so their notice is silenced around those calls
alone (`pipelines.mlflow.registry.stage_call`); any other deprecation fails here."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from fraudflow.cli import main
from pipelines.mlflow import models, store
from pipelines.mlflow.registry import stage_call
from serving.app import create_app
from tests.support.settings import make_settings, write_config
from tests.support.traffic import log_traffic, split_days

NAME = "fraud-detector"
MLFLOW_PACKAGE = Path(mlflow.__file__).resolve().parent
# the one package of fraudflow that calls MLflow: MLflow points its notices at the caller
MLFLOW_EDGE = Path(__file__).resolve().parent.parent / "pipelines" / "mlflow"


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def is_deprecation(category: type[Warning], text: str) -> bool:
    return issubclass(category, (DeprecationWarning, FutureWarning)) or "deprecat" in text.lower()


def from_mlflow(caught: warnings.WarningMessage) -> bool:
    """A warning about an MLflow call: raised inside MLflow, pointed at fraudflow's MLflow
    edge (a deprecated function or argument warns at its caller) or naming MLflow."""
    where = Path(caught.filename).resolve()
    return (
        where.is_relative_to(MLFLOW_PACKAGE)
        or where.is_relative_to(MLFLOW_EDGE)
        or "mlflow" in str(caught.message).lower()
    )


@contextmanager
def deprecation_notices() -> Iterator[list[str]]:
    """Every deprecation notice MLflow gives while the block runs: warnings (each one, none
    hidden by a filter or by having been shown before) and WARNING records of MLflow's
    loggers that say "deprecated" (MLflow logs some, `artifact_path` for one)."""
    notices: list[str] = []
    kept = _Kept()
    mlflow_logger = logging.getLogger("mlflow")  # it does not propagate to the root logger
    mlflow_logger.addHandler(kept)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield notices
    finally:
        mlflow_logger.removeHandler(kept)
    notices.extend(
        f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}"
        for w in caught
        if is_deprecation(w.category, str(w.message)) and from_mlflow(w)
    )
    notices.extend(
        f"{r.name}: {r.getMessage()}" for r in kept.records if "deprecat" in r.getMessage().lower()
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame):
    """A private store, its config overlay, and the small world split into history (what
    is trained on) and its last day (production traffic for the monitor)."""
    root = tmp_path_factory.mktemp("quiet")
    settings = make_settings(root / "work")
    config = write_config(root / "overlay.yaml", settings)
    history, traffic = split_days(small_transactions, 1)
    data = root / "history.parquet"
    history.to_parquet(data)
    # MLflow's SQL store warns of SQLAlchemy's deprecations once, when it is first imported:
    # a fact of the installed MLflow, not of a call fraudflow makes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store.client(settings).search_registered_models()
    return root, settings, config, history, traffic, data


def cli(*args: object) -> int:
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # mlflow.set_tracking_uri exports it
    return main([str(a) for a in args])


def steps(world) -> list[tuple[str, Callable[[], bool]]]:
    """The commands in the order a user runs them, each true when it did its work. Two
    trainings: `train` gives the first champion (promoted by hand), `retrain` a challenger
    promoted if it beats it."""
    root, settings, config, history, traffic, data = world

    def champion() -> str:
        return str(store.client(settings).get_model_version_by_alias(NAME, "champion").version)

    def load_in_api() -> bool:
        holder = create_app(settings, start_polling=False).extensions["fraudflow"].holder
        holder.stop()
        return holder.model is not None and holder.model.version == champion()

    def log_production_traffic() -> bool:
        version = champion()
        scorer = models.load_scorer(settings, f"models:/{NAME}/{version}")
        return len(log_traffic(settings, history, traffic, scorer, version)) == len(traffic)

    def promote(*args: object) -> bool:
        return cli("promote", "--config", config, *args) == 0

    return [
        ("train", lambda: cli("train", "--config", config, "--data", data) == 0),
        ("promote by hand", lambda: promote("--version", "1", "--stage", "Production")),
        ("retrain", lambda: cli("retrain", "--config", config, "--data", data) == 0),
        ("promote --auto", lambda: promote("--auto", "--data", data)),
        ("promote --history", lambda: promote("--history")),
        (
            "score",
            lambda: cli("score", "--config", config, "--data", data, "--output", root / "s.csv")
            == 0,
        ),
        ("the API loads the champion", load_in_api),
        ("production traffic", log_production_traffic),
        ("monitor", lambda: cli("monitor", "--config", config) in (0, 1, 2)),
        ("demote to Staging", lambda: promote("--version", "1", "--stage", "Staging")),
    ]


@pytest.fixture(scope="module")
def notices(world) -> list[str]:
    """The commands run once on the world's store: the deprecation notices each gave."""
    found: list[str] = []
    for name, step in steps(world):
        with deprecation_notices() as given:
            assert step(), f"{name} failed"
        found.extend(f"{name}: {notice}" for notice in given)
    return found


def test_the_commands_mlflow_calls_give_no_deprecation_notice(world, notices) -> None:
    if notices:
        pytest.fail("MLflow deprecation notices:\n" + "\n".join(notices), pytrace=False)
    client = store.client(world[1])
    production = [
        v.version
        for v in client.search_model_versions(f"name = '{NAME}'")
        if v.current_stage == "Production"
    ]
    assert production == [client.get_model_version_by_alias(NAME, "champion").version]


def test_a_promotion_by_the_console_script_prints_no_deprecation(world, notices) -> None:
    """As a user runs it: Python's default warning filters, MLflow's own logging set-up (on
    the store the commands left: v1 back to Production)."""
    root, _, config, *_ = world
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FRAUDFLOW__"))}
    env.pop("PYTHONWARNINGS", None)
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "fraudflow"),
            "promote",
            "--config",
            str(config),
            "--version",
            "1",
            "--stage",
            "Production",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "promoted to Production" in done.stdout
    assert "deprecat" not in (done.stdout + done.stderr).lower(), done.stderr


def test_stage_call_silences_the_stage_notice_and_nothing_else() -> None:
    stage_notice = (
        "``mlflow.tracking.client.MlflowClient.get_latest_versions`` is deprecated since 2.9.0. "
        "Model registry stages will be removed in a future major release."
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with stage_call():
            warnings.warn(stage_notice, FutureWarning)
            warnings.warn("``mlflow.log_thing`` is deprecated since 3.1.0.", FutureWarning)
            warnings.warn(stage_notice, UserWarning)
        warnings.warn(stage_notice, FutureWarning)
    assert [(w.category, str(w.message)[:20]) for w in caught] == [
        (FutureWarning, "``mlflow.log_thing``"),
        (UserWarning, stage_notice[:20]),
        (FutureWarning, stage_notice[:20]),
    ]
