"""The online feature state's protocol: what every backend implements and what callers (the
API's /predict and /feedback, `fraudflow warm`, monitoring and retraining) rely on."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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


# a latency histogram bin's stored counter name: this prefix and the bin's index
LATENCY_FIELD = "latency:"


@dataclass(frozen=True)
class RoleCounts:
    """One role's canary figures (champion or challenger) over some buckets: the transactions
    it was asked to decide, those it failed on and those it declined, and its request latencies
    as a histogram (bin index -> requests; the bins' edges belong to the guard, the state only
    adds them up). Counts add, so workers and hosts can each write theirs."""

    transactions: int = 0
    errors: int = 0
    declines: int = 0
    latency_bins: Mapping[int, int] = field(default_factory=dict)

    def __add__(self, other: RoleCounts) -> RoleCounts:
        bins = dict(self.latency_bins)
        for index, count in other.latency_bins.items():
            bins[index] = bins.get(index, 0) + count
        return RoleCounts(
            self.transactions + other.transactions,
            self.errors + other.errors,
            self.declines + other.declines,
            bins,
        )

    def counters(self) -> dict[str, int]:
        """The non-zero counters by their stored names: what a backend adds to a bucket."""
        stored = {
            "transactions": self.transactions,
            "errors": self.errors,
            "declines": self.declines,
            **{f"{LATENCY_FIELD}{i}": count for i, count in self.latency_bins.items()},
        }
        return {name: int(count) for name, count in stored.items() if count}

    @classmethod
    def from_counters(cls, counters: Mapping[str, int]) -> RoleCounts:
        """The figures from stored counters (summed over buckets); unknown names are skipped."""
        bins = {
            int(name[len(LATENCY_FIELD) :]): int(count)
            for name, count in counters.items()
            if name.startswith(LATENCY_FIELD) and name[len(LATENCY_FIELD) :].isdigit()
        }
        return cls(
            int(counters.get("transactions", 0)),
            int(counters.get("errors", 0)),
            int(counters.get("declines", 0)),
            bins,
        )


@dataclass(frozen=True)
class CanaryWindow:
    """What a guard reads in one go: each role's counts summed over the window's buckets, and
    the challenger version's stop record if any worker or host wrote one."""

    counts: Mapping[str, RoleCounts]
    stop: dict[str, Any] | None


def stop_record_from_text(version: str, text: str | bytes) -> dict[str, Any]:
    """A stored stop record, read as data. A record that is not a JSON object still stops the
    canary (the stop stands whatever its text): its reason then says it was unreadable."""
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return {"version": version, "reason": "the stop record is unreadable"}
    return record


class CanaryLedger(Protocol):
    """The canary guard's shared figures, kept per challenger version in the online state (the
    store every worker and host already shares), so that all of them judge the same window and
    see the same stop. Buckets are identified by their start (Unix seconds); each is dropped
    `keep_s` seconds after it; the stop record of a version is written once (the first writer
    wins) and kept. Each method is one round trip to a networked state and raises
    StateUnavailable (Redis) or sqlite3.Error (SQLite) when it fails."""

    def add_canary_counts(
        self, version: str, bucket_s: int, counts: Mapping[str, RoleCounts], keep_s: int
    ) -> None: ...

    def canary_window(self, version: str, bucket_starts: Sequence[int]) -> CanaryWindow: ...

    def record_canary_stop(self, version: str, record: Mapping[str, Any]) -> dict[str, Any]: ...


class OnlineState(CanaryLedger, Protocol):
    """What callers need of a state: `observe` on /predict, `add_labels` on /feedback, `warm`
    for history loaded in bulk, `labels` for monitoring and retraining, `check` for /ready,
    `size_bytes` for /metrics, and the canary guard's ledger (`CanaryLedger`). Any of them but
    `size_bytes` raises StateUnavailable when the state's server cannot be reached."""

    def observe(
        self, transaction_id: str, customer_id: str, terminal_id: str, ts_ms: int, amount: float
    ) -> History: ...

    def add_labels(self, labels: list[tuple[str, int]], received_ms: int) -> int: ...

    def warm(self, transactions: pd.DataFrame) -> int: ...

    def labels(self) -> pd.DataFrame: ...

    def check(self) -> None: ...

    def size_bytes(self) -> float | None: ...
