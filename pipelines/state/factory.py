"""The online state the settings name (`state.backend`), opened by name: one entry per
backend in `BACKENDS`, so adding a backend touches no other. Also the retention every backend
applies and the labels monitoring and retraining read."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pandas as pd

from pipelines.settings import Settings
from pipelines.state.protocol import DAY_MS, OnlineState
from pipelines.state.redis import open_redis_state, redis_labels
from pipelines.state.sqlite import open_sqlite_state, sqlite_labels


class Backend(NamedTuple):
    """How to open a backend's state, and how to read its labels without writing to it."""

    open: Callable[[Settings, int], OnlineState]
    labels: Callable[[Settings, int], pd.DataFrame]


BACKENDS: dict[str, Backend] = {
    "sqlite": Backend(open_sqlite_state, sqlite_labels),
    "redis": Backend(open_redis_state, redis_labels),
}


def retention_ms(settings: Settings) -> int:
    """How long before the newest transaction a state keeps rows (`retention_days`). Every
    backend applies this one rule: SQLite in `prune`, Redis as it writes."""
    return retention_days(settings) * DAY_MS


def retention_days(settings: Settings) -> int:
    """How long a row is kept: the longest history any feature reads, the label delay on top
    (a label may still arrive for it) and the configured margin
    (`state.retention_margin_days`: transactions that arrive out of order, a delayed
    batch or a clock skew between hosts, still see their full history)."""
    features = settings.features
    longest = max(features.customer_history_days, features.terminal_history_days)
    return longest + features.label_delay_days + settings.state.retention_margin_days


def open_state(settings: Settings) -> OnlineState:
    """The configured online state (`state.backend`), with window spans taken from the
    feature settings."""
    return BACKENDS[settings.state.backend].open(settings, retention_days(settings))


def received_labels(settings: Settings) -> pd.DataFrame:
    """The labels /feedback received, as monitoring and retraining read them."""
    return BACKENDS[settings.state.backend].labels(settings, retention_days(settings))
