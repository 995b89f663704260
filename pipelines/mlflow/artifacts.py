"""A tracking server's artifacts, downloaded and uploaded whole through its artifact API
(mlflow-artifacts:/), for backups and restores."""

from __future__ import annotations

from pathlib import Path

from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from pipelines.mlflow.store import use_store
from pipelines.settings import Settings

SERVER_ROOT = "mlflow-artifacts:/"


def download_from_server(settings: Settings, target: Path) -> Path:
    """Every artifact the tracking server holds, downloaded into `target`."""
    use_store(settings)
    target.mkdir(parents=True, exist_ok=True)
    repository = get_artifact_repository(SERVER_ROOT)
    if repository.list_artifacts():
        repository.download_artifacts("", dst_path=str(target))
    return target


def server_holds_artifacts(settings: Settings) -> bool:
    use_store(settings)
    return bool(get_artifact_repository(SERVER_ROOT).list_artifacts())


def upload_to_server(settings: Settings, source: Path) -> None:
    """Upload the files under `source` to the tracking server's artifact root, paths kept."""
    use_store(settings)
    repository = get_artifact_repository(SERVER_ROOT)
    for child in sorted(Path(source).iterdir()):
        if child.is_dir():
            repository.log_artifacts(str(child), artifact_path=child.name)
        else:
            repository.log_artifact(str(child))
