"""The canary guard: the band rule, the ledger in the online state (SQLite and a real Redis),
and guards of several workers and hosts that stop a challenger's canary together."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from flask import Flask
from prometheus_client import generate_latest

from pipelines.settings import CanaryRollbackSettings
from pipelines.state.protocol import CanaryLedger, RoleCounts
from pipelines.state.redis import RedisOnlineState
from pipelines.state.sqlite import SCHEMA, SqliteOnlineState
from serving.canary_band import (
    LATENCY_EDGES_MS,
    RoleFigures,
    band_breach,
    latency_bin,
    quantile_ms,
)
from serving.canary_guard import OPENED, ROLLED_BACK, CanaryGuard
from serving.metrics import create_metrics
from tests.support.redis import redis_server

SPANS = {"customer_window_days": 44, "terminal_span_days": 37, "terminal_delay_days": 7}
BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.multihost)]
RULE = CanaryRollbackSettings(
    window_s=60,
    min_requests=200,
    error_rate_band=0.01,
    decline_rate_band=0.05,
    p99_ratio=2.0,
    p99_slack_ms=5,
    check_interval_s=0.05,
)
T0 = 1_800_000_000.0


class Clock:
    """Wall time the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def figures(n: int, errors: int = 0, declines: int = 0, p99_ms: float = 2.0) -> RoleFigures:
    return RoleFigures(n, errors, declines, errors / n, declines / n, p99_ms)


def feed(
    guard: CanaryGuard,
    version: str,
    role: str,
    requests: int,
    per_request: int = 1,
    errors: int = 0,
    declines: int = 0,
    latency_ms: float = 2.0,
) -> None:
    """`requests` requests of `per_request` transactions each; the errors and declines in the
    first requests."""
    for i in range(requests):
        guard.observe(
            version,
            role,
            per_request,
            min(per_request, max(0, errors - i * per_request)),
            min(per_request, max(0, declines - i * per_request)),
            latency_ms,
        )


# --- the band rule ------------------------------------------------------------------------------


def test_below_min_requests_nothing_is_judged() -> None:
    broken = figures(199, errors=199, declines=199, p99_ms=10_000)
    assert band_breach(RULE, figures(1000), broken) is None
    assert band_breach(RULE, figures(199), figures(1000, errors=1000)) is None
    assert band_breach(RULE, figures(200), figures(200, errors=200)) is not None


def test_an_error_rate_above_the_champions_plus_the_band_stops() -> None:
    champion = figures(1000, errors=10)  # 1 %
    assert band_breach(RULE, champion, figures(1000, errors=19)) is None  # 1.9 % < 1 % + 1 %
    reason = band_breach(RULE, champion, figures(1000, errors=21))
    assert reason is not None and reason.startswith("error rate 0.0210 above the champion's 0.0100")
    # fewer errors than the champion is never a reason
    assert band_breach(RULE, figures(1000, errors=500), figures(1000)) is None


def test_a_decline_rate_off_the_champions_either_way_stops() -> None:
    champion = figures(1000, declines=100)  # 10 %
    assert band_breach(RULE, champion, figures(1000, declines=140)) is None
    assert band_breach(RULE, champion, figures(1000, declines=60)) is None
    for declines in (160, 40):  # 16 % and 4 %: 6 points either way
        reason = band_breach(RULE, champion, figures(1000, declines=declines))
        assert reason is not None and reason.startswith("decline rate"), declines


def test_a_p99_above_ratio_times_the_champions_plus_slack_stops() -> None:
    champion = figures(1000, p99_ms=10.0)
    assert band_breach(RULE, champion, figures(1000, p99_ms=24.9)) is None  # 2 x 10 + 5 = 25
    reason = band_breach(RULE, champion, figures(1000, p99_ms=25.5))
    assert reason is not None and reason.startswith("p99 latency 25.5 ms")
    # the slack: a fast champion does not make 1 ms more a breach
    assert band_breach(RULE, figures(1000, p99_ms=0.5), figures(1000, p99_ms=5.5)) is None


def test_every_broken_limit_is_named() -> None:
    reason = band_breach(RULE, figures(1000), figures(1000, errors=100, declines=100, p99_ms=99))
    assert reason is not None
    assert [part.split()[0] for part in reason.split("; ")] == ["error", "decline", "p99"]


def test_p99_from_the_histogram_bins() -> None:
    assert (
        latency_bin(0.1) == 0
        and latency_bin(0.5) == 0
        and latency_bin(0.59) == 1
        and latency_bin(0.6) == 2
    )
    assert latency_bin(1e9) == len(LATENCY_EDGES_MS)  # overflow: one bin past the edges
    assert LATENCY_EDGES_MS[-1] > 20_000 and LATENCY_EDGES_MS[0] == 0.5
    fast = {latency_bin(1.0): 99, latency_bin(500.0): 1}
    assert quantile_ms(fast) == pytest.approx(1.0)  # the 99th of 100 is fast
    slow = {latency_bin(1.0): 98, latency_bin(500.0): 2}
    assert 500.0 <= quantile_ms(slow) < 500.0 * 1.19  # the bin's upper edge, 19 % wide
    assert quantile_ms({}) == 0.0
    assert quantile_ms({len(LATENCY_EDGES_MS): 5}) == LATENCY_EDGES_MS[-1]


# --- the ledger in the online state -------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def opener(request, tmp_path: Path) -> Callable[[], CanaryLedger]:
    """Opens the state again: another worker (SQLite, one file) or host (one Redis)."""
    if request.param == "sqlite":
        return lambda: SqliteOnlineState(tmp_path / "state.sqlite", **SPANS)
    url = request.getfixturevalue("redis_url")
    return lambda: RedisOnlineState(url, **SPANS, retention_days=58)


def test_ledger_adds_the_counts_of_every_writer_over_the_buckets_asked(opener) -> None:
    first, second = opener(), opener()
    one = RoleCounts(100, 2, 7, {3: 40, 9: 1})
    first.add_canary_counts("5", 1000, {"champion": one, "challenger": one}, keep_s=600)
    second.add_canary_counts("5", 1000, {"challenger": RoleCounts(10, 1, 0, {9: 2})}, keep_s=600)
    second.add_canary_counts("5", 1010, {"challenger": RoleCounts(1, 0, 1, {63: 1})}, keep_s=600)
    second.add_canary_counts("6", 1010, {"challenger": RoleCounts(50, 50, 0, {})}, keep_s=600)
    window = first.canary_window("5", [1000, 1010])
    assert window.stop is None
    assert window.counts["champion"] == one
    assert window.counts["challenger"] == RoleCounts(111, 3, 8, {3: 40, 9: 3, 63: 1})
    assert second.canary_window("5", [1010]).counts["challenger"] == RoleCounts(1, 0, 1, {63: 1})
    assert second.canary_window("5", [990]).counts == {}  # a bucket nobody wrote


def test_ledger_keeps_the_first_stop_record_of_a_version(opener) -> None:
    first, second = opener(), opener()
    mine = {"version": "5", "reason": "first", "pid": 1, "champion": {"p99_ms": 1.5}}
    assert first.record_canary_stop("5", mine) == mine
    assert second.record_canary_stop("5", {"version": "5", "reason": "second"}) == mine
    assert second.canary_window("5", [1000]).stop == mine
    assert first.canary_window("6", [1000]).stop is None  # a new version starts fresh


def test_sqlite_ledger_drops_buckets_older_than_keep(tmp_path: Path) -> None:
    state = SqliteOnlineState(tmp_path / "state.sqlite", **SPANS)
    counts = {"champion": RoleCounts(1, 0, 0, {0: 1})}
    state.add_canary_counts("5", 1000, counts, keep_s=60)
    state.add_canary_counts("4", 1000, counts, keep_s=60)
    state.add_canary_counts("5", 1060, counts, keep_s=60)
    assert state.canary_window("5", [1000]).counts["champion"].transactions == 1
    state.add_canary_counts("5", 1061, counts, keep_s=60)
    assert state.canary_window("5", [1000]).counts == {}
    assert state.canary_window("4", [1000]).counts == {}  # every version's old buckets go
    (rows,) = state.connection.execute("SELECT COUNT(*) FROM canary_counts").fetchone()
    assert rows == 2 * len(counts["champion"].counters())


def test_a_state_file_from_before_the_ledger_gets_its_tables(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with closing(sqlite3.connect(path)) as db:
        db.execute(SCHEMA[0])
        db.execute(SCHEMA[1])
        db.commit()
    state = SqliteOnlineState(path, **SPANS)
    state.add_canary_counts("5", 1000, {"champion": RoleCounts(3, 0, 0, {})}, keep_s=60)
    assert state.canary_window("5", [1000]).counts["champion"].transactions == 3


@pytest.mark.multihost
def test_redis_ledger_buckets_expire_and_stop_records_stay(redis_url: str) -> None:
    state = RedisOnlineState(redis_url, **SPANS, retention_days=58)
    state.add_canary_counts("5", 1000, {"champion": RoleCounts(1, 0, 0, {})}, keep_s=70)
    state.record_canary_stop("5", {"version": "5"})
    assert 0 < state.client.ttl("fraudflow:canary:5:1000") <= 70
    assert state.client.ttl("fraudflow:canary-stop:5") == -1


def test_an_unreadable_stop_record_still_stops(tmp_path: Path) -> None:
    state = SqliteOnlineState(tmp_path / "state.sqlite", **SPANS)
    state.connection.execute("INSERT INTO canary_stops VALUES ('5', 'not json')")
    assert state.canary_window("5", [0]).stop == {
        "version": "5",
        "reason": "the stop record is unreadable",
    }


# --- guards of several workers and hosts --------------------------------------------------------


def events_of(guard: CanaryGuard) -> list[tuple[str, dict]]:
    seen: list[tuple[str, dict]] = []
    guard.add_listener(lambda event, record: seen.append((event, record)))
    return seen


def test_a_version_opens_at_its_first_check_and_counts_add_up_across_workers(opener) -> None:
    clock = Clock()
    first, second = CanaryGuard(RULE, opener(), clock), CanaryGuard(RULE, opener(), clock)
    assert not first.is_open("5")  # not yet read: closed
    first.check()
    assert first.is_open("5") and not second.is_open("5")
    # each worker alone is under min_requests; together they decide 300 each, and the
    # challenger declines a third of them against the champion's 10 %: out of the band
    for guard in (first, second):
        feed(guard, "5", "champion", 150, declines=15)
        feed(guard, "5", "challenger", 150, declines=50)
    first.check()
    assert first.is_open("5")  # only its own 150 flushed so far
    second.check()
    assert not second.is_open("5")
    record = second.stop_record("5")
    assert record is not None and record["reason"].startswith("decline rate 0.3333")
    assert record["champion"]["transactions"] == 300 and record["challenger"]["declines"] == 100
    first.check()
    assert not first.is_open("5") and first.stop_record("5") == record


def test_a_broken_band_closes_every_guard_within_one_check_and_the_first_record_stands(
    opener,
) -> None:
    clocks = [Clock(T0), Clock(T0 + 0.5)]
    guards = [CanaryGuard(RULE, opener(), clock) for clock in clocks]
    events = [events_of(guard) for guard in guards]
    for guard in guards:
        guard.is_open("7")
        guard.check()
    assert all(guard.is_open("7") for guard in guards)
    # both workers see the same broken figures; the first to check writes the record
    for guard in guards:
        feed(guard, "7", "champion", 100, per_request=3, errors=3, latency_ms=3.0)
        feed(guard, "7", "challenger", 100, per_request=3, errors=30, latency_ms=40.0)
    guards[0].check()
    guards[1].check()
    assert not any(guard.is_open("7") for guard in guards)
    record = guards[0].stop_record("7")
    assert guards[1].stop_record("7") == record
    assert record["time"].startswith("2027-01-15T08:00:00")  # the first guard's clock
    assert record["version"] == "7" and record["window_s"] == 60
    assert record["reason"].startswith("error rate 0.1000 above the champion's 0.0100")
    assert "p99 latency" in record["reason"]
    assert record["champion"] == {
        "transactions": 300,
        "errors": 3,
        "declines": 0,
        "error_rate": 0.01,
        "decline_rate": 0.0,
        "p99_ms": pytest.approx(3.364, abs=1e-3),
    }
    assert record["challenger"]["transactions"] == 300 and record["challenger"]["errors"] == 30
    assert record["challenger"]["p99_ms"] >= 40.0
    assert isinstance(record["host"], str) and record["host"]
    assert isinstance(record["pid"], int)
    for seen in events:
        assert seen == [(OPENED, {"version": "7"}), (ROLLED_BACK, record)]
    # a stopped version counts nothing more and stays closed; a new version starts fresh
    feed(guards[0], "7", "challenger", 10)
    guards[0].check()
    assert events[0][-1] == (ROLLED_BACK, record) and len(events[0]) == 2
    guards[0].is_open("8")
    guards[0].check()
    assert guards[0].is_open("8") and events[0][-1] == (OPENED, {"version": "8"})


def test_a_worker_started_after_the_stop_never_opens_the_canary(opener) -> None:
    clock = Clock()
    guard = CanaryGuard(RULE, opener(), clock)
    guard.is_open("7")
    feed(guard, "7", "champion", 200)
    feed(guard, "7", "challenger", 200, errors=200)
    guard.check()
    assert guard.stop_record("7") is not None
    restarted = CanaryGuard(RULE, opener(), clock)
    assert not restarted.is_open("7")
    restarted.check()
    assert not restarted.is_open("7")
    assert restarted.stop_record("7") == guard.stop_record("7")


def test_old_buckets_leave_the_window(opener) -> None:
    """A challenger's bad counts judged with champion counts inside the window stop it; the
    same counts past the window are forgotten (each role then too few to judge)."""
    clock = Clock()
    guard = CanaryGuard(RULE, opener(), clock)
    for version in ("7", "8"):
        guard.is_open(version)
        feed(guard, version, "challenger", 300, errors=300)  # no champion counts: not judged
    guard.check()
    assert guard.is_open("7") and guard.is_open("8")
    clock.now += RULE.window_s / 2
    feed(guard, "7", "champion", 300)
    guard.check()
    assert not guard.is_open("7")
    clock.now += RULE.window_s + guard.bucket_s
    feed(guard, "8", "champion", 300)
    guard.check()
    assert guard.is_open("8")
    window = guard.ledger.canary_window("8", [int(clock.now // guard.bucket_s) * guard.bucket_s])
    assert window.counts["champion"].transactions == 300 and "challenger" not in window.counts


def test_a_version_nobody_asks_about_for_a_window_is_no_longer_read(tmp_path: Path) -> None:
    """A former challenger costs no ledger read once idle for a window; asked again, it is
    closed until the next check has read it."""
    clock = Clock()
    guard = CanaryGuard(RULE, SqliteOnlineState(tmp_path / "state.sqlite", **SPANS), clock)
    for version in ("3", "4"):
        guard.is_open(version)
    guard.check()
    for _ in range(3):
        clock.now += RULE.window_s / 2
        assert guard.is_open("4")
        guard.check()
    assert list(guard._watched) == ["4"]
    assert not guard.is_open("3")
    guard.check()
    assert guard.is_open("3")


def test_requests_of_many_threads_are_all_counted(tmp_path: Path) -> None:
    guard = CanaryGuard(RULE, SqliteOnlineState(tmp_path / "state.sqlite", **SPANS), Clock())
    threads = [
        threading.Thread(target=feed, args=(guard, "2", "champion", 1000, 2, 0, 1))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    guard.check()
    bucket = int(T0 // guard.bucket_s) * guard.bucket_s
    counts = guard.ledger.canary_window("2", [bucket]).counts["champion"]
    assert (counts.transactions, counts.declines, sum(counts.latency_bins.values())) == (
        16_000,
        8,
        8_000,
    )


def test_the_guards_thread_checks_by_itself(tmp_path: Path) -> None:
    guard = CanaryGuard(RULE, SqliteOnlineState(tmp_path / "state.sqlite", **SPANS))
    guard.is_open("3")
    guard.start()
    try:
        deadline = time.monotonic() + 30
        while not guard.is_open("3"):
            assert time.monotonic() < deadline, "the thread never checked"
            time.sleep(0.01)
    finally:
        guard.stop()
    assert guard._thread is None


@pytest.mark.multihost
def test_a_ledger_outage_changes_no_flag_and_raises_nothing(tmp_path: Path) -> None:
    """Redis stopped: `check` logs and returns, open stays open and stopped stays stopped, and
    the counts it could not add are added once Redis is back."""
    with redis_server(tmp_path / "redis") as server:
        clock = Clock()
        guard = CanaryGuard(RULE, RedisOnlineState(server.url, **SPANS, retention_days=58), clock)
        for version in ("1", "2"):
            guard.is_open(version)
        feed(guard, "2", "champion", 200)
        feed(guard, "2", "challenger", 200, errors=200)
        guard.check()
        assert guard.is_open("1") and not guard.is_open("2")
        server.stop()
        feed(guard, "1", "champion", 50)
        guard.check()
        guard.check()
        assert guard.is_open("1") and not guard.is_open("2")
        never_read = CanaryGuard(RULE, RedisOnlineState(server.url, **SPANS, retention_days=58))
        never_read.is_open("1")
        never_read.check()
        assert not never_read.is_open("1")  # closed until the ledger was read once
        server.start()  # empty: no persistence
        guard.check()
        assert guard.is_open("1")
        bucket = int(clock.now // guard.bucket_s) * guard.bucket_s
        assert guard.ledger.canary_window("1", [bucket]).counts["champion"].transactions == 50


def test_the_gauge_follows_the_guards_events(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics = create_metrics(Flask(__name__))
    guard = CanaryGuard(RULE, SqliteOnlineState(tmp_path / "state.sqlite", **SPANS), Clock())
    guard.add_listener(metrics.on_canary_event)

    def gauge() -> str:
        text = generate_latest(metrics.exporter.registry).decode()
        return next(
            line for line in text.splitlines() if line.startswith("fraudflow_canary_rolled_back ")
        )

    assert gauge() == "fraudflow_canary_rolled_back 0.0"
    guard.is_open("4")
    feed(guard, "4", "champion", 200)
    feed(guard, "4", "challenger", 200, declines=200)
    guard.check()
    assert gauge() == "fraudflow_canary_rolled_back 1.0"
    guard.is_open("5")  # a new challenger version: a new canary
    guard.check()
    assert gauge() == "fraudflow_canary_rolled_back 0.0"
