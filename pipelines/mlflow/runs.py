"""Runs: what training, the backtest, retraining, promotion and monitoring log, and what is
read back from their runs. The content of a run is built by its step; this module only writes
it to MLflow and reads it back."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from pydantic import ValidationError

from pipelines.mlflow.models import log_model, log_reference
from pipelines.mlflow.store import client, experiment, finite, use_store
from pipelines.model import FraudScorer
from pipelines.settings import Settings, SettingsError, TrainingSettings

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

TRAINING_CONFIG_ARTIFACT = "config/training.json"
# the training configuration a retraining takes over from the champion's run
MODEL_CONFIGURATION = (
    "lightgbm",
    "imbalance_power",
    "max_rounds",
    "early_stopping_rounds",
    "threshold",
)
TEST_METRIC_TAG = "test_"


def log_training_run(
    settings: Settings,
    *,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    figures: Mapping[str, Figure],
    scorer: FraudScorer,
    example: pd.DataFrame,
    reference: pd.DataFrame,
    version_tags: Mapping[str, str],
    description: str,
    tags: Mapping[str, str] | None = None,
) -> tuple[str, ModelVersion]:
    """A `train` run (params, the resolved training configuration, metrics, figures, the model
    and its reference sample) and the version it registers, tagged and described.

    `tags` (e.g. what triggered a retraining) go on the run; inside an active run (a
    retraining) the training run is nested under it.
    """
    mlflow_client = use_store(settings)
    experiment_id = experiment(settings, settings.mlflow.experiment)
    nested = mlflow.active_run() is not None
    with mlflow.start_run(experiment_id=experiment_id, run_name="train", nested=nested) as run:
        mlflow.set_tags({"fraudflow.step": "train", **(tags or {})})
        mlflow.log_params(dict(params))
        mlflow.log_dict(settings.training.model_dump(mode="json"), TRAINING_CONFIG_ARTIFACT)
        mlflow.log_metrics(finite(dict(metrics)))
        for name, figure in figures.items():
            mlflow.log_figure(figure, f"plots/{name}")
        version = log_model(scorer, example, settings.mlflow.model_name, mlflow_client)
        log_reference(reference)
    for key, value in version_tags.items():
        mlflow_client.set_model_version_tag(version.name, version.version, key, value)
    mlflow_client.update_model_version(version.name, version.version, description=description)
    return run.info.run_id, mlflow_client.get_model_version(version.name, version.version)


def version_test_metrics(version: ModelVersion) -> dict[str, float]:
    """The held-out test metrics a version was registered with (its `test_*` tags; the test
    window's `test_start`/`test_end` are not metrics)."""
    metrics = {}
    for key, value in (version.tags or {}).items():
        if key.startswith(TEST_METRIC_TAG):
            try:
                metrics[key.removeprefix(TEST_METRIC_TAG)] = float(value)
            except ValueError:
                continue
    return metrics


def training_configuration(settings: Settings, run_id: str) -> TrainingSettings | None:
    """`settings.training` with the model configuration a training run logged (LightGBM
    parameters, weighting, rounds, threshold rule); None for a run that logged none.

    The logged configuration is checked as a configuration file is: a LightGBM parameter
    outside the allowlist (`pipelines.settings.LIGHTGBM_PARAMETERS`), or anything else out of
    shape, is a SettingsError naming the run and the key; nothing of it reaches LightGBM."""
    use_store(settings)
    try:
        logged = mlflow.artifacts.load_dict(f"runs:/{run_id}/{TRAINING_CONFIG_ARTIFACT}")
    except (MlflowException, OSError) as exc:
        log.warning("run %s logged no training configuration: %s", run_id, exc)
        return None
    if not isinstance(logged, dict):
        raise SettingsError(f"run {run_id}: {TRAINING_CONFIG_ARTIFACT} is not a JSON object")
    update = {k: logged[k] for k in MODEL_CONFIGURATION if k in logged}
    try:
        return TrainingSettings.model_validate({**settings.training.model_dump(), **update})
    except ValidationError as exc:
        problems = "; ".join(
            f"training.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(
            f"run {run_id} logged a training configuration that is refused "
            f"({TRAINING_CONFIG_ARTIFACT}): {problems}"
        ) from None


def log_backtest(
    settings: Settings,
    params: dict[str, Any],
    folds: list[dict[str, Any]],
    summary: dict[str, float],
) -> str:
    """A parent `backtest` run with one nested run per fold (`windows`, `params`, `metrics`)."""
    use_store(settings)
    experiment_id = experiment(settings, settings.mlflow.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name="backtest") as parent:
        mlflow.set_tag("fraudflow.step", "backtest")
        mlflow.log_params(params)
        for index, fold in enumerate(folds):
            with mlflow.start_run(
                experiment_id=experiment_id, run_name=f"fold-{index}", nested=True
            ):
                mlflow.set_tag("fraudflow.step", "backtest-fold")
                mlflow.log_params(fold["params"])
                mlflow.log_metrics(finite(fold["metrics"]))
        mlflow.log_metrics(finite(summary))
    return parent.info.run_id


@contextmanager
def retraining_run(
    settings: Settings, tags: dict[str, str], params: dict[str, Any]
) -> Iterator[str]:
    """The parent `retrain` run: a search (`pipelines.mlflow.tuning`) and the challenger's
    training run nest under it."""
    use_store(settings)
    experiment_id = experiment(settings, settings.mlflow.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name="retrain", tags=tags) as parent:
        mlflow.log_params(params)
        yield parent.info.run_id


def log_promotion(
    settings: Settings,
    version: str,
    tags: dict[str, str],
    metrics: dict[str, float],
    decision: dict[str, Any],
) -> str:
    """A run in the promotion experiment: the history aliases do not keep."""
    use_store(settings)
    experiment_id = experiment(settings, settings.mlflow.promotion_experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"v{version}") as run:
        mlflow.set_tags({"fraudflow.step": "promote", **tags})
        mlflow.log_metrics(finite(metrics))
        mlflow.log_dict(decision, "decision.json")
    return run.info.run_id


def promotion_runs(settings: Settings) -> pd.DataFrame:
    """Every run of the promotion experiment, newest first (empty when there is none)."""
    use_store(settings)
    found = mlflow.get_experiment_by_name(settings.mlflow.promotion_experiment)
    if found is None:
        return pd.DataFrame()
    return mlflow.search_runs([found.experiment_id], order_by=["start_time DESC"])


def log_monitor_run(
    settings: Settings,
    run_name: str,
    tags: dict[str, str],
    metrics: dict[str, Any],
    report: Path,
) -> str:
    """A run in the monitoring experiment holding the report folder."""
    use_store(settings)
    experiment_id = experiment(settings, settings.mlflow.monitoring_experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags({"fraudflow.step": "monitor", **tags})
        mlflow.log_metrics(finite(metrics))
        mlflow.log_artifacts(str(report), artifact_path="report")
    return run.info.run_id


def log_report(settings: Settings, run_id: str, report: Path) -> None:
    """Replace a finished monitor run's copy of its report folder."""
    use_store(settings)
    mlflow.log_artifacts(str(report), artifact_path="report", run_id=run_id)


def tag_run(settings: Settings, run_id: str, tags: dict[str, str]) -> None:
    """Set tags on a finished run."""
    mlflow_client = client(settings)
    for key, value in tags.items():
        mlflow_client.set_tag(run_id, key, value)
