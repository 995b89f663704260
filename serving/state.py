"""Online feature state shared by every gunicorn worker: the card and terminal history.

The embedded default is one SQLite file in WAL mode (readers never block the writer, it survives
restarts). `OnlineState` is the small interface a networked store would implement for several
hosts.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

DAY_MS = 86_400_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS transactions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    transaction_id TEXT NOT NULL UNIQUE,
    customer_id TEXT NOT NULL,
    terminal_id TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    amount REAL NOT NULL
);
-- covering indexes: a history read never touches the table itself
CREATE INDEX IF NOT EXISTS transactions_customer_history
    ON transactions (customer_id, ts_ms, seq, amount);
CREATE INDEX IF NOT EXISTS transactions_terminal_history
    ON transactions (terminal_id, ts_ms, seq, transaction_id);
CREATE TABLE IF NOT EXISTS labels (
    transaction_id TEXT PRIMARY KEY,
    label INTEGER NOT NULL CHECK (label IN (0, 1)),
    received_ms INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class History:
    """What one transaction's features need: its card's and its terminal's earlier rows."""

    customer_times_ms: np.ndarray
    customer_amounts: np.ndarray
    terminal_times_ms: np.ndarray
    terminal_labels: np.ndarray
    already_seen: bool


class OnlineState(Protocol):
    def history(
        self, transaction_id: str, customer_id: str, terminal_id: str, ts_ms: int
    ) -> History: ...

    def record(
        self, transaction_id: str, customer_id: str, terminal_id: str, ts_ms: int, amount: float
    ) -> bool: ...

    def add_labels(self, labels: list[tuple[str, int]], received_ms: int) -> int: ...


class SqliteOnlineState:
    """SQLite implementation; one connection per thread, safe across processes."""

    def __init__(
        self, path: Path, customer_window_days: int, terminal_span_days: int, timeout_s: float = 10
    ) -> None:
        self.path = Path(path)
        self.customer_window_ms = customer_window_days * DAY_MS
        self.terminal_span_ms = terminal_span_days * DAY_MS
        self.timeout_s = timeout_s
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(self.path, timeout=timeout_s) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)

    @property
    def connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA busy_timeout=10000")
            self._local.connection = connection
        return connection

    def history(
        self, transaction_id: str, customer_id: str, terminal_id: str, ts_ms: int
    ) -> History:
        """Earlier rows only: a re-sent transaction sees exactly what it saw the first time."""
        db = self.connection
        seen = db.execute(
            "SELECT seq FROM transactions WHERE transaction_id = ?", (transaction_id,)
        ).fetchone()
        before_seq = seen[0] if seen else 2**62
        customer = db.execute(
            "SELECT ts_ms, amount FROM transactions WHERE customer_id = ? AND ts_ms > ? "
            "AND ts_ms <= ? AND seq < ? ORDER BY ts_ms, seq",
            (customer_id, ts_ms - self.customer_window_ms, ts_ms, before_seq),
        ).fetchall()
        terminal = db.execute(
            "SELECT t.ts_ms, l.label FROM transactions t LEFT JOIN labels l "
            "ON l.transaction_id = t.transaction_id WHERE t.terminal_id = ? AND t.ts_ms > ? "
            "AND t.ts_ms <= ? AND t.seq < ?",
            (terminal_id, ts_ms - self.terminal_span_ms, ts_ms, before_seq),
        ).fetchall()
        customer_arr = np.array(customer, dtype=np.float64).reshape(-1, 2)
        terminal_arr = np.array(
            [(t, np.nan if label is None else label) for t, label in terminal], dtype=np.float64
        ).reshape(-1, 2)
        return History(
            customer_arr[:, 0].astype(np.int64),
            customer_arr[:, 1],
            terminal_arr[:, 0].astype(np.int64),
            terminal_arr[:, 1],
            seen is not None,
        )

    def record(
        self, transaction_id: str, customer_id: str, terminal_id: str, ts_ms: int, amount: float
    ) -> bool:
        """Store a scored transaction; False when its id was already stored (not counted twice)."""
        cursor = self.connection.execute(
            "INSERT OR IGNORE INTO transactions "
            "(transaction_id, customer_id, terminal_id, ts_ms, amount) VALUES (?, ?, ?, ?, ?)",
            (transaction_id, customer_id, terminal_id, ts_ms, amount),
        )
        return cursor.rowcount == 1

    def add_labels(self, labels: list[tuple[str, int]], received_ms: int) -> int:
        """Record late fraud labels (idempotent; a corrected label replaces the old one).

        Returns how many of them belong to transactions the state knows."""
        db = self.connection
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO labels (transaction_id, label, received_ms) VALUES (?, ?, ?) "
                "ON CONFLICT (transaction_id) DO UPDATE SET label = excluded.label, "
                "received_ms = excluded.received_ms WHERE labels.label != excluded.label",
                [(tid, int(label), received_ms) for tid, label in labels],
            )
            known = db.execute(
                f"SELECT COUNT(*) FROM transactions WHERE transaction_id IN "
                f"({','.join('?' * len(labels))})",
                [tid for tid, _ in labels],
            ).fetchone()[0]
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return int(known)

    def warm(self, transactions: pd.DataFrame) -> int:
        """Load historical raw transactions (and their labels, if any); returns rows added."""
        times = transactions["tx_datetime"].to_numpy(dtype="datetime64[ms]").astype(np.int64)
        rows = list(
            zip(
                transactions["transaction_id"].astype(str),
                transactions["customer_id"].astype(str),
                transactions["terminal_id"].astype(str),
                times.tolist(),
                transactions["tx_amount"].astype(float).tolist(),
            )
        )
        db = self.connection
        before = db.execute("SELECT COUNT(*) FROM transactions").fetchone()[0]
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR IGNORE INTO transactions "
                "(transaction_id, customer_id, terminal_id, ts_ms, amount) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            if "tx_fraud" in transactions:
                labelled = transactions.dropna(subset=["tx_fraud"])
                db.executemany(
                    "INSERT OR REPLACE INTO labels (transaction_id, label, received_ms) "
                    "VALUES (?, ?, ?)",
                    [
                        (tid, int(label), int(t))
                        for tid, label, t in zip(
                            labelled["transaction_id"].astype(str),
                            labelled["tx_fraud"],
                            labelled["tx_datetime"]
                            .to_numpy(dtype="datetime64[ms]")
                            .astype(np.int64),
                        )
                    ],
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return db.execute("SELECT COUNT(*) FROM transactions").fetchone()[0] - before
