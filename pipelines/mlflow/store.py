"""The tracking and registry store: clients with an explicit store, the process-wide store of
MLflow's fluent API, experiments by name. Every other module of the edge starts here.

The client, version and error types are MLflow's own, named here for the callers outside the
edge that hold a client, a version or catch a registry error without importing `mlflow`."""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.settings import Settings

__all__ = [
    "MlflowClient",
    "MlflowException",
    "ModelVersion",
    "client",
    "experiment",
    "finite",
    "use_store",
]


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


def experiment(settings: Settings, name: str) -> str:
    """Experiment id by name, created with artifacts under the workdir for the embedded store."""
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None if settings.mlflow.tracking_uri else settings.artifact_root.as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def finite(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics MLflow can hold: numbers, without missing ones."""
    return {k: float(v) for k, v in metrics.items() if v is not None and pd.notna(v)}
