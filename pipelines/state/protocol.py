"""The online feature state's protocol: what every backend implements and what callers (the
API's /predict and /feedback, `fraudflow warm`, monitoring and retraining) rely on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import pandas as pd

DAY_MS = 86_400_000


LABEL_COLUMNS = ["transaction_id", "tx_fraud"]


class StateUnavailable(RuntimeError):
    """The state cannot be read or written now (its server is down, restarting or loading);
    the message says so without internals and the API answers 503 with it."""


@dataclass(frozen=True)
class History:
    """What one transaction's features need: its card's and its terminal's earlier rows."""

    customer_times_ms: Sequence[int]
    customer_amounts: Sequence[float]
    terminal_times_ms: Sequence[int]
    terminal_labels: Sequence[int | None]
    already_seen: bool


class OnlineState(Protocol):
    """What callers need of a state: `observe` on /predict, `add_labels` on /feedback, `warm`
    for history loaded in bulk, `labels` for monitoring and retraining, `check` for /ready,
    `size_bytes` for /metrics. Any of them but `size_bytes` raises StateUnavailable when the
    state's server cannot be reached."""

    def observe(
        self, transaction_id: str, customer_id: str, terminal_id: str, ts_ms: int, amount: float
    ) -> History: ...

    def add_labels(self, labels: list[tuple[str, int]], received_ms: int) -> int: ...

    def warm(self, transactions: pd.DataFrame) -> int: ...

    def labels(self) -> pd.DataFrame: ...

    def check(self) -> None: ...

    def size_bytes(self) -> float | None: ...
