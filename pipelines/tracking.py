"""The MLflow edge: the one module that points MLflow at the store, starts runs and logs to
them, loads logged models and reads back what training logged.

Everything else reaches MLflow through the functions here (runs, artifacts, models) or through
`client(settings)` (registry reads and writes with an explicit store, no global state).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from pipelines.model import ARTIFACTS_FOLDER, BOOSTER_FILE, META_FILE, FraudScorer
from pipelines.plots import evaluation_figures
from pipelines.settings import Settings, TrainingSettings
from pipelines.train import TrainingResult

log = logging.getLogger(__name__)

REFERENCE_ARTIFACT = "reference/reference.parquet"
TRAINING_CONFIG_ARTIFACT = "config/training.json"
MODEL_DEPENDENCIES = ("mlflow", "lightgbm", "pandas", "numpy")
# the pyfunc's code, logged with every model (models-from-code: no pickle)
PYFUNC_CODE = Path(__file__).resolve().parent / "pyfunc_model.py"
# the training configuration a retraining takes over from the champion's run
MODEL_CONFIGURATION = (
    "lightgbm",
    "imbalance_power",
    "max_rounds",
    "early_stopping_rounds",
    "threshold",
)
TEST_METRIC_TAG = "test_"


def pip_requirements() -> list[str]:
    """What the logged model needs, pinned to the versions that trained it."""
    return [f"{name}=={package_version(name)}" for name in MODEL_DEPENDENCIES]


def client(settings: Settings) -> MlflowClient:
    """A client of the configured tracking and registry store; the embedded default is created
    on first use."""
    settings.workdir.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def use_store(settings: Settings) -> MlflowClient:
    """Point MLflow's fluent API (runs, model logging and loading) at the configured store:
    process-wide state, set here before every fluent call and by nothing else in fraudflow."""
    mlflow_client = client(settings)  # creates the workdir of the embedded store
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return mlflow_client


def _experiment(settings: Settings, name: str) -> str:
    """Experiment id by name, created with artifacts under the workdir for the embedded store."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None if settings.mlflow.tracking_uri else settings.artifact_root.as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and pd.notna(v)}


def data_description(path: str | Path, transactions: pd.DataFrame) -> dict[str, str | int]:
    """Where the training data came from and the window it covers, logged as run params."""
    return {
        "data_path": str(path),
        "data_rows": len(transactions),
        "data_start": transactions["tx_datetime"].min().isoformat(),
        "data_end": transactions["tx_datetime"].max().isoformat(),
    }


# --- training ------------------------------------------------------------------------------


def log_training_run(
    result: TrainingResult,
    settings: Settings,
    data: dict[str, str | int],
    tags: dict[str, str] | None = None,
) -> tuple[str, ModelVersion]:
    """Log params, the resolved training configuration, metrics, figures, the reference sample
    and the model; register a version.

    `tags` (e.g. what triggered a retraining) go on the run and on the model version; inside an
    active run (a retraining) the training run is nested under it.
    """
    mlflow_client = use_store(settings)
    experiment_id = _experiment(settings, settings.mlflow.experiment)
    nested = mlflow.active_run() is not None
    with mlflow.start_run(experiment_id=experiment_id, run_name="train", nested=nested) as run:
        mlflow.set_tags({"fraudflow.step": "train", **(tags or {})})
        mlflow.log_params(
            {
                **{f"lgbm_{k}": v for k, v in result.params.items()},
                **data,
                **result.windows.as_dict(),
                "label_delay_days": settings.features.label_delay_days,
                "threshold_rule": settings.training.threshold.rule,
                "imbalance_power": settings.training.imbalance_power,
                "max_rounds": settings.training.max_rounds,
                "early_stopping_rounds": settings.training.early_stopping_rounds,
                "features": ",".join(result.scorer.features),
            }
        )
        mlflow.log_dict(settings.training.model_dump(mode="json"), TRAINING_CONFIG_ARTIFACT)
        mlflow.log_metrics(
            {
                **_finite({f"test_{k}": v for k, v in result.test_metrics.items()}),
                **_finite({f"validation_{k}": v for k, v in result.validation_metrics.items()}),
                **_finite(result.row_counts),
                "best_iteration": float(result.best_iteration),
                "threshold": result.scorer.threshold,
            }
        )
        for name, figure in evaluation_figures(
            result.test.labels, result.test_scores, result.scorer
        ).items():
            mlflow.log_figure(figure, f"plots/{name}")
            plt.close(figure)
        version = _log_model(result, settings, mlflow_client)
        _log_reference(result.reference)
    _tag_version(mlflow_client, version, result, settings, tags or {})
    return run.info.run_id, mlflow_client.get_model_version(version.name, version.version)


def _log_model(result: TrainingResult, settings: Settings, mlflow_client: MlflowClient):
    example = result.test.features.dropna().head(5)
    if example.empty:
        example = result.test.features.head(5).fillna(0.0)
    signature = infer_signature(example, result.scorer.predict_proba(example))
    with tempfile.TemporaryDirectory() as folder:
        artifacts = result.scorer.save(Path(folder))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts=artifacts,
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            registered_model_name=settings.mlflow.model_name,
        )
    return mlflow_client.get_model_version(
        settings.mlflow.model_name, str(info.registered_model_version)
    )


def _log_reference(reference: pd.DataFrame) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(REFERENCE_ARTIFACT).name
        reference.to_parquet(path)
        mlflow.log_artifact(str(path), artifact_path=str(Path(REFERENCE_ARTIFACT).parent))


def _tag_version(
    mlflow_client: MlflowClient,
    version: ModelVersion,
    result: TrainingResult,
    settings: Settings,
    extra: dict[str, str],
) -> None:
    tags = {
        **extra,
        "threshold": f"{result.scorer.threshold:.6f}",
        **result.windows.as_dict(),
        **{
            f"{TEST_METRIC_TAG}{k}": f"{v:.6f}"
            for k, v in result.test_metrics.items()
            if pd.notna(v)
        },
        "label_delay_days": str(settings.features.label_delay_days),
    }
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(version.name, version.version, key, value)
    metrics = result.test_metrics
    mlflow_client.update_model_version(
        version.name,
        version.version,
        description=(
            f"LightGBM trained on {result.windows.train.start.date()}.."
            f"{result.windows.train.end.date()} (exclusive); test AP "
            f"{metrics['average_precision']:.3f}, ROC-AUC {metrics['roc_auc']:.3f}, "
            f"threshold {result.scorer.threshold:.4f}."
        ),
    )


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
    parameters, weighting, rounds, threshold rule); None for a run that logged none."""
    use_store(settings)
    try:
        logged = mlflow.artifacts.load_dict(f"runs:/{run_id}/{TRAINING_CONFIG_ARTIFACT}")
    except (MlflowException, OSError) as exc:
        log.warning("run %s logged no training configuration: %s", run_id, exc)
        return None
    update = {k: logged[k] for k in MODEL_CONFIGURATION if k in logged}
    return TrainingSettings.model_validate({**settings.training.model_dump(), **update})


# --- models and what was logged with them --------------------------------------------------


def download_model_files(settings: Settings, model_uri: str, folder: Path) -> tuple[Path, Path]:
    """The booster and metadata files of a logged model (`models:/…`, `runs:/…`), downloaded
    into `folder` as they are stored, unchecked: `FraudScorer.load` checks them."""
    use_store(settings)
    booster, meta = (
        Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model_uri.rstrip('/')}/{ARTIFACTS_FOLDER}/{name}",
                dst_path=str(folder),
            )
        )
        for name in (BOOSTER_FILE, META_FILE)
    )
    return booster, meta


def load_scorer(settings: Settings, model_uri: str) -> FraudScorer:
    """The booster and metadata of a logged model (`models:/…`, `runs:/…`), read as data and
    checked (`FraudScorer.load`): nothing logged with the model is executed or unpickled."""
    with tempfile.TemporaryDirectory() as folder:
        return FraudScorer.load(*download_model_files(settings, model_uri, Path(folder)))


def load_reference(settings: Settings, run_id: str) -> pd.DataFrame:
    """The reference sample a training run logged (validation features, scores, labels)."""
    use_store(settings)
    with tempfile.TemporaryDirectory() as folder:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=REFERENCE_ARTIFACT, dst_path=folder
        )
        return pd.read_parquet(Path(path))


# --- other runs: backtest, retraining, promotion, monitoring -------------------------------


def log_backtest(
    settings: Settings,
    params: dict[str, Any],
    folds: list[dict[str, Any]],
    summary: dict[str, float],
) -> str:
    """A parent `backtest` run with one nested run per fold (`windows`, `params`, `metrics`)."""
    use_store(settings)
    experiment_id = _experiment(settings, settings.mlflow.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name="backtest") as parent:
        mlflow.set_tag("fraudflow.step", "backtest")
        mlflow.log_params(params)
        for index, fold in enumerate(folds):
            with mlflow.start_run(
                experiment_id=experiment_id, run_name=f"fold-{index}", nested=True
            ):
                mlflow.set_tag("fraudflow.step", "backtest-fold")
                mlflow.log_params(fold["params"])
                mlflow.log_metrics(_finite(fold["metrics"]))
        mlflow.log_metrics(_finite(summary))
    return parent.info.run_id


@contextmanager
def retraining_run(
    settings: Settings, tags: dict[str, str], params: dict[str, Any]
) -> Iterator[str]:
    """The parent `retrain` run: trials and the challenger's training run nest under it."""
    use_store(settings)
    experiment_id = _experiment(settings, settings.mlflow.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name="retrain", tags=tags) as parent:
        mlflow.log_params(params)
        yield parent.info.run_id


def log_trial(
    settings: Settings, number: int, params: dict[str, Any], metrics: dict[str, float]
) -> None:
    """One tried configuration of a retraining search, nested under the retraining run."""
    experiment_id = _experiment(settings, settings.mlflow.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"trial-{number}", nested=True):
        mlflow.set_tags({"fraudflow.step": "retrain-trial"})
        mlflow.log_params({f"lgbm_{k}": v for k, v in params.items()})
        mlflow.log_metrics(_finite({f"validation_{k}": v for k, v in metrics.items()}))


def log_promotion(
    settings: Settings,
    version: str,
    tags: dict[str, str],
    metrics: dict[str, float],
    decision: dict[str, Any],
) -> str:
    """A run in the promotion experiment: the history aliases do not keep."""
    use_store(settings)
    experiment_id = _experiment(settings, settings.mlflow.promotion_experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"v{version}") as run:
        mlflow.set_tags({"fraudflow.step": "promote", **tags})
        mlflow.log_metrics(_finite(metrics))
        mlflow.log_dict(decision, "decision.json")
    return run.info.run_id


def promotion_runs(settings: Settings) -> pd.DataFrame:
    """Every run of the promotion experiment, newest first (empty when there is none)."""
    use_store(settings)
    experiment = mlflow.get_experiment_by_name(settings.mlflow.promotion_experiment)
    if experiment is None:
        return pd.DataFrame()
    return mlflow.search_runs([experiment.experiment_id], order_by=["start_time DESC"])


def log_monitor_run(
    settings: Settings,
    run_name: str,
    tags: dict[str, str],
    metrics: dict[str, Any],
    report: Path,
) -> str:
    """A run in the monitoring experiment holding the report folder."""
    use_store(settings)
    experiment_id = _experiment(settings, settings.mlflow.monitoring_experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags({"fraudflow.step": "monitor", **tags})
        mlflow.log_metrics(_finite(metrics))
        mlflow.log_artifacts(str(report), artifact_path="report")
    return run.info.run_id


def log_report(settings: Settings, run_id: str, report: Path) -> None:
    """Replace a finished monitor run's copy of its report folder."""
    use_store(settings)
    mlflow.log_artifacts(str(report), artifact_path="report", run_id=run_id)


def tag_run(settings: Settings, run_id: str, tags: dict[str, str]) -> None:
    mlflow_client = client(settings)
    for key, value in tags.items():
        mlflow_client.set_tag(run_id, key, value)
