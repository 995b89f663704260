"""Logged models: the model logged with a training run (the booster and its metadata as
artifacts, the pyfunc as code), and what is read back from a logged model or its run, as data.

Nothing that comes from the registry is executed or unpickled here: `load_scorer` downloads
the booster and the metadata and `FraudScorer.load` checks them. fraudflow's jobs load models
only that way (the Spark engine too); the pyfunc is for MLflow's own tools.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib.metadata import version as package_version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from pipelines.mlflow.registry import get_version
from pipelines.mlflow.store import use_store
from pipelines.model import ARTIFACTS_FOLDER, BOOSTER_FILE, META_FILE, FraudScorer
from pipelines.settings import Settings

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
    return mlflow_client.get_model_version(model_name, str(info.registered_model_version))


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
