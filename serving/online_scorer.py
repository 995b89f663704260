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


class SingleRowContributions:
    """`pred_contrib` for one row through LightGBM's single-row fast C API.

    The same numbers as `FraudScorer.contribution_rows` on a one-row matrix. A FastConfig is not
    safe for concurrent calls, hence the lock.
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


class OnlineScorer:
    """The API's scoring of a loaded model: `score` for a batch of rows, with or without
    contributions, through the fastest path that was proven exact for this model."""

    def __init__(self, scorer: FraudScorer) -> None:
        self.scorer = scorer
        self.probability_from_contributions = self._contributions_sum_to_probability()
        self.row_contributions = self._single_row_contributions()

    def _contributions_sum_to_probability(self) -> bool:
        """Probe: does sigmoid(sum of contributions) reproduce predict() for this booster?"""
        probe = np.zeros((1, len(self.scorer.features)))
        derived = sigmoid(self.scorer.contribution_rows(probe).sum(axis=1))
        return bool(np.allclose(derived, self.scorer.predict_rows(probe), rtol=0, atol=1e-12))

    def _single_row_contributions(self) -> SingleRowContributions | None:
        """The fast single-row path, only if it gives exactly the matrix path's numbers."""
        try:
            fast = SingleRowContributions(self.scorer)
        except Exception as exc:  # an older/newer LightGBM without the fast C API
            log.warning("single-row contributions unavailable, using the matrix path: %s", exc)
            return None
        probes = np.random.default_rng(0).uniform(0, 100, size=(64, len(self.scorer.features)))
        probes[::7, ::3] = np.nan
        expected = self.scorer.contribution_rows(probes)
        if not all(np.array_equal(fast(row), want) for row, want in zip(probes, expected)):
            log.warning("single-row contributions differ from the matrix path; not used")
            return None
        return fast

    def score(self, rows: list[np.ndarray], explain: bool) -> tuple[list[float], list[list[float]]]:
        """Probabilities of the rows, and their per-feature contributions (log-odds, bias left
        out) when explaining; empty contribution lists otherwise."""
        if not explain:
            return self.scorer.predict_rows(np.vstack(rows)).tolist(), [[] for _ in rows]
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
