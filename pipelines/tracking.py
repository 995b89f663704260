"""The MLflow edge: tracking store set-up, training-run logging and model registration."""

from __future__ import annotations

import tempfile
from importlib.metadata import version as package_version
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from pipelines.model import FraudModel
from pipelines.plots import evaluation_figures
from pipelines.settings import Settings
from pipelines.train import TrainingResult

REFERENCE_ARTIFACT = "reference/reference.parquet"
MODEL_DEPENDENCIES = ("mlflow", "lightgbm", "pandas", "numpy")


def pip_requirements() -> list[str]:
    """What the logged model needs, pinned to the versions that trained it."""
    return [f"{name}=={package_version(name)}" for name in MODEL_DEPENDENCIES]


def configure_tracking(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured store; the embedded default is created on first use."""
    settings.workdir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def ensure_experiment(settings: Settings, name: str) -> str:
    """Experiment id by name, created with artifacts under the workdir for the embedded store."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None if settings.mlflow.tracking_uri else settings.artifact_root.as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def data_description(path: str | Path, transactions: pd.DataFrame) -> dict[str, str | int]:
    """Where the training data came from and the window it covers, logged as run params."""
    return {
        "data_path": str(path),
        "data_rows": len(transactions),
        "data_start": transactions["tx_datetime"].min().isoformat(),
        "data_end": transactions["tx_datetime"].max().isoformat(),
    }


def _flat_metrics(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in metrics.items() if pd.notna(v)}


def log_training_run(
    result: TrainingResult,
    settings: Settings,
    data: dict[str, str | int],
    tags: dict[str, str] | None = None,
) -> tuple[str, ModelVersion]:
    """Log params, metrics, figures, the reference sample and the model; register a version.

    `tags` (e.g. what triggered a retraining) go on the run and on the model version; inside an
    active run (a retraining) the training run is nested under it.
    """
    client = configure_tracking(settings)
    experiment_id = ensure_experiment(settings, settings.mlflow.experiment)
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
        mlflow.log_metrics(
            {
                **_flat_metrics(result.test_metrics, "test_"),
                **_flat_metrics(result.validation_metrics, "validation_"),
                **{k: float(v) for k, v in result.row_counts.items()},
                "best_iteration": float(result.best_iteration),
                "threshold": result.scorer.threshold,
            }
        )
        for name, figure in evaluation_figures(
            result.test.labels, result.test_scores, result.scorer
        ).items():
            mlflow.log_figure(figure, f"plots/{name}")
            plt.close(figure)
        version = _log_model(result, settings)
        _log_reference(result.reference)
    _tag_version(client, version, result, settings, tags or {})
    return run.info.run_id, client.get_model_version(version.name, version.version)


def _log_model(result: TrainingResult, settings: Settings) -> ModelVersion:
    example = result.test.features.dropna().head(5)
    if example.empty:
        example = result.test.features.head(5).fillna(0.0)
    signature = infer_signature(example, result.scorer.predict_proba(example))
    with tempfile.TemporaryDirectory() as folder:
        artifacts = result.scorer.save(Path(folder))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=FraudModel(),
            artifacts=artifacts,
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            registered_model_name=settings.mlflow.model_name,
        )
    client = MlflowClient()
    return client.get_model_version(settings.mlflow.model_name, str(info.registered_model_version))


def _log_reference(reference: pd.DataFrame) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(REFERENCE_ARTIFACT).name
        reference.to_parquet(path)
        mlflow.log_artifact(str(path), artifact_path=str(Path(REFERENCE_ARTIFACT).parent))


def _tag_version(
    client: MlflowClient,
    version: ModelVersion,
    result: TrainingResult,
    settings: Settings,
    extra: dict[str, str],
) -> None:
    tags = {
        **extra,
        "threshold": f"{result.scorer.threshold:.6f}",
        **result.windows.as_dict(),
        **{f"test_{k}": f"{v:.6f}" for k, v in result.test_metrics.items() if pd.notna(v)},
        "label_delay_days": str(settings.features.label_delay_days),
    }
    for key, value in tags.items():
        client.set_model_version_tag(version.name, version.version, key, value)
    metrics = result.test_metrics
    client.update_model_version(
        version.name,
        version.version,
        description=(
            f"LightGBM trained on {result.windows.train.start.date()}.."
            f"{result.windows.train.end.date()} (exclusive); test AP "
            f"{metrics['average_precision']:.3f}, ROC-AUC {metrics['roc_auc']:.3f}, "
            f"threshold {result.scorer.threshold:.4f}."
        ),
    )
