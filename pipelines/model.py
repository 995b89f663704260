"""The model as data: a native LightGBM booster with its feature list and decision threshold.

A native booster text file loads in milliseconds (a skops-pickled sklearn wrapper takes
seconds and its pyfunc returns labels), and it carries its feature list and decision threshold
so every front end scores the same way. What fraudflow loads from the registry is only these two
files, validated before use: no code from the registry runs here. The MLflow pyfunc logged
beside them (`pipelines/mlflow/pyfunc_model.py`) is for MLflow's own tools and other environments.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

BOOSTER_ARTIFACT = "booster"
META_ARTIFACT = "meta"
BOOSTER_FILE = "booster.txt"
META_FILE = "meta.json"
# the pyfunc keeps its artifacts in this folder of the logged model
ARTIFACTS_FOLDER = "artifacts"
MAX_BOOSTER_BYTES = 512 * 1024 * 1024
MAX_META_BYTES = 1024 * 1024
MAX_TREES = 100_000


class ModelArtifactError(ValueError):
    """A logged model whose files are not a fraudflow booster and its metadata."""


@dataclass(frozen=True)
class FraudScorer:
    """A booster with its feature order and threshold: what every caller of the model needs."""

    booster: lgb.Booster
    features: tuple[str, ...]
    threshold: float

    def predict_proba(self, features: pd.DataFrame, threads: int = 1) -> np.ndarray:
        """Fraud probabilities for rows of a frame holding at least the model's feature columns.

        One thread by default (an API worker shares its cores); batch callers pass
        `settings.batch.resolved_threads`."""
        missing = [name for name in self.features if name not in features.columns]
        if missing:
            raise ValueError(f"missing feature columns: {missing}")
        matrix = features.loc[:, list(self.features)].to_numpy(dtype=np.float64)
        return self.booster.predict(matrix, num_threads=threads)

    def predict_rows(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities for a float matrix already in feature order (the no-pandas hot path)."""
        return self.booster.predict(matrix, num_threads=1)

    def contribution_rows(self, matrix: np.ndarray) -> np.ndarray:
        """Per-feature contributions (log-odds) for a matrix in feature order, bias last."""
        return self.booster.predict(matrix, pred_contrib=True, num_threads=1)

    def save(self, folder: Path) -> dict[str, str]:
        """Write the booster and its metadata; returns the pyfunc artifact mapping."""
        folder.mkdir(parents=True, exist_ok=True)
        booster_path = folder / BOOSTER_FILE
        meta_path = folder / META_FILE
        self.booster.save_model(str(booster_path))
        meta_path.write_text(
            json.dumps({"features": list(self.features), "threshold": self.threshold})
        )
        return {BOOSTER_ARTIFACT: str(booster_path), META_ARTIFACT: str(meta_path)}

    @classmethod
    def load(cls, booster_path: Path, meta_path: Path) -> "FraudScorer":
        """Read and check the two files; anything not in their shape is refused, naming why."""
        meta = _read_meta(Path(meta_path))
        booster_path = Path(booster_path)
        size = booster_path.stat().st_size
        if size > MAX_BOOSTER_BYTES:
            raise ModelArtifactError(
                f"{BOOSTER_FILE} is {size:,} bytes, over {MAX_BOOSTER_BYTES:,}"
            )
        with booster_path.open("rb") as handle:
            if not handle.read(5) == b"tree\n":
                raise ModelArtifactError(f"{BOOSTER_FILE} is not a LightGBM text model")
        try:
            booster = lgb.Booster(model_file=str(booster_path))
        except lgb.basic.LightGBMError as exc:
            raise ModelArtifactError(f"{BOOSTER_FILE} does not load: {exc}") from exc
        features = tuple(meta["features"])
        if tuple(booster.feature_name()) != features:
            raise ModelArtifactError(
                f"the booster's features {booster.feature_name()} are not the metadata's {features}"
            )
        if not 0 < booster.num_trees() <= MAX_TREES:
            raise ModelArtifactError(f"the booster has {booster.num_trees()} trees")
        return cls(booster, features, float(meta["threshold"]))


def _read_meta(path: Path) -> dict:
    size = path.stat().st_size
    if size > MAX_META_BYTES:
        raise ModelArtifactError(f"{META_FILE} is {size:,} bytes, over {MAX_META_BYTES:,}")
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelArtifactError(f"{META_FILE} is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ModelArtifactError(f"{META_FILE} must be a JSON object")
    features, threshold = meta.get("features"), meta.get("threshold")
    if (
        not isinstance(features, list)
        or not features
        or not all(isinstance(f, str) and f for f in features)
        or len(set(features)) != len(features)
    ):
        raise ModelArtifactError(f"{META_FILE}: 'features' must be a list of distinct names")
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not math.isfinite(threshold)
        or not 0 <= threshold <= 1
    ):
        raise ModelArtifactError(f"{META_FILE}: 'threshold' must be a number in [0, 1]")
    return meta
