"""What the model in service was trained on, fetched from the registry alone: the version, its
scorer, its reference sample (features, scores, labels) and its training-time metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from pipelines.mlflow import models, runs, store
from pipelines.mlflow.registry import served_version
from pipelines.mlflow.store import MlflowClient, MlflowException, ModelVersion
from pipelines.model import FraudScorer
from pipelines.settings import Settings


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


def load_champion(settings: Settings) -> Champion:
    version = version_in_service(store.client(settings), settings)
    try:
        reference = models.load_reference(settings, version.run_id)
    except (MlflowException, OSError) as exc:
        raise NoChampionError(
            f"{version.name} v{version.version} has no reference sample "
            f"({models.REFERENCE_ARTIFACT} in run {version.run_id}): retrain it to monitor it"
        ) from exc
    return Champion(
        name=version.name,
        version=str(version.version),
        run_id=version.run_id,
        scorer=models.load_scorer(settings, f"models:/{version.name}/{version.version}"),
        reference=reference,
        training_metrics=runs.version_test_metrics(version),
    )
