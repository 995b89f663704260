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

from pipelines.mlflow.markers import follow, read_markers
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


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version an alias names; None when the alias (or the model) does not exist. Other
    failures (a registry outage) raise: a reader keeps what it has."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def challenger_version(client: MlflowClient, settings: Settings) -> ModelVersion | None:
    """The version `mlflow.challenger_alias` points to (scored beside the champion), or None.
    A registry outage raises."""
    return alias_version(client, settings.mlflow.model_name, settings.mlflow.challenger_alias)


def served_version(client: MlflowClient, settings: Settings) -> ModelVersion | None:
    """The version in service, as `mlflow.model_source` says: the Production stage, the
    champion alias, or (`markers`) whichever of the two names a version, the alias when they
    disagree (a reader without memory: `pipelines.mlflow.markers`). None when there is none.
    Registry outages raise."""
    name = settings.mlflow.model_name
    source = settings.mlflow.model_source
    try:
        if source == "alias":
            return client.get_model_version_by_alias(name, settings.mlflow.champion_alias)
        found = read_markers(client, name, settings.mlflow.champion_alias)
        version = found.stage if source == "stage" else follow(None, found).version
        return client.get_model_version(name, version) if version is not None else None
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def served_uri(settings: Settings) -> str:
    """Where the version in service is named (for messages; `served_version` resolves it)."""
    name = settings.mlflow.model_name
    alias_uri = f"models:/{name}@{settings.mlflow.champion_alias}"
    stage_uri = f"models:/{name}/Production"
    return {"alias": alias_uri, "stage": stage_uri}.get(
        settings.mlflow.model_source, f"{alias_uri} or {stage_uri}"
    )


def served_model_uri(client: MlflowClient, settings: Settings) -> str:
    """A model URI of the version in service that every MLflow loader resolves: the stage or
    alias URI, or (`markers`) the version `served_version` picks, by number."""
    if settings.mlflow.model_source != "markers":
        return served_uri(settings)
    version = served_version(client, settings)
    if version is None:
        name = settings.mlflow.model_name
        raise PromotionError(f"no version of {name!r} is in service (neither marker is set)")
    return f"models:/{version.name}/{version.version}"


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


def enter_production(client: MlflowClient, name: str, version: str) -> None:
    """Transition a version to Production, archiving every other Production version; the
    alias is left as it is."""
    with stage_call():  # the stage is set on purpose: MLflow has no undeprecated call for it
        client.transition_model_version_stage(
            name, version, "Production", archive_existing_versions=True
        )


def tag_version(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def append_description(client: MlflowClient, name: str, version: str, line: str) -> None:
    current = client.get_model_version(name, version).description or ""
    client.update_model_version(name, version, description=f"{current}\n{line}".strip())
