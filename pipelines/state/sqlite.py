"""The online state in one SQLite file in WAL mode (readers never block the writer, it survives
restarts): the embedded default, for one host. Its schema and the migration of older files."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.settings import Settings
from pipelines.state.protocol import (
    DAY_MS,
    LABEL_COLUMNS,
    CanaryWindow,
    History,
    RoleCounts,
    stop_record_from_text,
)

SCHEMA = (
    # seq is the arrival order: rows are never deleted, so a plain INTEGER PRIMARY KEY only grows
    # (files created before this kept AUTOINCREMENT, which costs a sqlite_sequence write per row)
    """CREATE TABLE IF NOT EXISTS transactions (
        seq INTEGER PRIMARY KEY,
        transaction_id TEXT NOT NULL UNIQUE,
        customer_id TEXT NOT NULL,
        terminal_id TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        amount REAL NOT NULL,
        -- a copy of labels.label (NULL: unknown), so a terminal's history needs no join
        label INTEGER
    )""",
    """CREATE TABLE IF NOT EXISTS labels (
        transaction_id TEXT PRIMARY KEY,
        label INTEGER NOT NULL CHECK (label IN (0, 1)),
        received_ms INTEGER NOT NULL
    )""",
    # the canary guard's counters: one row per counter of a role in a time bucket, added to by
    # every worker of the host; buckets older than the window go as counts are added
    """CREATE TABLE IF NOT EXISTS canary_counts (
        bucket_s INTEGER NOT NULL,
        version TEXT NOT NULL,
        role TEXT NOT NULL,
        counter TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (bucket_s, version, role, counter)
    ) WITHOUT ROWID""",
    # a challenger version's canary stop: written once, the first writer wins
    """CREATE TABLE IF NOT EXISTS canary_stops (
        version TEXT PRIMARY KEY,
        record TEXT NOT NULL
    )""",
)


# covering indexes: a history read never touches the table itself
INDEXES = (
    "CREATE INDEX IF NOT EXISTS transactions_customer_history "
    "ON transactions (customer_id, ts_ms, seq, amount)",
    "CREATE INDEX IF NOT EXISTS transactions_terminal_labels "
    "ON transactions (terminal_id, ts_ms, seq, label)",
)


# files written before the label column: add it, fill it from the labels table, swap the index
MIGRATE_LABEL_COLUMN = (
    "ALTER TABLE transactions ADD COLUMN label INTEGER",
    "UPDATE transactions SET label = (SELECT l.label FROM labels l "
    "WHERE l.transaction_id = transactions.transaction_id) "
    "WHERE transaction_id IN (SELECT transaction_id FROM labels)",
    "DROP INDEX IF EXISTS transactions_terminal_history",
)


INSERT_TRANSACTION = (
    "INSERT OR IGNORE INTO transactions "
    "(transaction_id, customer_id, terminal_id, ts_ms, amount, label) VALUES "
    "(?1, ?2, ?3, ?4, ?5, (SELECT label FROM labels WHERE transaction_id = ?1))"
)


# a label (first parameter) copied onto its transaction's row (second), when it differs
COPY_LABEL = "UPDATE transactions SET label = ?1 WHERE transaction_id = ?2 AND label IS NOT ?1"


SELECT_SEQ = "SELECT seq FROM transactions WHERE transaction_id = ?"


SELECT_CUSTOMER = (
    "SELECT ts_ms, amount FROM transactions WHERE customer_id = ? AND ts_ms > ? "
    "AND ts_ms <= ? AND seq < ? ORDER BY ts_ms, seq"
)


SELECT_TERMINAL = (
    "SELECT ts_ms, label FROM transactions WHERE terminal_id = ? AND ts_ms > ? "
    "AND ts_ms <= ? AND seq < ? ORDER BY ts_ms, seq"
)


class SqliteOnlineState:
    """SQLite implementation; one connection per thread, safe across processes."""

    def __init__(
        self,
        path: Path,
        customer_window_days: int,
        terminal_span_days: int,
        timeout_s: float = 10,
        terminal_delay_days: int = 0,
    ) -> None:
        self.path = Path(path)
        self.customer_window_ms = customer_window_days * DAY_MS
        self.terminal_span_ms = terminal_span_days * DAY_MS
        # a terminal's rows newer than the label delay never enter a feature: not read
        self.terminal_delay_ms = terminal_delay_days * DAY_MS
        self.timeout_s = timeout_s
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._create_or_migrate()

    def _create_or_migrate(self) -> None:
        """Create the schema, or bring a file from before the label column up to date."""
        db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN IMMEDIATE")  # one worker migrates, the others wait and see it done
            try:
                for statement in SCHEMA:
                    db.execute(statement)
                columns = {row[1] for row in db.execute("PRAGMA table_info(transactions)")}
                if "label" not in columns:
                    for statement in MIGRATE_LABEL_COLUMN:
                        db.execute(statement)
                for statement in INDEXES:
                    db.execute(statement)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.close()

    @property
    def connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
            # in WAL mode NORMAL loses nothing when a process is killed (only on power loss)
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA busy_timeout=10000")
            self._local.connection = connection
        return connection

    def observe(
        self, transaction_id: str, customer_id: str, terminal_id: str, ts_ms: int, amount: float
    ) -> History:
        """Store a transaction (once) and return its history: the rows stored before it.

        One insert and two reads: the new row's own `seq` bounds the reads, so rows another
        worker stores meanwhile are never seen, and a re-sent id is not stored again and sees
        exactly what it saw the first time. A label that arrived before its transaction is
        copied onto the row as it is stored."""
        db = self.connection
        cursor = db.execute(
            INSERT_TRANSACTION, (transaction_id, customer_id, terminal_id, ts_ms, amount)
        )
        if cursor.rowcount == 1:
            return self._earlier(db, customer_id, terminal_id, ts_ms, cursor.lastrowid, False)
        (seq,) = db.execute(SELECT_SEQ, (transaction_id,)).fetchone()
        return self._earlier(db, customer_id, terminal_id, ts_ms, seq, True)

    def _earlier(
        self,
        db: sqlite3.Connection,
        customer_id: str,
        terminal_id: str,
        ts_ms: int,
        before_seq: int,
        seen: bool,
    ) -> History:
        """The card's and the terminal's rows stored before `before_seq`, in time order."""
        customer = db.execute(
            SELECT_CUSTOMER, (customer_id, ts_ms - self.customer_window_ms, ts_ms, before_seq)
        ).fetchall()
        terminal = db.execute(
            SELECT_TERMINAL,
            (
                terminal_id,
                ts_ms - self.terminal_span_ms,
                ts_ms - self.terminal_delay_ms,
                before_seq,
            ),
        ).fetchall()
        customer_times, customer_amounts = zip(*customer) if customer else ((), ())
        terminal_times, terminal_labels = zip(*terminal) if terminal else ((), ())
        return History(customer_times, customer_amounts, terminal_times, terminal_labels, seen)

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
            db.executemany(
                COPY_LABEL,
                [(int(label), tid) for tid, label in labels],
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
        labels: list[tuple[str, int, int]] = []
        if "tx_fraud" in transactions:
            labelled = transactions.dropna(subset=["tx_fraud"])
            labels = [
                (tid, int(label), int(t))
                for tid, label, t in zip(
                    labelled["transaction_id"].astype(str),
                    labelled["tx_fraud"],
                    labelled["tx_datetime"].to_numpy(dtype="datetime64[ms]").astype(np.int64),
                )
            ]
        db = self.connection
        before = db.execute("SELECT COUNT(*) FROM transactions").fetchone()[0]
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO labels (transaction_id, label, received_ms) "
                "VALUES (?, ?, ?)",
                labels,
            )
            db.executemany(INSERT_TRANSACTION, rows)
            db.executemany(  # rows stored before this warm take the new labels too
                COPY_LABEL,
                [(label, tid) for tid, label, _ in labels],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return db.execute("SELECT COUNT(*) FROM transactions").fetchone()[0] - before

    def labels(self) -> pd.DataFrame:
        """Every label received (`transaction_id`, `tx_fraud`)."""
        return read_sqlite_labels(self.path, self.timeout_s)

    def add_canary_counts(
        self, version: str, bucket_s: int, counts: Mapping[str, RoleCounts], keep_s: int
    ) -> None:
        """Add a worker's counts to a bucket and drop the buckets older than `keep_s` before
        it, in one write transaction."""
        rows = [
            (bucket_s, version, role, counter, count)
            for role, figures in counts.items()
            for counter, count in figures.counters().items()
        ]
        db = self.connection
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO canary_counts (bucket_s, version, role, counter, count) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (bucket_s, version, role, counter) "
                "DO UPDATE SET count = count + excluded.count",
                rows,
            )
            db.execute("DELETE FROM canary_counts WHERE bucket_s < ?", (bucket_s - keep_s,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def canary_window(self, version: str, bucket_starts: Sequence[int]) -> CanaryWindow:
        """Each role's counts summed over the given buckets, and the version's stop record."""
        db = self.connection
        starts = [int(start) for start in bucket_starts]
        counters: dict[str, dict[str, int]] = {}
        if starts:
            rows = db.execute(
                "SELECT role, counter, SUM(count) FROM canary_counts WHERE version = ? "
                f"AND bucket_s IN ({','.join('?' * len(starts))}) GROUP BY role, counter",
                [version, *starts],
            ).fetchall()
            for role, counter, total in rows:
                counters.setdefault(role, {})[counter] = int(total)
        stop = db.execute(
            "SELECT record FROM canary_stops WHERE version = ?", (version,)
        ).fetchone()
        return CanaryWindow(
            {role: RoleCounts.from_counters(values) for role, values in counters.items()},
            None if stop is None else stop_record_from_text(version, stop[0]),
        )

    def record_canary_stop(self, version: str, record: Mapping[str, Any]) -> dict[str, Any]:
        """Write the version's stop record unless one is there; returns the one that stands."""
        db = self.connection
        db.execute(
            "INSERT INTO canary_stops (version, record) VALUES (?, ?) "
            "ON CONFLICT (version) DO NOTHING",
            (version, json.dumps(dict(record), sort_keys=True)),
        )
        (text,) = db.execute(
            "SELECT record FROM canary_stops WHERE version = ?", (version,)
        ).fetchone()
        return stop_record_from_text(version, text)

    def check(self) -> None:
        """A local file: nothing to reach."""

    def size_bytes(self) -> float | None:
        """Bytes of the database with its -wal and -shm files."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += Path(f"{self.path}{suffix}").stat().st_size
            except FileNotFoundError:
                continue
        return float(total)

    def prune(self, keep_ms: int, labels_received_before_ms: int) -> "Pruned":
        """Delete the transactions older than `keep_ms` before the newest one (`retention_ms`:
        no feature of a later transaction reads them), and the labels received before
        `labels_received_before_ms` whose transaction is gone. In small batches, each its own
        write transaction, so that /predict waits for one batch at most."""
        db = self.connection
        newest = db.execute("SELECT MAX(ts_ms) FROM transactions").fetchone()[0]
        transactions = 0
        if newest is not None:
            transactions = self._delete_batches(
                "DELETE FROM transactions WHERE seq IN (SELECT seq FROM transactions "
                "WHERE ts_ms < ? LIMIT ?)",
                newest - keep_ms,
            )
        labels = self._delete_batches(
            "DELETE FROM labels WHERE transaction_id IN (SELECT l.transaction_id FROM labels l "
            "WHERE l.received_ms < ? AND NOT EXISTS (SELECT 1 FROM transactions t "
            "WHERE t.transaction_id = l.transaction_id) LIMIT ?)",
            labels_received_before_ms,
        )
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return Pruned(transactions, labels)

    def _delete_batches(self, statement: str, bound: int, batch: int = 5000) -> int:
        deleted = 0
        while True:
            count = self.connection.execute(statement, (bound, batch)).rowcount
            deleted += count
            if count < batch:
                return deleted


@dataclass(frozen=True)
class Pruned:
    """Rows a prune deleted."""

    transactions: int
    labels: int


def read_sqlite_labels(path: Path, timeout_s: float = 10) -> pd.DataFrame:
    """The labels of a SQLite state file, through a read-only connection: a reader beside a
    running API takes no write lock and never creates or migrates the file."""
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=timeout_s)) as db:
        rows = db.execute("SELECT transaction_id, label FROM labels").fetchall()
    return pd.DataFrame(rows, columns=LABEL_COLUMNS).astype(
        {"transaction_id": str, "tx_fraud": int}
    )


def open_sqlite_state(settings: Settings, retention_days: int) -> SqliteOnlineState:
    """The SQLite state file of the settings, with the feature settings' window spans (rows
    past `retention_days` go at `prune`, not as it writes)."""
    features = settings.features
    return SqliteOnlineState(
        settings.under_workdir(settings.state.sqlite_path),
        customer_window_days=features.customer_history_days,
        terminal_span_days=features.terminal_history_days,
        terminal_delay_days=features.label_delay_days,
    )


def sqlite_labels(settings: Settings, retention_days: int) -> pd.DataFrame:
    """The labels of the settings' state file, read only; empty when the API never ran here
    (no state file is created just to be read)."""
    path = settings.under_workdir(settings.state.sqlite_path)
    if not path.is_file():
        return pd.DataFrame(columns=LABEL_COLUMNS)
    return read_sqlite_labels(path)
