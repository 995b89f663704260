"""The logged model: a pyfunc returning fraud probabilities around a native LightGBM booster.

A native booster text file loads in milliseconds (a skops-pickled sklearn wrapper takes
seconds and its pyfunc returns labels), and it carries its feature list and decision threshold
so every front end scores the same way.
"""

from __future__ import annotations

import ctypes
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow.pyfunc
import numpy as np
import pandas as pd
from lightgbm.basic import _LIB, _c_str, _safe_call

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


class SingleRowContributions:
    """`pred_contrib` for one row through LightGBM's single-row fast C API.

    The same numbers as `FraudScorer.contribution_rows` on a one-row matrix, without the ~0.1 ms
    the Python wrapper spends per call building a predictor; online scoring is one row at a time.
    A FastConfig is not safe for concurrent calls, hence the lock.
    """

    PREDICT_CONTRIB = 3  # C_API_PREDICT_CONTRIB
    DTYPE_FLOAT64 = 1  # C_API_DTYPE_FLOAT64

    def __init__(self, scorer: FraudScorer) -> None:
        self._booster = scorer.booster  # the FastConfig points into it: keep it alive
        width = len(scorer.features)
        self._handle = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                self._booster._handle,
                ctypes.c_int(self.PREDICT_CONTRIB),
                ctypes.c_int(0),
                ctypes.c_int(self._booster.best_iteration),  # as Booster.predict's default
                ctypes.c_int(self.DTYPE_FLOAT64),
                ctypes.c_int32(width),
                _c_str("num_threads=1"),
                ctypes.byref(self._handle),
            )
        )
        # the input and output buffers and their C pointers are made once, not per call
        self._in = np.empty(width)
        self._in_pointer = self._in.ctypes.data_as(ctypes.c_void_p)
        self._out = np.empty(width + 1)
        self._out_pointer = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._out_len = ctypes.c_int64()
        self._out_len_ref = ctypes.byref(self._out_len)
        self._lock = threading.Lock()
        self._width = width

    def __call__(self, row: np.ndarray) -> np.ndarray:
        """Contributions (log-odds) of one row in feature order, bias last."""
        if np.shape(row) != (self._width,):
            raise ValueError(f"expected {self._width} feature values, got shape {np.shape(row)}")
        with self._lock:
            self._in[:] = row
            _safe_call(
                _LIB.LGBM_BoosterPredictForMatSingleRowFast(
                    self._handle, self._in_pointer, self._out_len_ref, self._out_pointer
                )
            )
            return self._out.copy()

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value:
            _LIB.LGBM_FastConfigFree(handle)
            self._handle = None


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


def load_scorer(model_uri: str) -> FraudScorer:
    """Load a registered/logged fraudflow model and reach its booster directly."""
    model = mlflow.pyfunc.load_model(model_uri)
    python_model = model.unwrap_python_model()
    if not isinstance(python_model, FraudModel) or python_model.scorer is None:
        raise ValueError(f"{model_uri} is not a fraudflow model")
    return python_model.scorer
