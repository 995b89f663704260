"""`fraudflow warm`: load historical transactions into the online feature state.

Reads: raw transactions (labels optional). Produces: rows in the serving state, so the first
live transactions of a card or terminal already have their history.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pandas as pd

from pipelines.data import load_transactions
from pipelines.settings import Settings, load_settings
from serving.state import SqliteOnlineState


def open_state(settings: Settings) -> SqliteOnlineState:
    """The configured online state, with window spans taken from the feature settings."""
    features = settings.features
    return SqliteOnlineState(
        settings.under_workdir(settings.serving.state_path),
        customer_window_days=features.customer_history_days,
        terminal_span_days=features.terminal_history_days,
        terminal_delay_days=features.label_delay_days,
    )


def warm(settings: Settings, transactions: pd.DataFrame) -> int:
    return open_state(settings).warm(transactions)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fraudflow warm", description=__doc__)
    parser.add_argument("--config")
    parser.add_argument("--data")
    args = parser.parse_args(argv)
    settings = load_settings(args.config or None)
    path = args.data or settings.data_path
    transactions = load_transactions(path, settings.data.columns)
    added = warm(settings, transactions)
    print(f"online state: {added} transactions added ({len(transactions)} read from {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
