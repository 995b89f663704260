"""Point-in-time features over an input streamed in time-ordered chunks, with bounded memory.

Between chunks only the rows some window can still reach are kept: those newer than the last
row seen minus the longest history a feature looks at (the card's longest window + the
large-amount window, or the label delay + the terminal's longest window). With each card's
running spend carried across (`build_features_carried`), every chunk's features equal, bit for
bit, what `build_features` gives for the same rows over the whole input at once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.features import DAY_MS, SPEND_STATE, build_features_carried
from pipelines.settings import FeatureSettings

KEPT_COLUMNS = ("tx_datetime", "customer_id", "terminal_id", "tx_amount", "tx_fraud")


class OutOfOrderError(ValueError):
    """A chunk holding rows older than rows of an earlier chunk."""


def history_ms(settings: FeatureSettings) -> int:
    """How far back, from a transaction, any of its features reaches."""
    return max(settings.customer_history_days, settings.terminal_history_days) * DAY_MS


class StreamingFeatures:
    """Feed chunks in time order (`push`); each returns its own rows' features.

    Holds at most the history span's rows plus one chunk (`held_rows` after a push is the
    history kept), and one running-spend state per card seen.
    """

    def __init__(self, settings: FeatureSettings, parallel: bool = False) -> None:
        self.settings = settings
        self.parallel = parallel
        self.history = pd.DataFrame()
        self.spend_seed = pd.DataFrame(columns=list(SPEND_STATE), dtype=np.float64)
        self.last_ms: int | None = None
        self.peak_rows = 0

    @property
    def held_rows(self) -> int:
        return len(self.history)

    def push(self, chunk: pd.DataFrame) -> pd.DataFrame:
        """Features of `chunk`'s rows (its index kept), from the history before it and itself.

        `chunk` must be sorted by time, its first row no older than the last row pushed before.
        """
        if chunk.empty:
            return build_features_carried(chunk, self.settings)[0]
        times = chunk["tx_datetime"].to_numpy(dtype="datetime64[ms]").astype(np.int64)
        if self.last_ms is not None and int(times[0]) < self.last_ms:
            raise OutOfOrderError(
                f"rows from {chunk['tx_datetime'].iloc[0]} come after rows up to "
                f"{pd.Timestamp(self.last_ms, unit='ms')} of an earlier chunk: batch scoring reads "
                "files in name order, chunk by chunk, and needs them in time order (e.g. one "
                "file per day named by date), or batch.chunk_rows above the input's row count"
            )
        kept = [c for c in KEPT_COLUMNS if c in chunk.columns]
        current = chunk.loc[:, kept]
        if "tx_fraud" not in current:
            current = current.assign(tx_fraud=np.nan)
        if self.history.empty:
            combined = current.reset_index(drop=True)
        else:
            combined = pd.concat([self.history, current], ignore_index=True)
        self.peak_rows = max(self.peak_rows, len(combined))
        features, state = build_features_carried(
            combined, self.settings, self.spend_seed, self.parallel
        )
        start = len(self.history)
        result = features.iloc[start:]
        result.index = chunk.index
        self._keep_history(combined, state, int(times[-1]))
        return result

    def _keep_history(self, combined: pd.DataFrame, state: np.ndarray, last_ms: int) -> None:
        """Drop the rows no later window can reach; carry the dropped cards' running spend."""
        self.last_ms = last_ms
        times = combined["tx_datetime"].to_numpy(dtype="datetime64[ms]").astype(np.int64)
        # combined is in time order: the rows to drop are a prefix
        cut = int(np.searchsorted(times, last_ms - history_ms(self.settings), side="right"))
        if cut == 0:
            self.history = combined
            return
        dropped = pd.DataFrame(
            state[:cut], columns=list(SPEND_STATE), index=combined["customer_id"].iloc[:cut]
        )
        last_of_card = dropped[~dropped.index.duplicated(keep="last")]
        seeds = pd.concat([self.spend_seed, last_of_card])
        self.spend_seed = seeds[~seeds.index.duplicated(keep="last")]
        self.history = combined.iloc[cut:].reset_index(drop=True)
