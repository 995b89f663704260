"""The online state's label copy on each transaction row stays equal to the labels table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from pipelines.state.sqlite import SqliteOnlineState

DAY_MS = 86_400_000


def open_state(path: Path) -> SqliteOnlineState:
    return SqliteOnlineState(
        path, customer_window_days=44, terminal_span_days=37, terminal_delay_days=7
    )


def label_copies_disagree(path: Path) -> int:
    """Transactions whose copied label differs from the labels table (NULL: no label)."""
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT COUNT(*) FROM transactions t LEFT JOIN labels l "
            "ON l.transaction_id = t.transaction_id WHERE t.label IS NOT l.label"
        ).fetchone()[0]


def terminal_labels(state: SqliteOnlineState, terminal: str, at_ms: int) -> dict[int, object]:
    """What a new transaction on the terminal at `at_ms` sees of its matured rows (the probe
    is stored too, after every row the test cares about)."""
    probes = getattr(state, "_probes", 0) + 1
    state._probes = probes
    history = state.observe(f"probe-{probes}", "nobody", terminal, at_ms, 0.0)
    return dict(zip(history.terminal_times_ms, history.terminal_labels))


def record(state: SqliteOnlineState, tid: str, customer: str, terminal: str, ts_ms: int) -> bool:
    """Store a transaction as /predict does; True if it was new."""
    return not state.observe(tid, customer, terminal, ts_ms, 10.0).already_seen


@pytest.fixture
def state(tmp_path: Path) -> SqliteOnlineState:
    return open_state(tmp_path / "state.sqlite")


def test_labels_reach_the_terminal_history_whatever_the_order(state, tmp_path) -> None:
    later = 20 * DAY_MS
    assert state.add_labels([("early", 1)], received_ms=0) == 0  # label before its transaction
    assert record(state, "early", "c1", "m1", 1 * DAY_MS)
    assert record(state, "late", "c1", "m1", 2 * DAY_MS)
    assert record(state, "never", "c2", "m1", 3 * DAY_MS)
    assert state.add_labels([("late", 0)], received_ms=0) == 1  # label after its transaction
    assert terminal_labels(state, "m1", later) == {DAY_MS: 1, 2 * DAY_MS: 0, 3 * DAY_MS: None}
    assert state.add_labels([("late", 1), ("early", 0)], received_ms=1) == 2  # corrections
    assert terminal_labels(state, "m1", later) == {DAY_MS: 0, 2 * DAY_MS: 1, 3 * DAY_MS: None}
    assert label_copies_disagree(state.path) == 0


def test_a_resent_transaction_keeps_its_row_and_its_label(state) -> None:
    assert record(state, "t1", "c1", "m1", DAY_MS)
    state.add_labels([("t1", 1)], received_ms=0)
    assert not record(state, "t1", "c1", "m1", DAY_MS)
    assert terminal_labels(state, "m1", 20 * DAY_MS) == {DAY_MS: 1}
    assert label_copies_disagree(state.path) == 0


def test_only_matured_terminal_rows_are_read(state) -> None:
    for day in (1, 5, 9):
        record(state, f"t{day}", "c1", "m1", day * DAY_MS)
    assert set(terminal_labels(state, "m1", 12 * DAY_MS)) == {DAY_MS, 5 * DAY_MS}
    history = state.observe("probe", "c1", "m2", 12 * DAY_MS, 1.0)
    assert history.customer_times_ms == (DAY_MS, 5 * DAY_MS, 9 * DAY_MS)  # cards: all of them


def test_warm_labels_rows_it_adds_and_rows_already_there(state) -> None:
    record(state, "old", "c1", "m1", DAY_MS)
    warm = pd.DataFrame(
        {
            "transaction_id": ["old", "new", "unlabelled"],
            "tx_datetime": pd.to_datetime(["1970-01-02", "1970-01-03", "1970-01-04"]),
            "customer_id": ["c1", "c1", "c2"],
            "terminal_id": ["m1", "m1", "m1"],
            "tx_amount": [10.0, 20.0, 30.0],
            "tx_fraud": [1, 0, None],
        }
    )
    assert state.warm(warm) == 2
    assert terminal_labels(state, "m1", 20 * DAY_MS) == {DAY_MS: 1, 2 * DAY_MS: 0, 3 * DAY_MS: None}
    assert label_copies_disagree(state.path) == 0


def test_labels_survive_a_restart(tmp_path) -> None:
    path = tmp_path / "state.sqlite"
    first = open_state(path)
    record(first, "t1", "c1", "m1", DAY_MS)
    first.add_labels([("t1", 1)], received_ms=0)
    first.connection.close()
    again = open_state(path)
    assert terminal_labels(again, "m1", 20 * DAY_MS) == {DAY_MS: 1}


def test_a_state_file_from_before_the_label_column_is_migrated(tmp_path) -> None:
    """Files written by the previous schema (labels only in their own table) keep working."""
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE transactions (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                transaction_id TEXT NOT NULL UNIQUE,
                customer_id TEXT NOT NULL,
                terminal_id TEXT NOT NULL,
                ts_ms INTEGER NOT NULL,
                amount REAL NOT NULL
            );
            CREATE INDEX transactions_terminal_history
                ON transactions (terminal_id, ts_ms, seq, transaction_id);
            CREATE TABLE labels (
                transaction_id TEXT PRIMARY KEY,
                label INTEGER NOT NULL CHECK (label IN (0, 1)),
                received_ms INTEGER NOT NULL
            );
            INSERT INTO transactions (transaction_id, customer_id, terminal_id, ts_ms, amount)
                VALUES ('a', 'c1', 'm1', 86400000, 1.0), ('b', 'c1', 'm1', 172800000, 2.0);
            INSERT INTO labels VALUES ('a', 1, 0), ('not-yet-seen', 0, 0);
            """)
    state = open_state(path)
    assert terminal_labels(state, "m1", 20 * DAY_MS) == {DAY_MS: 1, 2 * DAY_MS: None}
    assert label_copies_disagree(path) == 0
    record(state, "not-yet-seen", "c2", "m1", 3 * DAY_MS)
    assert terminal_labels(state, "m1", 20 * DAY_MS)[3 * DAY_MS] == 0
    history = state.observe("c", "c1", "m1", 2 * DAY_MS, 4.0)  # scoring on the old file
    assert history.customer_amounts == (1.0, 2.0) and not history.already_seen
    with sqlite3.connect(path) as db:
        indexes = {
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='index'")
        }
    assert "transactions_terminal_history" not in indexes
    assert "transactions_terminal_labels" in indexes
    open_state(path)  # opening a migrated file again changes nothing
    assert label_copies_disagree(path) == 0


def test_observe_stores_once_and_returns_the_rows_stored_before(tmp_path) -> None:
    """The /predict path: one call stores the row and reads the rows stored before it."""
    state = open_state(tmp_path / "a.sqlite")
    stream = [("t1", 1, 10.0), ("t2", 2, 20.0), ("t3", 2, 30.0), ("t4", 3, 40.0)]
    seen: list[tuple[int, float]] = []
    for tid, day, amount in stream:
        history = state.observe(tid, "c1", "m1", day * DAY_MS, amount)
        assert not history.already_seen
        assert list(zip(history.customer_times_ms, history.customer_amounts)) == seen
        seen.append((day * DAY_MS, amount))
    # the same time as t2 and t3, arrived later: sees both (arrival order breaks the tie)
    assert state.observe("t5", "c1", "m1", 2 * DAY_MS, 50.0).customer_amounts == (10.0, 20.0, 30.0)
    # re-sent after later rows: not stored again, and it sees exactly what it saw the first time
    again = state.observe("t2", "c1", "m1", 2 * DAY_MS, 20.0)
    assert again.already_seen and again.customer_amounts == (10.0,)
    with sqlite3.connect(state.path) as db:
        assert db.execute("SELECT COUNT(*) FROM transactions").fetchone()[0] == 5


def test_observe_never_sees_rows_stored_after_it(tmp_path) -> None:
    """Another worker's row stored after this one (a higher seq) stays out of its history,
    even with an earlier time, so a re-sent id sees what it saw first."""
    first = open_state(tmp_path / "state.sqlite")
    other = open_state(tmp_path / "state.sqlite")  # a second connection, as another worker
    first.observe("mine", "c1", "m1", 5 * DAY_MS, 10.0)
    other.observe("theirs", "c1", "m1", 4 * DAY_MS, 99.0)
    assert first.observe("mine", "c1", "m1", 5 * DAY_MS, 10.0).customer_amounts == ()
    assert other.observe("later", "c1", "m1", 6 * DAY_MS, 1.0).customer_amounts == (99.0, 10.0)


def test_new_state_files_number_rows_in_arrival_order(tmp_path) -> None:
    """seq is a plain INTEGER PRIMARY KEY now (no sqlite_sequence write per row): it still
    grows with every stored row."""
    state = open_state(tmp_path / "state.sqlite")
    for i in range(5):
        state.observe(f"t{i}", "c1", "m1", (10 - i) * DAY_MS, 1.0)
    with sqlite3.connect(state.path) as db:
        ids = [row[0] for row in db.execute("SELECT transaction_id FROM transactions ORDER BY seq")]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert ids == [f"t{i}" for i in range(5)]
    assert "sqlite_sequence" not in tables
