"""Online scoring: probabilities and per-feature contributions for the API, fast and exact.

Everything that makes the API's scoring faster than `FraudScorer` lives here, each shortcut
proven equal to the plain path when a model is loaded and used only then: one row at a time
goes through LightGBM's single-row fast C API, without the time the Python wrapper spends per
call building a predictor (benchmarks/README.md, "Scale-out data plane"). The probability (a
plain tree walk) and the contributions (TreeSHAP, several times its cost) are separate calls,
so that a caller pays for the contributions only when it uses them.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable

import lightgbm as lgb
import numpy as np
from lightgbm.basic import _LIB, _c_str, _safe_call

from pipelines.model import FraudScorer

log = logging.getLogger(__name__)


class _SingleRowFast:
    """One row through LightGBM's single-row fast C API, for one kind of prediction.

    A FastConfig is not safe for concurrent calls, hence the lock."""

    PREDICT_TYPE = 0  # C_API_PREDICT_NORMAL
    DTYPE_FLOAT64 = 1  # C_API_DTYPE_FLOAT64

    def __init__(self, scorer: FraudScorer, outputs: int) -> None:
        self._booster = scorer.booster  # the FastConfig points into it: keep it alive
        width = len(scorer.features)
        # the output buffer is as long as LightGBM itself says one row's answer is; a model
        # whose answer is not the `outputs` values the caller reads is not used on this path
        sized = self.output_size(self._booster, self.PREDICT_TYPE)
        if sized != outputs:
            raise ValueError(
                f"LightGBM answers {sized} values per row for this model, not {outputs}"
            )
        self._handle = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                self._booster._handle,
                ctypes.c_int(self.PREDICT_TYPE),
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
        self._out = np.empty(sized)
        self._out_pointer = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._out_len = ctypes.c_int64()
        self._out_len_ref = ctypes.byref(self._out_len)
        self._lock = threading.Lock()
        self._width = width

    @staticmethod
    def output_size(booster: lgb.Booster, predict_type: int) -> int:
        """How many doubles LightGBM writes for one row (`LGBM_BoosterCalcNumPredict`)."""
        size = ctypes.c_int64(0)
        _safe_call(
            _LIB.LGBM_BoosterCalcNumPredict(
                booster._handle,
                ctypes.c_int(1),
                ctypes.c_int(predict_type),
                ctypes.c_int(0),
                ctypes.c_int(booster.best_iteration),
                ctypes.byref(size),
            )
        )
        return int(size.value)

    def _predict(self, row: np.ndarray) -> None:
        """Fill `self._out`; the caller holds the lock."""
        if np.shape(row) != (self._width,):
            raise ValueError(f"expected {self._width} feature values, got shape {np.shape(row)}")
        self._in[:] = row
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFast(
                self._handle, self._in_pointer, self._out_len_ref, self._out_pointer
            )
        )
        if self._out_len.value != len(self._out):
            raise RuntimeError(f"LightGBM wrote {self._out_len.value} values, not {len(self._out)}")

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value:
            _LIB.LGBM_FastConfigFree(handle)
            self._handle = None


class SingleRowProbability(_SingleRowFast):
    """`predict` for one row: the same number as `FraudScorer.predict_rows` on a one-row
    matrix."""

    def __init__(self, scorer: FraudScorer) -> None:
        super().__init__(scorer, outputs=1)

    def __call__(self, row: np.ndarray) -> float:
        with self._lock:
            self._predict(row)
            return float(self._out[0])


class SingleRowContributions(_SingleRowFast):
    """`pred_contrib` for one row: the same numbers as `FraudScorer.contribution_rows` on a
    one-row matrix."""

    PREDICT_TYPE = 3  # C_API_PREDICT_CONTRIB

    def __init__(self, scorer: FraudScorer) -> None:
        super().__init__(scorer, outputs=len(scorer.features) + 1)

    def __call__(self, row: np.ndarray) -> np.ndarray:
        """Contributions (log-odds) of one row in feature order, bias last."""
        with self._lock:
            self._predict(row)
            return self._out.copy()


class OnlineScorer:
    """The API's scoring of a loaded model, through the fastest path that was proven exact for
    this model: `probabilities` of rows, and their `contributions` when they are explained."""

    def __init__(self, scorer: FraudScorer) -> None:
        self.scorer = scorer
        self.row_probability = self._proven(SingleRowProbability, scorer.predict_rows)
        self.row_contributions = self._proven(SingleRowContributions, scorer.contribution_rows)

    def _proven(
        self, fast_path: type[_SingleRowFast], matrix_path: Callable[[np.ndarray], np.ndarray]
    ) -> _SingleRowFast | None:
        """The single-row path, only if it gives exactly the matrix path's numbers."""
        try:
            fast = fast_path(self.scorer)
        except Exception as exc:  # an older/newer LightGBM without the fast C API
            log.warning("%s unavailable, using the matrix path: %s", fast_path.__name__, exc)
            return None
        probes = np.random.default_rng(0).uniform(0, 100, size=(64, len(self.scorer.features)))
        probes[::7, ::3] = np.nan
        expected = matrix_path(probes)
        if not all(np.array_equal(fast(row), want) for row, want in zip(probes, expected)):
            log.warning("%s differs from the matrix path; not used", fast_path.__name__)
            return None
        return fast

    def probabilities(self, rows: list[np.ndarray]) -> list[float]:
        """Fraud probabilities of the rows (one row: the single-row path)."""
        if len(rows) == 1 and self.row_probability is not None:
            return [self.row_probability(rows[0])]
        return self.scorer.predict_rows(np.vstack(rows)).tolist()

    def contributions(self, rows: list[np.ndarray]) -> list[list[float]]:
        """Per-feature contributions (log-odds) of the rows, bias left out."""
        if self.row_contributions is not None:
            return [self.row_contributions(row)[:-1].tolist() for row in rows]
        return self.scorer.contribution_rows(np.vstack(rows))[:, :-1].tolist()
