"""What the model in service was trained on, fetched from the registry alone: the version, its
scorer, its reference sample (features, scores, labels) and its training-time metrics."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.model import FraudScorer, load_scorer
from pipelines.registry import served_version
from pipelines.settings import Settings
from pipelines.tracking import REFERENCE_ARTIFACT, configure_tracking


class NoChampionError(RuntimeError):
    """Nothing to monitor: the registry has no model in service."""


@dataclass(frozen=True)
class Champion:
    name: str
    version: str
    run_id: str
    scorer: FraudScorer
    reference: pd.DataFrame = field(repr=False)
    training_metrics: dict[str, float] = field(default_factory=dict)


def version_in_service(client: MlflowClient, settings: Settings) -> ModelVersion:
    """The version the API serves (stage or alias, as configured), or why there is none."""
    name = settings.mlflow.model_name
    try:
        version = served_version(client, settings)
    except MlflowException as exc:
        raise NoChampionError(f"cannot read model {name!r} from the registry: {exc}") from exc
    if version is None:
        raise NoChampionError(
            f"model {name!r} has no version in service at {settings.tracking_uri}: train and "
            "promote one first"
        )
    return version


def training_metrics(version: ModelVersion) -> dict[str, float]:
    """The held-out test metrics the version was registered with (its `test_*` tags)."""
    metrics = {}
    for key, value in (version.tags or {}).items():
        if key.startswith("test_"):
            try:
                metrics[key.removeprefix("test_")] = float(value)
            except ValueError:
                continue  # test_start / test_end: the window, not a metric
    return metrics


def load_champion(settings: Settings) -> Champion:
    client = configure_tracking(settings)
    version = version_in_service(client, settings)
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path=REFERENCE_ARTIFACT, dst_path=folder
            )
        except (MlflowException, OSError) as exc:
            raise NoChampionError(
                f"{version.name} v{version.version} has no reference sample "
                f"({REFERENCE_ARTIFACT} in run {version.run_id}): retrain it to monitor it"
            ) from exc
        reference = pd.read_parquet(Path(path))
    return Champion(
        name=version.name,
        version=str(version.version),
        run_id=version.run_id,
        scorer=load_scorer(f"models:/{version.name}/{version.version}"),
        reference=reference,
        training_metrics=training_metrics(version),
    )
