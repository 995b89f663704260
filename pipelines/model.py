"""The logged model: a pyfunc returning fraud probabilities around a native LightGBM booster.

A native booster text file loads in milliseconds (a skops-pickled sklearn wrapper takes
seconds and its pyfunc returns labels), and it carries its feature list and decision threshold
so every front end scores the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow.pyfunc
import numpy as np
import pandas as pd

BOOSTER_ARTIFACT = "booster"
META_ARTIFACT = "meta"


@dataclass(frozen=True)
class FraudScorer:
    """A booster with its feature order and threshold: what every caller of the model needs."""

    booster: lgb.Booster
    features: tuple[str, ...]
    threshold: float

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """Fraud probabilities for rows of a frame holding at least the model's feature columns."""
        missing = [name for name in self.features if name not in features.columns]
        if missing:
            raise ValueError(f"missing feature columns: {missing}")
        matrix = features.loc[:, list(self.features)].to_numpy(dtype=np.float64)
        return self.booster.predict(matrix, num_threads=1)

    def predict_rows(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities for a float matrix already in feature order (the no-pandas hot path)."""
        return self.booster.predict(matrix, num_threads=1)

    def contribution_rows(self, matrix: np.ndarray) -> np.ndarray:
        """Per-feature contributions (log-odds) for a matrix in feature order, bias last."""
        return self.booster.predict(matrix, pred_contrib=True, num_threads=1)

    def save(self, folder: Path) -> dict[str, str]:
        """Write the booster and its metadata; returns the pyfunc artifact mapping."""
        folder.mkdir(parents=True, exist_ok=True)
        booster_path = folder / "booster.txt"
        meta_path = folder / "meta.json"
        self.booster.save_model(str(booster_path))
        meta_path.write_text(
            json.dumps({"features": list(self.features), "threshold": self.threshold})
        )
        return {BOOSTER_ARTIFACT: str(booster_path), META_ARTIFACT: str(meta_path)}

    @classmethod
    def load(cls, booster_path: str, meta_path: str) -> "FraudScorer":
        meta = json.loads(Path(meta_path).read_text())
        booster = lgb.Booster(model_file=booster_path)
        return cls(booster, tuple(meta["features"]), float(meta["threshold"]))


class FraudModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc whose predict returns fraud probabilities (not 0/1 labels)."""

    def __init__(self) -> None:
        self.scorer: FraudScorer | None = None

    def load_context(self, context: Any) -> None:
        self.scorer = FraudScorer.load(
            context.artifacts[BOOSTER_ARTIFACT], context.artifacts[META_ARTIFACT]
        )

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> np.ndarray:
        if self.scorer is None:
            self.load_context(context)
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        return self.scorer.predict_proba(model_input)
