"""The model as data: a native LightGBM booster with its feature list and decision threshold.

A native booster text file loads in milliseconds (a skops-pickled sklearn wrapper takes
seconds and its pyfunc returns labels), and it carries its feature list and decision threshold
so every front end scores the same way. What fraudflow loads from the registry is only these two
files, validated before use: no code from the registry runs here. The MLflow pyfunc logged
beside them (`pipelines/mlflow/pyfunc_model.py`) is for MLflow's own tools and other environments.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from pipelines.booster_check import BoosterLimits, BoosterTextError, check_booster_text

BOOSTER_ARTIFACT = "booster"
META_ARTIFACT = "meta"
BOOSTER_FILE = "booster.txt"
META_FILE = "meta.json"
# the pyfunc keeps its artifacts in this folder of the logged model
ARTIFACTS_FOLDER = "artifacts"
MAX_META_BYTES = 1024 * 1024
# the model version's tags holding the SHA-256 (hex) of each file, set when it is logged;
# meta.json holds the booster's too
BOOSTER_SHA256_TAG = "booster_sha256"
META_SHA256_TAG = "meta_sha256"
SHA256_TAGS = {BOOSTER_FILE: BOOSTER_SHA256_TAG, META_FILE: META_SHA256_TAG}
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
        """Write the booster and its metadata (which records the booster's SHA-256); returns
        the pyfunc artifact mapping."""
        folder.mkdir(parents=True, exist_ok=True)
        booster_path = folder / BOOSTER_FILE
        meta_path = folder / META_FILE
        self.booster.save_model(str(booster_path))
        meta_path.write_text(
            json.dumps(
                {
                    "features": list(self.features),
                    "threshold": self.threshold,
                    BOOSTER_SHA256_TAG: sha256_bytes(booster_path.read_bytes()),
                }
            )
        )
        return {BOOSTER_ARTIFACT: str(booster_path), META_ARTIFACT: str(meta_path)}

    @classmethod
    def load(
        cls,
        booster_path: Path,
        meta_path: Path,
        limits: BoosterLimits = BoosterLimits(),
        expected_sha256: Mapping[str, str] | None = None,
    ) -> "FraudScorer":
        """Read and check the two files (`check_model_files`), then let LightGBM parse the very
        bytes that were checked; anything not in their shape is refused, naming why."""
        return cls.from_checked(check_model_files(booster_path, meta_path, limits, expected_sha256))

    @classmethod
    def from_checked(cls, checked: CheckedFiles) -> "FraudScorer":
        try:
            booster = lgb.Booster(model_str=checked.booster_text)
        except lgb.basic.LightGBMError as exc:
            raise ModelArtifactError(f"{BOOSTER_FILE} does not load: {exc}") from exc
        if (
            tuple(booster.feature_name()) != checked.features
            or booster.num_trees() != checked.trees
        ):
            raise ModelArtifactError(f"{BOOSTER_FILE} loads as another model than it reads")
        return cls(booster, checked.features, checked.threshold)


@dataclass(frozen=True)
class CheckedFiles:
    """The two model files as read and checked, before LightGBM has seen them."""

    booster_text: str
    features: tuple[str, ...]
    threshold: float
    trees: int
    sha256: dict[str, str]


def check_model_files(
    booster_path: Path,
    meta_path: Path,
    limits: BoosterLimits = BoosterLimits(),
    expected_sha256: Mapping[str, str] | None = None,
) -> CheckedFiles:
    """Everything checked before LightGBM sees a byte: each file's size, its SHA-256 against
    `expected_sha256` (file name -> hex, from the model version's tags), the booster's against
    the one meta.json records, the metadata's shape, then the booster text
    (`check_booster_text`) and its feature names against the metadata's."""
    expected = dict(expected_sha256 or {})
    meta_bytes = _read_limited(Path(meta_path), META_FILE, MAX_META_BYTES)
    _verify(META_FILE, meta_bytes, expected.get(META_FILE), "the model version's tag")
    meta = _parse_meta(meta_bytes)
    data = _read_limited(Path(booster_path), BOOSTER_FILE, limits.max_bytes)
    _verify(BOOSTER_FILE, data, expected.get(BOOSTER_FILE), "the model version's tag")
    _verify(BOOSTER_FILE, data, meta.get(BOOSTER_SHA256_TAG), META_FILE)
    features = tuple(meta["features"])
    try:
        shape = check_booster_text(data, limits, features=len(features))
    except BoosterTextError as exc:
        raise ModelArtifactError(f"{BOOSTER_FILE} refused: {exc}") from exc
    if shape.feature_names != features:
        raise ModelArtifactError(
            f"the booster's features {list(shape.feature_names)} are not the metadata's "
            f"{features}"
        )
    return CheckedFiles(
        booster_text=data.decode("ascii"),
        features=features,
        threshold=float(meta["threshold"]),
        trees=shape.trees,
        sha256={BOOSTER_FILE: sha256_bytes(data), META_FILE: sha256_bytes(meta_bytes)},
    )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hashes(booster_path: Path, meta_path: Path) -> dict[str, str]:
    """The SHA-256 of each model file, by file name: what a model version's tags record."""
    return {
        BOOSTER_FILE: sha256_bytes(Path(booster_path).read_bytes()),
        META_FILE: sha256_bytes(Path(meta_path).read_bytes()),
    }


def _read_limited(path: Path, name: str, limit: int) -> bytes:
    size = path.stat().st_size
    if size > limit:
        raise ModelArtifactError(f"{name} is {size:,} bytes, over {limit:,}")
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ModelArtifactError(f"{name} is over {limit:,} bytes")
    return data


def _verify(name: str, data: bytes, expected: object, source: str) -> None:
    if expected is None:
        return
    if not isinstance(expected, str) or not _SHA256.fullmatch(expected):
        raise ModelArtifactError(f"{source} holds no SHA-256 for {name} ({str(expected)[:80]!r})")
    actual = sha256_bytes(data)
    if actual != expected:
        raise ModelArtifactError(
            f"{name} has SHA-256 {actual[:12]}…, not the {expected[:12]}… {source} records "
            "(altered or cut short)"
        )


def _parse_meta(data: bytes) -> dict:
    try:
        meta = json.loads(data.decode("utf-8"))
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
