"""MLflow artifacts: a local artifact folder (the embedded store) copied as files, or a tracking
server's artifacts downloaded and uploaded through its artifact API (mlflow-artifacts:/)."""

from __future__ import annotations

import shutil
from pathlib import Path

from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from pipelines.settings import Settings
from pipelines.tracking import use_store

SERVER_ROOT = "mlflow-artifacts:/"
# MLmodel files (and any small text file) that name the artifact folder by its absolute path
_TEXT_LIMIT = 1_000_000


def copy_local(source: Path, target: Path) -> Path:
    """Copy the artifact folder (files are written once by MLflow and never changed after)."""
    if Path(source).is_dir():
        shutil.copytree(source, target)
    else:
        target.mkdir(parents=True)
    return target


def relocate_files(folder: Path, old: str, new: str) -> int:
    """Rewrite `old` to `new` in the small text files under `folder` (MLmodel's artifact_path
    is an absolute file:// URI); returns the number of files changed."""
    changed = 0
    for path in Path(folder).rglob("*"):
        if not path.is_file() or path.stat().st_size > _TEXT_LIMIT:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if old in text:
            path.write_text(text.replace(old, new))
            changed += 1
    return changed


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
