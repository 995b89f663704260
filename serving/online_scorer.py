"""Online scoring: probabilities and per-feature contributions for the API, fast and exact.

Everything that makes the API's scoring faster than `FraudScorer` lives here, each shortcut
proven equal to the plain path when a model is loaded and used only then:
- for the binary objective the contributions (bias included) add up to the raw score, so one
  `pred_contrib` pass gives both: probability = sigmoid(sum of contributions);
- one row at a time goes through LightGBM's single-row fast C API, without the ~0.1 ms the
  Python wrapper spends per call building a predictor.
"""

from __future__ import annotations

import ctypes
import logging
import threading

import numpy as np
from lightgbm.basic import _LIB, _c_str, _safe_call
from scipy.special import expit as sigmoid

from pipelines.model import FraudScorer

log = logging.getLogger(__name__)


class SingleRowFast:
    """One row through LightGBM's single-row fast C API: the probability (`kind` NORMAL) or the
    per-feature contributions, bias last (`kind` CONTRIB).

    The same numbers as `FraudScorer.predict_rows` / `contribution_rows` on a one-row matrix.
    A FastConfig is not safe for concurrent calls, hence the lock.
    """

    NORMAL = 0  # C_API_PREDICT_NORMAL: the probability
    CONTRIB = 3  # C_API_PREDICT_CONTRIB: contributions, bias last
    DTYPE_FLOAT64 = 1  # C_API_DTYPE_FLOAT64

    def __init__(self, scorer: FraudScorer, kind: int) -> None:
        self._booster = scorer.booster  # the FastConfig points into it: keep it alive
        width = len(scorer.features)
        self._handle = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                self._booster._handle,
                ctypes.c_int(kind),
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
        self._out = np.empty(width + 1 if kind == self.CONTRIB else 1)
        self._out_pointer = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._out_len = ctypes.c_int64()
        self._out_len_ref = ctypes.byref(self._out_len)
        self._lock = threading.Lock()
        self._width = width

    def __call__(self, row: np.ndarray) -> np.ndarray:
        """The prediction of one row: [probability], or contributions (log-odds) in feature
        order, bias last."""
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


class OnlineScorer:
    """The API's scoring of a loaded model: `score` for a batch of rows, with or without
    contributions, through the fastest path that was proven exact for this model."""

    def __init__(self, scorer: FraudScorer) -> None:
        self.scorer = scorer
        self.probability_from_contributions = self._contributions_sum_to_probability()
        self.row_contributions = self._single_row(SingleRowFast.CONTRIB)
        self.row_probability = self._single_row(SingleRowFast.NORMAL)

    def _contributions_sum_to_probability(self) -> bool:
        """Probe: does sigmoid(sum of contributions) reproduce predict() for this booster?"""
        probe = np.zeros((1, len(self.scorer.features)))
        derived = sigmoid(self.scorer.contribution_rows(probe).sum(axis=1))
        return bool(np.allclose(derived, self.scorer.predict_rows(probe), rtol=0, atol=1e-12))

    def _single_row(self, kind: int) -> SingleRowFast | None:
        """The fast single-row path of KIND, only if it gives exactly the matrix path's
        numbers on probe rows (missing values included)."""
        what = "contributions" if kind == SingleRowFast.CONTRIB else "probabilities"
        try:
            fast = SingleRowFast(self.scorer, kind)
        except Exception as exc:  # an older/newer LightGBM without the fast C API
            log.warning("single-row %s unavailable, using the matrix path: %s", what, exc)
            return None
        probes = np.random.default_rng(0).uniform(0, 100, size=(64, len(self.scorer.features)))
        probes[::7, ::3] = np.nan
        if kind == SingleRowFast.CONTRIB:
            expected = self.scorer.contribution_rows(probes)
        else:
            expected = self.scorer.predict_rows(probes).reshape(-1, 1)
        if not all(np.array_equal(fast(row), want) for row, want in zip(probes, expected)):
            log.warning("single-row %s differ from the matrix path; not used", what)
            return None
        return fast

    def probabilities(self, matrix: np.ndarray) -> list[float]:
        """Probabilities of the rows of a float matrix in feature order (one row: fast path)."""
        if len(matrix) == 1 and self.row_probability is not None:
            return [float(self.row_probability(matrix[0])[0])]
        return self.scorer.predict_rows(matrix).tolist()

    def score(self, rows: list[np.ndarray], explain: bool) -> tuple[list[float], list[list[float]]]:
        """Probabilities of the rows, and their per-feature contributions (log-odds, bias left
        out) when explaining; empty contribution lists otherwise."""
        if not explain:
            return self.probabilities(np.vstack(rows)), [[] for _ in rows]
        if self.row_contributions is not None and self.probability_from_contributions:
            probabilities, contributions = [], []
            for row in rows:
                values = self.row_contributions(row).tolist()
                probabilities.append(float(sigmoid(sum(values))))
                contributions.append(values[:-1])
            return probabilities, contributions
        matrix = np.vstack(rows)
        values = self.scorer.contribution_rows(matrix)
        if self.probability_from_contributions:
            probabilities = sigmoid(values.sum(axis=1))
        else:
            probabilities = self.scorer.predict_rows(matrix)
        return probabilities.tolist(), values[:, :-1].tolist()
