"""The online state's semantics, the same on every backend: SQLite and Redis (a real server)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from redis.exceptions import BusyLoadingError, ConnectionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fraudflow.cli import main
from pipelines.data import load_transactions
from pipelines.features import build_features, feature_names, features_from_history
from pipelines.state.factory import received_labels
from pipelines.state.protocol import OnlineState, StateUnavailable
from pipelines.state.redis import RedisOnlineState, unavailable_reason
from pipelines.state.sqlite import SqliteOnlineState
from tests.support.redis import redis_server
from tests.support.settings import make_settings, write_config

DAY_MS = 86_400_000
SPANS = {"customer_window_days": 44, "terminal_span_days": 37, "terminal_delay_days": 7}
BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.multihost)]


def redis_state(url: str, **changes) -> RedisOnlineState:
    return RedisOnlineState(url, **{**SPANS, "retention_days": 58, **changes})


@pytest.fixture(params=BACKENDS)
def opener(request, tmp_path: Path):
    """Opens a state (again: a second worker or host on the same data)."""
    if request.param == "sqlite":
        return lambda: SqliteOnlineState(tmp_path / "state.sqlite", **SPANS)
    url = request.getfixturevalue("redis_url")
    return lambda: redis_state(url)


def cards(history) -> list[tuple[int, float]]:
    return list(zip(history.customer_times_ms, history.customer_amounts))


def terminal(state: OnlineState, terminal_id: str, at_ms: int, probe: str) -> dict[int, object]:
    history = state.observe(probe, "nobody", terminal_id, at_ms, 0.0)
    return dict(zip(history.terminal_times_ms, history.terminal_labels))


def test_observe_stores_once_and_returns_the_rows_stored_before(opener) -> None:
    state = opener()
    seen: list[tuple[int, float]] = []
    for tid, day, amount in [("t1", 1, 10.0), ("t2", 2, 20.1), ("t3", 2, 1 / 3), ("t4", 3, 4e-7)]:
        history = state.observe(tid, "c1", "m1", day * DAY_MS, amount)
        assert not history.already_seen and cards(history) == seen  # amounts bit for bit
        seen.append((day * DAY_MS, amount))
    # the same time as t2 and t3, arrived later: sees both (arrival order breaks the tie)
    assert state.observe("t5", "c1", "m1", 2 * DAY_MS, 5.0).customer_amounts == (10.0, 20.1, 1 / 3)
    again = state.observe("t2", "c1", "m1", 2 * DAY_MS, 20.1)
    assert again.already_seen and again.customer_amounts == (10.0,)


def test_rows_stored_later_by_another_worker_stay_out(opener) -> None:
    first, other = opener(), opener()
    first.observe("mine", "c1", "m1", 5 * DAY_MS, 10.0)
    other.observe("theirs", "c1", "m1", 4 * DAY_MS, 99.0)
    assert first.observe("mine", "c1", "m1", 5 * DAY_MS, 10.0).customer_amounts == ()
    assert other.observe("later", "c1", "m1", 6 * DAY_MS, 1.0).customer_amounts == (99.0, 10.0)


def test_windows_and_the_label_delay(opener) -> None:
    state = opener()
    for day in (1, 5, 9):
        state.observe(f"t{day}", "c1", "m1", day * DAY_MS, float(day))
    assert set(terminal(state, "m1", 12 * DAY_MS, "p1")) == {DAY_MS, 5 * DAY_MS}  # matured only
    history = state.observe("p2", "c1", "m2", 12 * DAY_MS, 1.0)
    assert history.customer_times_ms == (DAY_MS, 5 * DAY_MS, 9 * DAY_MS)
    late = state.observe("p3", "c1", "m1", 48 * DAY_MS, 1.0)
    assert late.customer_times_ms == (5 * DAY_MS, 9 * DAY_MS, 12 * DAY_MS)  # (48-44, 48]
    assert late.terminal_times_ms == (12 * DAY_MS,)  # (48-37, 48-7]


def test_labels_in_any_order_and_corrections(opener) -> None:
    state = opener()
    assert state.add_labels([("early", 1)], received_ms=0) == 0  # before its transaction
    state.observe("early", "c1", "m1", DAY_MS, 1.0)
    state.observe("late", "c1", "m1", 2 * DAY_MS, 1.0)
    state.observe("never", "c2", "m1", 3 * DAY_MS, 1.0)
    assert state.add_labels([("late", 0)], received_ms=0) == 1
    assert terminal(state, "m1", 20 * DAY_MS, "p1") == {DAY_MS: 1, 2 * DAY_MS: 0, 3 * DAY_MS: None}
    assert state.add_labels([("late", 1), ("early", 0)], received_ms=1) == 2
    assert terminal(state, "m1", 20 * DAY_MS, "p2") == {DAY_MS: 0, 2 * DAY_MS: 1, 3 * DAY_MS: None}
    labels = opener().labels().sort_values("transaction_id").reset_index(drop=True)
    assert labels.to_dict("records") == [
        {"transaction_id": "early", "tx_fraud": 0},
        {"transaction_id": "late", "tx_fraud": 1},
    ]


def test_warm_adds_new_rows_once_with_their_labels(opener) -> None:
    state = opener()
    state.observe("old", "c1", "m1", DAY_MS, 10.0)
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
    assert state.warm(warm) == 0
    assert terminal(state, "m1", 20 * DAY_MS, "p") == {DAY_MS: 1, 2 * DAY_MS: 0, 3 * DAY_MS: None}
    assert state.observe("q", "c1", "m9", 5 * DAY_MS, 1.0).customer_amounts == (10.0, 20.0)


@pytest.mark.multihost
def test_redis_trims_rows_past_the_retention_and_keys_expire(redis_url) -> None:
    state = redis_state(redis_url, retention_days=10)
    state.observe("a", "c1", "m1", DAY_MS, 1.0)
    state.observe("b", "c1", "m1", 12 * DAY_MS, 2.0)  # a is 11 days older: trimmed
    assert state.client.zcard("fraudflow:card:c1") == 1
    assert state.client.zcard("fraudflow:terminal:m1") == 1
    for key in ("fraudflow:card:c1", "fraudflow:terminal:m1", "fraudflow:tx:b", "fraudflow:seq"):
        assert 0 < state.client.ttl(key) <= 10 * 86_400
    state.add_labels([("b", 1)], received_ms=0)
    assert 0 < state.client.ttl("fraudflow:label:b") <= 10 * 86_400


def test_redis_warm_trims_each_key_by_its_newest_row_and_sets_expiries(redis_url) -> None:
    """warm trims once per key and batch: what is left is what per-row trimming keeps."""
    state = redis_state(redis_url, retention_days=10, key_prefix="warmtrim:")
    days = [1, 3, 12, 14, 15]  # the card's newest row is day 15: days 1 and 3 are past 10 days
    rows = pd.DataFrame(
        {
            "transaction_id": [f"w{d}" for d in days],
            "tx_datetime": pd.to_datetime([d * DAY_MS for d in days], unit="ms"),
            "customer_id": ["c1"] * 5,
            "terminal_id": ["m1", "m1", "m1", "m2", "m2"],  # m1's newest is day 12: day 1 goes
            "tx_amount": [1.0, 2.0, 3.0, 4.0, 5.0],
            "tx_fraud": [0] * 5,
        }
    )
    assert state.warm(rows) == 5
    card = state.client.zrange("warmtrim:card:c1", 0, -1, withscores=True)
    assert [int(score) // DAY_MS for _, score in card] == [12, 14, 15]
    terminal_m1 = state.client.zrange("warmtrim:terminal:m1", 0, -1, withscores=True)
    assert [int(score) // DAY_MS for _, score in terminal_m1] == [3, 12]
    assert state.client.zcard("warmtrim:terminal:m2") == 2
    for key in ("warmtrim:card:c1", "warmtrim:terminal:m1", "warmtrim:tx:w1", "warmtrim:seq"):
        assert 0 < state.client.ttl(key) <= 10 * 86_400


@pytest.mark.multihost
def test_redis_down_is_a_clear_error_and_a_restart_is_survived(tmp_path) -> None:
    """Down: StateUnavailable naming no host. Restarted (its scripts and, without persistence,
    its data gone): the same client serves again by itself."""
    with redis_server(tmp_path / "redis") as server:
        state = redis_state(server.url)
        state.observe("t1", "c1", "m1", DAY_MS, 1.0)
        state.check()
        server.stop()
        for call in (
            lambda: state.observe("t2", "c1", "m1", 2 * DAY_MS, 1.0),
            lambda: state.add_labels([("t1", 1)], 0),
            state.check,
            state.labels,
        ):
            with pytest.raises(StateUnavailable) as failure:
                call()
            message = str(failure.value)
            assert message.startswith("online state unavailable: ")
            assert str(server.port) not in message and "127.0.0.1" not in message
        server.start()
        assert not state.observe("t3", "c1", "m1", 3 * DAY_MS, 1.0).already_seen
        state.check()


@pytest.mark.multihost
def test_warm_and_the_label_reader_go_through_the_configured_backend(
    redis_url, tmp_path, small_data_dir, capsys
) -> None:
    """`fraudflow warm` fills Redis (and says how fast); monitoring's label reader reads it."""
    settings = make_settings(tmp_path / "work", state={"backend": "redis", "url": redis_url})
    config = write_config(tmp_path / "redis.yaml", settings)
    assert main(["warm", "--config", str(config), "--data", str(small_data_dir)]) == 0
    printed = capsys.readouterr().out
    assert "online state (redis):" in printed and "rows/s" in printed
    transactions = load_transactions(small_data_dir)
    labels = received_labels(settings).set_index("transaction_id")["tx_fraud"]
    expected = transactions.set_index("transaction_id")["tx_fraud"].astype(int)
    assert len(labels) == len(expected) and labels.loc[expected.index].equals(expected)
    assert not (tmp_path / "work" / settings.state.sqlite_path).exists()  # no SQLite file


def test_redis_failures_are_named_by_kind_never_by_host() -> None:
    """What a 503 says of a Redis failure (the exceptions carry hosts and ports)."""
    cases = {
        BusyLoadingError("Redis is loading the dataset in memory"): "Redis is loading its data set",
        ConnectionError("Error 111 connecting to 10.1.2.3:6379. Connection refused."): (
            "no connection to Redis"
        ),
        RedisTimeoutError("Timeout reading from 10.1.2.3:6379"): "Redis did not answer in time",
        ResponseError("OOM command not allowed when used memory > 'maxmemory'."): (
            "Redis refused the command (OOM)"
        ),
    }
    for error, reason in cases.items():
        assert unavailable_reason(error) == reason


def test_the_state_reports_its_size_for_metrics(opener) -> None:
    """/metrics' fraudflow_online_state_bytes: the state's size grows as rows are stored."""
    state = opener()
    state.observe("first", "c1", "m1", DAY_MS, 1.0)
    before = state.size_bytes()
    for i in range(2_000):
        state.observe(f"s{i}", f"c{i % 50}", f"m{i % 70}", DAY_MS + i * 60_000, 10.0 + i)
    after = state.size_bytes()
    assert before is not None and after is not None and after > before > 0


def test_an_unreachable_redis_reports_no_size(tmp_path) -> None:
    """A scrape while Redis is down leaves the gauge out instead of failing /metrics."""
    with redis_server(tmp_path / "redis") as server:
        state = redis_state(server.url, socket_timeout_s=0.5, connect_timeout_s=0.5)
        assert state.size_bytes() > 0
        server.stop()
        assert state.size_bytes() is None


def test_a_label_counts_online_and_offline_only_once_it_has_matured(opener) -> None:
    """A fraud on terminal m1 and card c1 at day 1, labelled at once through /feedback's path;
    the next transactions on m1 come a millisecond before and at the moment its label matures
    (day 8). Online (this backend) and offline (`build_features`) agree on every feature, and
    neither counts the label before it matured."""
    settings = make_settings(Path("unused")).features
    state = opener()
    rows = [
        ("f", "c1", "m1", DAY_MS + 36_000_000, 80.0, 1),
        ("g", "c2", "m1", DAY_MS + 40_000_000, 20.0, 0),
        ("before", "c1", "m1", 8 * DAY_MS + 36_000_000 - 1, 30.0, 0),
        ("at", "c1", "m1", 8 * DAY_MS + 36_000_000, 30.0, 0),
    ]
    online = []
    for i, (tid, card, term, ts, amount, label) in enumerate(rows):
        history = state.observe(tid, card, term, ts, amount)
        stamp = pd.Timestamp(ts, unit="ms").to_pydatetime()
        online.append(
            features_from_history(
                stamp,
                amount,
                history.customer_times_ms,
                history.customer_amounts,
                history.terminal_times_ms,
                history.terminal_labels,
                settings,
            )
        )
        if i < 2:  # the first two are labelled as soon as they are seen
            assert state.add_labels([(tid, label)], received_ms=ts + 1) == 1
    frame = pd.DataFrame(
        rows,
        columns=["transaction_id", "customer_id", "terminal_id", "ts", "tx_amount", "tx_fraud"],
    )
    frame["tx_datetime"] = pd.to_datetime(frame.pop("ts"), unit="ms")
    offline = build_features(frame, settings)
    names = feature_names(settings)
    np.testing.assert_allclose(np.vstack(online), offline[names].to_numpy(), rtol=0, atol=1e-9)
    risk = offline["terminal_risk_1d"]
    assert risk.iloc[2] == 0.0  # a millisecond before: the fraud is not known yet
    assert risk.iloc[3] == 1.0  # at maturity: it is, on its own in the last day behind the delay
    # g, four seconds younger, has not matured at that moment: it is neither seen nor counted
    assert (
        offline["terminal_nb_tx_7d"].iloc[3] == 1.0 and offline["terminal_risk_7d"].iloc[3] == 1.0
    )
    # issue 22's decayed risk (in the configured features): nothing before, the fraud alone at
    # maturity; the online rows above equal these
    decayed = offline["terminal_risk_half_life_7d"]
    assert decayed.iloc[2] == 0.0 and decayed.iloc[3] == 1.0
