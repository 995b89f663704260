"""Two API hosts on one Redis: each a gunicorn master (2 workers) with its own working folder,
prediction log and metrics, in its own network namespace (a veth pair to the test's namespace,
where Redis listens), sharing the MLflow store. Without the rights to make namespaces the hosts
bind two loopback addresses (127.0.0.2, 127.0.0.3) instead.

The tests run in file order on the same two hosts; the last one kills host A."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from pipelines.features import build_features, feature_names
from pipelines.log.reader import read_predictions
from pipelines.log.record import log_folder
from pipelines.mlflow import store as registry
from pipelines.mlflow.promotion import set_stage
from pipelines.settings import Settings
from serving.canary import in_canary
from tests.support.models import train_and_register
from tests.support.processes import BIN, clean_env, kill_group, poll_until, wait_for
from tests.support.redis import RedisServer, redis_server
from tests.support.servers import wait_every_worker, wait_every_worker_gauge
from tests.support.settings import make_settings, write_config
from tests.support.stack import prometheus_and_alertmanager

pytestmark = [pytest.mark.multihost, pytest.mark.integration]
WORKERS = 2
API_PORT = 18080
DAY = pd.Timedelta(days=1)
PASSWORD = "multihost-secret"
# the hosts listen on addresses other hosts reach, so the API insists on tokens (fail closed)
TOKEN = "multihost-client-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# /metrics on an exposed address needs its own token too
METRICS_TOKEN = "multihost-metrics-token"
SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}
CANARY_PERCENT = 30.0
NAME = "fraud-detector"


@dataclass
class Host:
    """One API host: where it listens, how to run a command on it, what it writes."""

    name: str
    address: str
    redis_address: str
    prefix: list[str]
    settings: Settings | None = None
    url: str = ""
    process: subprocess.Popen | None = None
    log: Path = field(default_factory=Path)

    def predict(self, body: dict, timeout: float = 30) -> requests.Response:
        return requests.post(f"{self.url}/predict", json=body, headers=AUTH, timeout=timeout)

    def logged(self, names: list[str] | None = None) -> pd.DataFrame:
        return read_predictions(log_folder(self.settings), features=names)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _namespace_hosts(tag: str, subnet: int, created: list[str]) -> list[Host] | None:
    """Two namespaces, each joined to this one by a veth pair; None where that is refused (a
    container without CAP_SYS_ADMIN). `created` collects what to delete."""
    hosts = []
    try:
        for i, name in enumerate(("a", "b"), start=1):
            ns, outside, inside = f"{tag}{name}", f"{tag}{name}h", f"{tag}{name}n"
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            created.append(outside)
            _ip("link", "set", inside, "netns", ns)
            _ip("addr", "add", f"10.{subnet}.{i}.1/24", "dev", outside)
            _ip("link", "set", outside, "up")
            for command in (
                ["addr", "add", f"10.{subnet}.{i}.2/24", "dev", inside],
                ["link", "set", inside, "up"],
                ["link", "set", "lo", "up"],
            ):
                _ip("netns", "exec", ns, "ip", *command)
            hosts.append(
                Host(name, f"10.{subnet}.{i}.2", f"10.{subnet}.{i}.1", ["ip", "netns", "exec", ns])
            )
    except subprocess.CalledProcessError as exc:
        print(f"network namespaces unavailable ({exc.stderr.strip()}): loopback hosts")
        return None
    return hosts


@contextmanager
def network_hosts() -> Iterator[tuple[list[Host], str]]:
    """Two hosts in namespaces of their own, or on two loopback addresses."""
    created: list[str] = []
    hosts = None
    if shutil.which("ip") is not None and os.geteuid() == 0:
        hosts = _namespace_hosts(f"ff{os.getpid() % 100000}", 20 + os.getpid() % 200, created)
    try:
        yield (hosts, "netns") if hosts else (_loopback_hosts(), "loopback")
    finally:
        for name in reversed(created):  # a veth pair goes with its namespace, else by name
            kind = ["link", "del"] if name.endswith("h") else ["netns", "del"]
            subprocess.run(["ip", *kind, name], capture_output=True, timeout=30)


def _loopback_hosts() -> list[Host]:
    return [Host("a", "127.0.0.2", "127.0.0.1", []), Host("b", "127.0.0.3", "127.0.0.1", [])]


@contextmanager
def serve(host: Host, config: Path, version: str) -> Iterator[Host]:
    """`fraudflow serve` on the host, its own process group (master and workers), until every
    worker serves `version`."""
    command = [str(BIN / "fraudflow"), "serve", "--config", str(config)]
    command += ["--bind", f"{host.address}:{API_PORT}", "--workers", str(WORKERS)]
    with open(host.log, "ab") as out:
        host.process = subprocess.Popen(
            host.prefix + command,
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    host.url = f"http://{host.address}:{API_PORT}"
    try:
        wait_for(f"{host.url}/health", process=host.process)
        wait_every_worker(host.url, WORKERS, version, process=host.process, headers=SCRAPER)
        yield host
    finally:
        kill_group(host.process)


@dataclass
class World:
    hosts: list[Host]
    redis: RedisServer
    settings: Settings
    versions: tuple[str, str]
    network: str
    # trained on inverted labels: it declines (nearly) every transaction
    declines_all: str = ""


@pytest.fixture(scope="module")
def world(tmp_path_factory, small_transactions) -> Iterator[World]:
    root = tmp_path_factory.mktemp("multihost")
    store = make_settings(root / "store")
    v1 = train_and_register(small_transactions, store)[0]
    set_stage(store, v1, "Production", "first")
    v2 = train_and_register(
        small_transactions, make_settings(store.workdir, training={"max_rounds": 40})
    )[0]
    inverted = small_transactions.assign(tx_fraud=1 - small_transactions["tx_fraud"])
    declines_all = train_and_register(inverted, store)[0]
    with ExitStack() as stack:
        hosts, network = stack.enter_context(network_hosts())
        also = tuple(sorted({h.redis_address for h in hosts} - {"127.0.0.1"}))
        redis = stack.enter_context(
            redis_server(root / "redis", appendonly=True, also_bind=also, password=PASSWORD)
        )
        for host in hosts:
            work = root / f"host-{host.name}"
            host.log = root / f"host-{host.name}.log"
            host.settings = make_settings(
                work,
                mlflow={"tracking_uri": store.tracking_uri},  # one registry, read by both
                serving={
                    "poll_interval_s": 1.0,
                    "tokens": [
                        {
                            "name": "multihost",
                            "scopes": ["score", "label"],
                            "sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                        }
                    ],
                    "metrics_token": {"sha256": hashlib.sha256(METRICS_TOKEN.encode()).hexdigest()},
                    "metrics_dir": str(work / "prom"),
                    # no @challenger until the canary tests set one
                    "challenger": {
                        "mode": "canary",
                        "canary_percent": CANARY_PERCENT,
                        # judged on decisions and errors only: latency on a loaded machine
                        # is no verdict a test can rely on
                        "rollback": {
                            "window_s": 60,
                            "min_requests": 40,
                            "decline_rate_band": 0.3,
                            "p99_ratio": 1000,
                            "p99_slack_ms": 600000,
                            "check_interval_s": 0.5,
                        },
                    },
                },
                state={
                    "backend": "redis",
                    "url": redis.url_on(host.redis_address),
                    "socket_timeout_s": 1.0,
                    "sqlite_path": str(work / "unused.sqlite"),
                },
                prediction_log={"dir": str(work / "predictions")},
            )
            config = write_config(root / f"host-{host.name}.yaml", host.settings)
            stack.enter_context(serve(host, config, v1))
        yield World(hosts, redis, store, (v1, v2), network, declines_all)


def body(row) -> dict:
    return {
        "transaction_id": row.transaction_id,
        "tx_datetime": row.tx_datetime.isoformat(),
        "customer_id": row.customer_id,
        "terminal_id": row.terminal_id,
        "tx_amount": row.tx_amount,
    }


def test_a_cards_transactions_alternated_between_hosts_see_each_others_history(
    world, small_transactions
) -> None:
    """Every other transaction goes to the other host, labels all to host A: the features each
    host logged equal the batch path's on the same stream (terminal risk included)."""
    a, b = world.hosts
    end = small_transactions["tx_datetime"].max()
    recent = small_transactions[small_transactions["tx_datetime"] > end - 40 * DAY]
    cards = recent["customer_id"].drop_duplicates().iloc[:15]
    stream = recent[recent["customer_id"].isin(cards)].reset_index(drop=True)
    stream = stream.assign(transaction_id="alt-" + stream["transaction_id"].astype(str))
    assert len(stream) > 500
    labels: list[dict] = []
    for i, row in enumerate(stream.itertuples()):
        response = (a, b)[i % 2].predict(body(row))
        assert response.status_code == 200, response.text
        labels.append({"transaction_id": row.transaction_id, "tx_fraud": int(row.tx_fraud)})
        if len(labels) == 20 or i == len(stream) - 1:
            fed = requests.post(f"{a.url}/feedback", json=labels, headers=AUTH, timeout=30)
            assert fed.status_code == 200 and fed.json()["known_transactions"] == len(labels)
            labels = []
    names = feature_names(world.settings.features)
    logged = pd.concat([a.logged(names), b.logged(names)]).set_index("transaction_id")
    offline = build_features(stream, world.settings.features)
    online = logged.loc[stream["transaction_id"], names].astype(float)
    on_b = stream.index % 2 == 1
    assert (offline.loc[on_b, "terminal_risk_30d"] > 0).sum() > 5  # A's labels used on B
    assert (offline.loc[on_b, "customer_nb_tx_7d"] > 1).sum() > 100  # A's rows used on B
    np.testing.assert_allclose(
        online.to_numpy(), offline[names].to_numpy(), rtol=0, atol=1e-9, equal_nan=True
    )


def test_a_label_fed_to_host_a_changes_host_b_terminal_risk_after_the_delay(world) -> None:
    a, b = world.hosts
    names = feature_names(world.settings.features)

    def tx(tid: str, day: int) -> dict:
        stamp = pd.Timestamp("2018-09-01") + day * DAY
        return {
            "transaction_id": tid,
            "tx_datetime": stamp.isoformat(),
            "customer_id": f"{tid}-card",
            "terminal_id": "delay-terminal",
            "tx_amount": 25.0,
        }

    assert a.predict(tx("delay-1", 0)).status_code == 200
    fed = requests.post(
        f"{a.url}/feedback", json={"transaction_id": "delay-1", "tx_fraud": 1}, headers=AUTH
    )
    assert fed.json() == {"received": 1, "known_transactions": 1}
    assert b.predict(tx("delay-2", 3)).status_code == 200  # 3 days later: not matured
    assert b.predict(tx("delay-3", 8)).status_code == 200  # 8 days later: matured
    logged = b.logged(names).set_index("transaction_id")
    assert logged.loc["delay-2", "terminal_nb_tx_7d"] == 0
    assert logged.loc["delay-2", "terminal_risk_7d"] == 0
    assert logged.loc["delay-3", "terminal_nb_tx_7d"] == 1
    assert logged.loc["delay-3", "terminal_risk_7d"] == 1.0


def test_a_promotion_is_picked_up_by_both_hosts(world) -> None:
    _, v2 = world.versions
    set_stage(world.settings, v2, "Production", "second")
    for host in world.hosts:
        wait_every_worker(host.url, WORKERS, v2, process=host.process, headers=SCRAPER)
        assert requests.get(f"{host.url}/model", timeout=30).json()["version"] == v2


def set_challenger(world: World, version: str) -> None:
    """@challenger on `version`; returns once every worker of both hosts has loaded it."""
    registry.client(world.settings).set_registered_model_alias(NAME, "challenger", version)
    for host in world.hosts:
        wait_every_worker_gauge(
            host.url,
            "fraudflow_model_version",
            WORKERS,
            float(version),
            process=host.process,
            headers=SCRAPER,
            role="challenger",
        )


def canary_stream(small_transactions: pd.DataFrame, prefix: str, cards: int) -> pd.DataFrame:
    """The last 40 days of `cards` cards, with fresh transaction ids."""
    end = small_transactions["tx_datetime"].max()
    recent = small_transactions[small_transactions["tx_datetime"] > end - 40 * DAY]
    chosen = recent["customer_id"].drop_duplicates().iloc[-cards:]
    stream = recent[recent["customer_id"].isin(chosen)].reset_index(drop=True)
    return stream.assign(transaction_id=prefix + stream["transaction_id"].astype(str))


def test_a_canary_sends_every_transaction_of_a_card_to_one_model_on_both_hosts(
    world, small_transactions
) -> None:
    """v1 (the former champion) as a canary challenger at 30 %: each card's transactions,
    alternated between the hosts, are all answered by one model, the one its hash names."""
    v1, v2 = world.versions
    set_challenger(world, v1)
    for host in world.hosts:
        wait_every_worker_gauge(
            host.url,
            "fraudflow_canary_percent",
            WORKERS,
            CANARY_PERCENT,
            process=host.process,
            headers=SCRAPER,
        )
    stream = canary_stream(small_transactions, "can-", 60)
    for i, row in enumerate(stream.itertuples()):
        response = world.hosts[i % 2].predict(body(row))
        assert response.status_code == 200, response.text
        routed = in_canary(row.customer_id, CANARY_PERCENT)
        assert response.json()["model"]["version"] == (v1 if routed else v2)
    logged = pd.concat([host.logged() for host in world.hosts])
    logged = logged[logged["transaction_id"].str.startswith("can-")]
    assert len(logged) == len(stream)
    assert (logged.groupby("customer_id")["model_version"].nunique() == 1).all()
    routed = logged["customer_id"].map(lambda card: in_canary(card, CANARY_PERCENT))
    assert (logged.loc[routed, "model_version"] == v1).all() and routed.any()
    assert (logged.loc[~routed, "model_version"] == v2).all() and (~routed).any()
    assert set(logged["model_role"]) == {"champion", "challenger"}
    for host in world.hosts:  # both hosts answered for canary cards
        mine = host.logged()
        assert (mine["model_role"] == "challenger").any()
        assert requests.get(f"{host.url}/model", timeout=30).json()["challenger"]["canary"] == {
            "open": True,
            "stopped": None,
        }


def test_a_canary_that_declines_everything_rolls_back_by_itself_on_both_hosts(
    world, small_transactions, tmp_path: Path
) -> None:
    """A challenger trained on inverted labels as the canary: once each role decided enough
    transactions its decline rate leaves the band, the canary stops on every worker of both
    hosts (one stop record in Redis), the champion decides for every card again, and the
    alert fires in a real Prometheus scraping host A."""
    a, _ = world.hosts
    _, champion = world.versions
    bad = world.declines_all
    set_challenger(world, bad)
    stream = canary_stream(small_transactions, "bad-", 200)
    with prometheus_and_alertmanager(
        tmp_path / "prometheus", f"{a.address}:{API_PORT}", METRICS_TOKEN
    ) as (prometheus, _):

        def stopped() -> tuple[bool, object]:
            records = [
                requests.get(f"{h.url}/model", timeout=30).json()["challenger"]["canary"]
                for h in world.hosts
            ]
            return all(r["stopped"] for r in records), records

        sent = 0
        for start in range(0, len(stream), 20):
            batch = [body(row) for row in stream.iloc[start : start + 20].itertuples()]
            response = requests.post(
                f"{world.hosts[sent % 2].url}/predict", json=batch, headers=AUTH, timeout=30
            )
            assert response.status_code == 200, response.text
            sent += 1
            if stopped()[0]:
                break
        # the records of the one call that found both hosts stopped: a later call may reach
        # another worker of a host, which closes the canary at its own next check
        seen = poll_until(stopped, "the canary stopped on both hosts", 60)
        records = [seen[0]["stopped"], seen[1]["stopped"]]
        assert records[0] == records[1]  # one record, the first writer's
        record = records[0]
        assert record["version"] == bad and "decline rate" in record["reason"]
        assert record["challenger"]["decline_rate"] > 0.9 > record["champion"]["decline_rate"]
        for host in world.hosts:
            for gauge, value in (
                ("fraudflow_canary_rolled_back", 1.0),
                ("fraudflow_canary_percent", 0.0),
            ):
                wait_every_worker_gauge(
                    host.url, gauge, WORKERS, value, process=host.process, headers=SCRAPER
                )
        # back to shadow: the champion answers the canary's cards, the challenger is logged
        after = canary_stream(small_transactions, "after-", 200)
        routed = after[after["customer_id"].map(lambda c: in_canary(c, CANARY_PERCENT))]
        for i, row in enumerate(routed.iloc[:40].itertuples()):
            response = world.hosts[i % 2].predict(body(row))
            assert response.json()["model"]["version"] == champion

        def firing() -> tuple[bool, object]:
            alerts = requests.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]
            names = {x["labels"]["alertname"] for x in alerts["alerts"] if x["state"] == "firing"}
            return "FraudflowCanaryRolledBack" in names, alerts

        poll_until(firing, "FraudflowCanaryRolledBack firing", 90)


def traffic(host: Host, prefix: str, stop: threading.Event, statuses: list) -> None:
    """Single-transaction /predicts until `stop`; every answer's status (or the exception)."""
    i = 0
    with requests.Session() as session:
        while not stop.is_set():
            tid = f"{prefix}-{i}"
            stamp = pd.Timestamp("2018-10-01") + pd.Timedelta(minutes=i)
            payload = {
                "transaction_id": tid,
                "tx_datetime": stamp.isoformat(),
                "customer_id": f"{prefix}-c{i % 7}",
                "terminal_id": f"{prefix}-m{i % 5}",
                "tx_amount": float(5 + i % 90),
            }
            try:
                response = session.post(
                    f"{host.url}/predict", json=payload, headers=AUTH, timeout=30
                )
                statuses.append((tid, response.status_code, response.text))
            except requests.RequestException as exc:
                statuses.append((tid, None, repr(exc)))
                if host.process.poll() is not None:
                    return
            i += 1


def test_redis_down_mid_traffic_is_503_and_serving_recovers_by_itself(world) -> None:
    """Redis killed while both hosts score: /predict 503 with a clear message (never a 500),
    /ready false, /health alive; Redis restarted (AOF): both hosts serve again, no restart."""
    stop = threading.Event()
    statuses: dict[str, list] = {host.name: [] for host in world.hosts}
    with ThreadPoolExecutor(len(world.hosts)) as pool:
        try:
            for host in world.hosts:
                pool.submit(traffic, host, f"outage-{host.name}", stop, statuses[host.name])
            poll_until(
                lambda: (all(len(s) >= 20 for s in statuses.values()), len(statuses["a"])),
                "traffic on both hosts",
                60,
            )
            acknowledged = [tid for tid, status, _ in statuses["a"] if status == 200]
            world.redis.kill()
            for host in world.hosts:
                until_status(host, 503)
                down = host.predict(_probe(host))
                assert down.status_code == 503
                assert down.json()["error"].startswith("online state unavailable: ")
                assert str(world.redis.port) not in down.text and PASSWORD not in down.text
                ready = requests.get(f"{host.url}/ready", timeout=30)
                assert ready.status_code == 503 and ready.json()["ready"] is False
                assert "online state unavailable" in ready.json()["reason"]
                assert requests.get(f"{host.url}/health", timeout=30).status_code == 200
            world.redis.start()
            for host in world.hosts:
                wait_for(f"{host.url}/ready", timeout=60, process=host.process)
                until_status(host, 200)
        finally:  # the traffic threads end whatever happened, or the pool waits forever
            stop.set()
    for name, seen in statuses.items():
        codes = {status for _, status, _ in seen}
        assert codes <= {200, 503}, (name, [s for s in seen if s[1] not in (200, 503)][:3])
        assert 503 in codes and 200 in codes
    with world.redis.client() as client:  # AOF: what was acknowledged survived the crash
        assert all(client.exists(f"fraudflow:tx:{tid}") for tid in acknowledged)


_probes = iter(range(10**9))


def until_status(host: Host, status: int) -> None:
    def check() -> tuple[bool, object]:
        response = host.predict(_probe(host))
        return response.status_code == status, response.status_code

    poll_until(check, f"host {host.name} answering {status}", 60, host.process)


def _probe(host: Host) -> dict:
    return {
        "transaction_id": f"probe-{host.name}-{next(_probes)}",
        "tx_datetime": "2018-11-01T10:00:00",
        "customer_id": "probe-card",
        "terminal_id": "probe-terminal",
        "tx_amount": 10.0,
    }


def test_killing_host_a_loses_no_acknowledged_prediction(world) -> None:
    """SIGKILL of host A's master and workers while both hosts score: every 200 either host
    answered is in its prediction log, and its transaction is in Redis."""
    a, b = world.hosts
    stop = threading.Event()
    statuses: dict[str, list] = {"a": [], "b": []}
    with ThreadPoolExecutor(4) as pool:
        try:
            for n, host in enumerate((a, a, b, b)):
                pool.submit(traffic, host, f"kill-{host.name}-{n}", stop, statuses[host.name])
            poll_until(
                lambda: (sum(s[1] == 200 for s in statuses["a"]) >= 50, len(statuses["a"])),
                "host A scoring",
                60,
            )
            os.killpg(a.process.pid, signal.SIGKILL)
            a.process.wait(30)
            after = len(statuses["b"])
            poll_until(
                lambda: (sum(s[1] == 200 for s in statuses["b"][after:]) >= 50, len(statuses["b"])),
                "host B scoring after A died",
                60,
            )
        finally:
            stop.set()
    acknowledged = [tid for seen in statuses.values() for tid, status, _ in seen if status == 200]
    assert all(status in (200, None) for seen in statuses.values() for _, status, _ in seen)
    logged = set(a.logged()["transaction_id"]) | set(b.logged()["transaction_id"])
    missing = [tid for tid in acknowledged if tid not in logged]
    assert not missing, missing[:5]
    with world.redis.client() as client:
        pipe = client.pipeline(transaction=False)
        for tid in acknowledged:
            pipe.exists(f"fraudflow:tx:{tid}")
        assert all(pipe.execute())
    print(f"hosts: {world.network}; acknowledged {len(acknowledged)}")
