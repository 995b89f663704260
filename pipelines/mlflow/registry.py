"""Registry access: which version is where (stage, alias), moving and tagging versions.

Promotion policy (gates, comparison, the decision record) is in `pipelines.mlflow.promotion`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.settings import Settings

STAGES = ("Production", "Staging")
# The start of the FutureWarning MLflow gives for every stage call (`get_latest_versions`,
# `transition_model_version_stage`, ...): "``mlflow.….MlflowClient.<call>`` is deprecated since
# 2.9.0. Model registry stages will be removed in a future major release. ..."
STAGE_DEPRECATION = r"``mlflow\.[\w.]+`` is deprecated since [\d.]+\. Model registry stages "


class PromotionError(ValueError):
    """A promotion request that cannot be carried out (unknown version, bad stage, no data), or
    a record of one when no version is in service."""


@contextmanager
def stage_call() -> Iterator[None]:
    """Around one registry stage call: MLflow's deprecation of stages is silenced, because
    fraudflow keeps the Production stage on purpose, the second promotion marker beside the
    champion alias (DESIGN.md, Registered model), and the notice on every promote, poll and
    monitor would tell users nothing they can act on. Every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=STAGE_DEPRECATION, category=FutureWarning)
        yield


def get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise PromotionError(f"model {name!r} has no version {version}") from exc


def champion_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version the alias points to, or None when there is no champion yet."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def served_version(client: MlflowClient, settings: Settings) -> ModelVersion | None:
    """The version the API serves: the Production stage or the champion alias, as
    `mlflow.model_source` says; None when there is none. Registry outages raise."""
    name = settings.mlflow.model_name
    try:
        if settings.mlflow.model_source == "alias":
            return client.get_model_version_by_alias(name, settings.mlflow.champion_alias)
        with stage_call():
            latest = client.get_latest_versions(name, stages=["Production"])
        return latest[0] if latest else None
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def served_uri(settings: Settings) -> str:
    """The model URI of what the API serves (stage or alias, as `mlflow.model_source` says)."""
    name = settings.mlflow.model_name
    if settings.mlflow.model_source == "alias":
        return f"models:/{name}@{settings.mlflow.champion_alias}"
    return f"models:/{name}/Production"


def newest_version(client: MlflowClient, name: str) -> ModelVersion:
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise PromotionError(f"model {name!r} has no registered version: train one first")
    return max(versions, key=lambda v: int(v.version))


def place(
    client: MlflowClient, settings: Settings, version: str, stage: str, holds_alias: bool
) -> None:
    """Move a version to a stage. Production archives the previous Production version and
    moves the champion alias to it; Staging takes the alias away if the version held it."""
    if stage not in STAGES:
        raise PromotionError(f"stage must be one of {STAGES}, not {stage!r}")
    name, alias = settings.mlflow.model_name, settings.mlflow.champion_alias
    promoted = stage == "Production"
    with stage_call():  # the stage is set on purpose: MLflow has no undeprecated call for it
        client.transition_model_version_stage(
            name, version, stage, archive_existing_versions=promoted
        )
    if promoted:
        client.set_registered_model_alias(name, alias, version)
    elif holds_alias:
        client.delete_registered_model_alias(name, alias)


def tag_version(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def append_description(client: MlflowClient, name: str, version: str, line: str) -> None:
    current = client.get_model_version(name, version).description or ""
    client.update_model_version(name, version, description=f"{current}\n{line}".strip())
