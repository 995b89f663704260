"""Bounded growth: the online state's retention rule, report retention, and `fraudflow prune`
over a real workdir (log compaction and retention, reports, state)."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from drift.retention import prune_reports
from fraudflow.cli import main
from pipelines.features import epoch_ms, features_from_history
from pipelines.log.reader import log_files, read_log
from pipelines.log.record import log_file, log_folder, record
from pipelines.state.factory import open_state, retention_ms
from pipelines.state.protocol import DAY_MS
from pipelines.state.sqlite import SqliteOnlineState
from tests.support.settings import make_settings, write_config


def _settings(tmp_path: Path):
    return make_settings(tmp_path / "work")


def _features(state: SqliteOnlineState, rows: pd.DataFrame, settings) -> np.ndarray:
    """The online features of `rows`, observed in order on `state`."""
    vectors = []
    for r in rows.itertuples():
        ts = epoch_ms(r.tx_datetime.to_pydatetime())
        history = state.observe(r.transaction_id, r.customer_id, r.terminal_id, ts, r.tx_amount)
        vectors.append(
            features_from_history(
                r.tx_datetime.to_pydatetime(),
                r.tx_amount,
                history.customer_times_ms,
                history.customer_amounts,
                history.terminal_times_ms,
                history.terminal_labels,
                settings.features,
            )
        )
    return np.array(vectors)


def test_pruning_the_state_keeps_every_later_feature(tmp_path: Path, small_transactions) -> None:
    """Two states warmed with the same history, one pruned by the retention rule: the rows
    inside the retention stay, the older ones go, and the next 300 transactions get exactly the
    same features from both."""
    settings = _settings(tmp_path)
    history, later = small_transactions.iloc[:-300], small_transactions.iloc[-300:]
    states = []
    for name in ("kept", "pruned"):
        state = SqliteOnlineState(
            tmp_path / f"{name}.sqlite",
            customer_window_days=settings.features.customer_history_days,
            terminal_span_days=settings.features.terminal_history_days,
            terminal_delay_days=settings.features.label_delay_days,
        )
        state.warm(history)
        states.append(state)
    kept, pruned = states
    keep = retention_ms(settings)
    # card history 30 + 14 days, label delay 7, the margin for late arrivals
    assert keep == (44 + 7 + settings.state.retention_margin_days) * DAY_MS
    times = history["tx_datetime"].to_numpy(dtype="datetime64[ms]").astype(np.int64)
    cutoff = times.max() - keep
    result = pruned.prune(keep, labels_received_before_ms=0)
    assert result.transactions == int((times < cutoff).sum()) > 1000
    with sqlite3.connect(pruned.path) as db:
        left = db.execute("SELECT MIN(ts_ms), COUNT(*) FROM transactions").fetchone()
        # labels go by when they were received (here: none before the epoch)
        assert db.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == len(history)
    assert left == (times[times >= cutoff].min(), int((times >= cutoff).sum()))
    np.testing.assert_array_equal(
        _features(kept, later, settings), _features(pruned, later, settings)
    )


def test_labels_go_with_their_transaction_and_the_log_retention(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    state = open_state(settings)
    day = datetime(2026, 11, 1, tzinfo=timezone.utc)
    ms = int(day.timestamp() * 1000)
    state.observe("old", "c1", "m1", ms - 100 * DAY_MS, 10.0)
    state.observe("new", "c1", "m1", ms, 10.0)
    state.add_labels([("old", 1), ("new", 0), ("never-seen", 1)], ms - 95 * DAY_MS)
    state.add_labels([("recent-unknown", 1)], ms)
    result = state.prune(retention_ms(settings), labels_received_before_ms=ms - 90 * DAY_MS)
    assert (result.transactions, result.labels) == (1, 2)  # "old", and "old" + "never-seen"
    assert sorted(state.labels()["transaction_id"]) == ["new", "recent-unknown"]


def test_report_folders_past_retention_go_and_the_newest_stays(tmp_path: Path) -> None:
    now = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)
    names = ["20260801T020000-v3", "20260905T020000-v3", "20261129T020000-v4"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.html").write_text("report")
    (tmp_path / "latest.json").write_text("{}")
    (tmp_path / "notes").mkdir()
    removed = prune_reports(tmp_path, 90, now)
    assert [p.name for p in removed] == ["20260801T020000-v3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        names[1:] + ["latest.json", "notes"]
    )
    # a monitor that stopped long ago still leaves its last report
    assert [p.name for p in prune_reports(tmp_path, 1, now + timedelta(days=400))] == names[1:2]
    assert (tmp_path / names[2]).is_dir()


def _log_day(folder: Path, day: str, count: int) -> Path:
    when = datetime.fromisoformat(day).replace(hour=12, tzinfo=timezone.utc)
    path = log_file(folder, day, "api-1-7")
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        record(
            logged_at=when.isoformat(timespec="milliseconds"),
            transaction_id=f"{day}-{i}",
            tx_datetime=when.replace(tzinfo=None),
            customer_id="c1",
            terminal_id="m1",
            tx_amount=5.0,
            feature_names=["tx_amount"],
            feature_values=[5.0],
            fraud_probability=0.5,
            decision="review",
            model_name="fraud-detector",
            model_version="1",
            latency_ms=1.0,
            resent=False,
        )
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_prune_command_compacts_and_deletes_by_retention(tmp_path: Path, capsys) -> None:
    """`fraudflow prune` on a workdir: a closed day's log becomes Parquet, a day past retention
    and an old report go, today's log and the state's recent rows stay."""
    settings = make_settings(tmp_path / "work", prediction_log={"retention_days": 30})
    folder = log_folder(settings)
    today = datetime.now(timezone.utc).date()
    old = _log_day(folder, (today - timedelta(days=40)).isoformat(), 3)
    closed = _log_day(folder, (today - timedelta(days=2)).isoformat(), 4)
    current = _log_day(folder, today.isoformat(), 2)
    reports = settings.under_workdir(settings.monitoring.reports_dir)
    for stamp in ("20200101T000000-v1", "20200102T000000-v1"):
        (reports / stamp).mkdir(parents=True)
    state = open_state(settings)
    now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
    state.observe("ancient", "c1", "m1", now_ms - 200 * DAY_MS, 1.0)
    state.observe("fresh", "c1", "m1", now_ms, 1.0)
    config = write_config(tmp_path / "config.yaml", settings)
    output = tmp_path / "prune.json"
    assert main(["prune", "--config", str(config), "--output", str(output)]) == 0
    assert "1 log files compacted to Parquet" in capsys.readouterr().out
    summary = json.loads(output.read_text())
    assert summary["compacted"][0]["rows"] == 4
    assert summary["removed_log_files"] == [old.name]
    assert summary["removed_reports"] == ["20200101T000000-v1"]
    assert summary["state_rows_removed"]["transactions"] == 1
    assert log_files(folder) == sorted([closed.with_suffix(".parquet"), current])
    assert len(read_log(folder).predictions) == 6
    with sqlite3.connect(state.path) as db:
        assert [r[0] for r in db.execute("SELECT transaction_id FROM transactions")] == ["fresh"]
