"""Logged models: the model logged with a training run (the booster and its metadata as
artifacts, the pyfunc as code), and what is read back from a logged model or its run, as data.

Nothing that comes from the registry is executed or unpickled here: `load_scorer` checks the
files' sizes in the listing, downloads the booster and the metadata, and `FraudScorer.load`
checks them against the SHA-256 the version was tagged with when it was logged. fraudflow's
jobs load models only that way (the Spark engine too); the pyfunc is for MLflow's own tools.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from importlib.metadata import version as package_version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.store.artifact.utils.models import get_model_name_and_version
from mlflow.tracking import MlflowClient

from pipelines.mlflow.registry import get_version
from pipelines.mlflow.store import use_store
from pipelines.model import (
    ARTIFACTS_FOLDER,
    BOOSTER_FILE,
    MAX_META_BYTES,
    META_FILE,
    SHA256_TAGS,
    FraudScorer,
    ModelArtifactError,
    file_hashes,
)
from pipelines.settings import Settings

log = logging.getLogger(__name__)
# versions already reported as carrying no hashes (logged once per process)
_UNHASHED: set[tuple[str, str]] = set()
REFERENCE_ARTIFACT = "reference/reference.parquet"
MODEL_DEPENDENCIES = ("mlflow", "lightgbm", "pandas", "numpy")
# the pyfunc's code, logged with every model (models-from-code: no pickle)
PYFUNC_CODE = Path(__file__).resolve().parent / "pyfunc_model.py"


def pip_requirements() -> list[str]:
    """What the logged model needs, pinned to the versions that trained it."""
    return [f"{name}=={package_version(name)}" for name in MODEL_DEPENDENCIES]


def log_model(
    scorer: FraudScorer, example: pd.DataFrame, model_name: str, mlflow_client: MlflowClient
) -> ModelVersion:
    """Log the scorer as the active run's `model` (booster and metadata as artifacts, the pyfunc
    as code, a signature from `example`) and register it as a new version of `model_name`."""
    signature = infer_signature(example, scorer.predict_proba(example))
    with tempfile.TemporaryDirectory() as folder:
        artifacts = scorer.save(Path(folder))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts=artifacts,
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            registered_model_name=model_name,
        )
        version = str(info.registered_model_version)
        for name, digest in file_hashes(
            Path(artifacts["booster"]), Path(artifacts["meta"])
        ).items():
            mlflow_client.set_model_version_tag(model_name, version, SHA256_TAGS[name], digest)
    return mlflow_client.get_model_version(model_name, version)


def log_reference(reference: pd.DataFrame) -> None:
    """Log the reference sample (validation features, scores, labels) with the active run."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(REFERENCE_ARTIFACT).name
        reference.to_parquet(path)
        mlflow.log_artifact(str(path), artifact_path=str(Path(REFERENCE_ARTIFACT).parent))


class ModelExportError(RuntimeError):
    """A registered version's model folder could not be copied out of the registry."""


def export_model(settings: Settings, name: str, version: str, output: Path) -> Path:
    """The MLflow model folder of `models:/<name>/<version>` (MLmodel, the booster, its
    environment files) downloaded into `output`, which is replaced: a copy of the model
    outside the MLflow store. PromotionError for an unknown version."""
    get_version(use_store(settings), name, version)
    uri = f"models:/{name}/{version}"
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    try:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(output)))
    except MlflowException as exc:
        raise ModelExportError(f"{uri} could not be downloaded: {exc.message}") from exc
    if not (folder / "MLmodel").is_file():
        raise ModelExportError(f"{uri} downloaded to {folder} holds no MLmodel file")
    return folder


def download_model_files(settings: Settings, model_uri: str, folder: Path) -> tuple[Path, Path]:
    """The booster and metadata files of a logged model (`models:/…`, `runs:/…`), downloaded
    into `folder` as they are stored once the listing shows them within the size limits;
    otherwise unchecked: `FraudScorer.load` checks them."""
    use_store(settings)
    base = f"{model_uri.rstrip('/')}/{ARTIFACTS_FOLDER}"
    check_artifact_sizes(settings, model_uri)
    booster, meta = (
        Path(
            mlflow.artifacts.download_artifacts(artifact_uri=f"{base}/{name}", dst_path=str(folder))
        )
        for name in (BOOSTER_FILE, META_FILE)
    )
    return booster, meta


def check_artifact_sizes(settings: Settings, model_uri: str) -> dict[str, int]:
    """The size of each model file as the artifact store lists it; ModelArtifactError, before
    anything is downloaded, when one is missing or over its limit."""
    use_store(settings)
    listed = {
        Path(info.path).name: info.file_size
        for info in mlflow.artifacts.list_artifacts(
            artifact_uri=f"{model_uri.rstrip('/')}/{ARTIFACTS_FOLDER}"
        )
        if not info.is_dir
    }
    limits = {BOOSTER_FILE: settings.model.max_booster_bytes, META_FILE: MAX_META_BYTES}
    for name, limit in limits.items():
        if name not in listed:
            raise ModelArtifactError(f"the model has no {ARTIFACTS_FOLDER}/{name}")
        size = listed[name]
        if size is not None and size > limit:
            raise ModelArtifactError(f"{name} is listed at {size:,} bytes, over {limit:,}")
    return {name: listed[name] for name in limits}


def expected_hashes(version: ModelVersion) -> dict[str, str]:
    """The SHA-256 of each model file, by file name, as the version was tagged when logged;
    empty for a version logged before fraudflow recorded them (reported once: its files are
    then checked by their shape only)."""
    tags = version.tags or {}
    hashes = {name: tags[tag] for name, tag in SHA256_TAGS.items() if tag in tags}
    if not hashes and (version.name, str(version.version)) not in _UNHASHED:
        _UNHASHED.add((version.name, str(version.version)))
        log.warning(
            "%s v%s carries no %s tags (logged before they were recorded): its files cannot be "
            "checked against them",
            version.name,
            version.version,
            "/".join(SHA256_TAGS.values()),
        )
    return hashes


def resolve_version(settings: Settings, model_uri: str) -> ModelVersion | None:
    """The registered version a `models:/name/…` URI names now (None for other URIs)."""
    if not model_uri.startswith("models:/"):
        return None
    use_store(settings)
    client = MlflowClient()
    resolved = get_model_name_and_version(client, model_uri)
    if len(resolved) != 2:  # models:/<logged model id>: no registered version
        return None
    return client.get_model_version(*resolved)


def load_scorer(settings: Settings, model_uri: str) -> FraudScorer:
    """The booster and metadata of a logged model (`models:/…`, `runs:/…`), read as data and
    checked (`FraudScorer.load`, against the version's SHA-256 tags when it has them): nothing
    logged with the model is executed or unpickled. A stage or alias is resolved to its
    version first, so the files and the tags are those of one version."""
    version = resolve_version(settings, model_uri)
    expected: dict[str, str] = {}
    if version is not None:
        model_uri = f"models:/{version.name}/{version.version}"
        expected = expected_hashes(version)
    with tempfile.TemporaryDirectory() as folder:
        booster, meta = download_model_files(settings, model_uri, Path(folder))
        return FraudScorer.load(booster, meta, settings.model.booster_limits(), expected)


def load_reference(settings: Settings, run_id: str) -> pd.DataFrame:
    """The reference sample a training run logged (validation features, scores, labels)."""
    use_store(settings)
    with tempfile.TemporaryDirectory() as folder:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=REFERENCE_ARTIFACT, dst_path=folder
        )
        return pd.read_parquet(Path(path))
