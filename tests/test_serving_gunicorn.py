"""The API as it runs in production: real gunicorn (2 workers), real MLflow stores and server."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from drift.monitor import record_error
from pipelines.log.reader import log_files, read_predictions
from pipelines.mlflow.promotion import set_stage
from tests.support.models import train_and_register
from tests.support.processes import kill_group
from tests.support.servers import (
    gunicorn_api,
    mlflow_server,
    wait_every_worker,
    wait_every_worker_gauge,
    worker_gauge,
)
from tests.support.settings import make_settings, write_config
from tests.support.traffic import api_transaction

pytestmark = pytest.mark.integration
POLL_S = 1.0
WORKERS = 2


def serving_settings(root: Path, **mlflow):
    return make_settings(
        root / "work",
        serving={"poll_interval_s": POLL_S, "metrics_dir": str(root / "prom")},
        state={"sqlite_path": str(root / "state.sqlite")},
        prediction_log={"dir": str(root / "predictions")},
        **({"mlflow": mlflow} if mlflow else {}),
    )


def tx(i: int) -> dict:
    return api_transaction(i, "g")


def metric_values(url: str, name: str) -> list[float]:
    """Every sample of metric NAME (with labels) in one scrape of /metrics."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    return [
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(f"{name}{{")
    ]


def logging_workers(folder: Path) -> set[str]:
    """The pids of the workers that wrote to the prediction log."""
    return {path.stem.rsplit("-", 1)[1] for path in log_files(folder)}


def predictions_total(url: str) -> float:
    return sum(metric_values(url, "fraudflow_predictions_total"))


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory, small_transactions):
    root = tmp_path_factory.mktemp("gunicorn")
    settings = serving_settings(root)
    v1 = train_and_register(small_transactions, settings)[0]
    set_stage(settings, v1, "Production", "first")
    strict = make_settings(settings.workdir, training={"max_rounds": 40})
    v2 = train_and_register(small_transactions, strict)[0]
    return root, settings, v1, v2


@pytest.fixture(scope="module")
def api(two_versions):
    root, settings, v1, _ = two_versions
    config = write_config(root / "serve.yaml", settings)
    with gunicorn_api(config, root / "gunicorn.log", version=v1, workers=WORKERS) as url:
        yield url


def test_scores_over_http(api, two_versions) -> None:
    _, _, v1, _ = two_versions
    response = requests.post(f"{api}/predict", json=tx(0), timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["model"]["version"] == v1
    model = requests.get(f"{api}/model", timeout=5).json()
    assert model["version"] == v1 and model["stage"] == "Production"
    assert 0 < model["threshold"] < 1 and model["run_id"]
    bad = requests.post(f"{api}/predict", data="{", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400


def test_metrics_add_up_across_workers(api, two_versions) -> None:
    """Concurrent clients reach both workers; /metrics sums what every worker counted."""
    folder = two_versions[0] / "predictions"
    before = predictions_total(api)
    sent = 0

    def post(i: int) -> int:
        with requests.Session() as fresh:
            return fresh.post(f"{api}/predict", json=tx(i), timeout=30).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        while sent < 480 and (sent < 40 or len(logging_workers(folder)) < WORKERS):
            statuses = list(pool.map(post, range(100 + sent, 140 + sent)))
            assert statuses == [200] * 40
            sent += 40
    # both workers served and logged (a file per worker and UTC day)
    workers = {
        re.search(r'pid="(\d+)"', labels).group(1)
        for labels in worker_gauge(api, "fraudflow_model_version")
    }
    assert logging_workers(folder) == workers and len(workers) == WORKERS
    assert predictions_total(api) - before == sent
    assert read_predictions(folder)["transaction_id"].str.startswith("g").sum() == sent + 1


def test_the_monitor_verdict_is_exported_by_every_worker(api, two_versions) -> None:
    """The monitor's last summary reaches /metrics in multiprocess mode, errors included."""
    settings = two_versions[1]
    record_error(settings, "no predictions logged")
    for _ in range(8):  # each scrape is answered by whichever worker accepts it
        text = requests.get(f"{api}/metrics", timeout=5).text
        assert 'fraudflow_monitor_verdict{verdict="error"} 1.0' in text
        assert 'fraudflow_monitor_verdict{verdict="no_drift"} 0.0' in text
        assert "fraudflow_monitor_last_run_timestamp_seconds " in text
        assert "fraudflow_drift_share" not in text  # an error carries no drift figures
        # computed at scrape time too: the data volume and what grows on it
        for gauge in ("data_volume_free_bytes", "data_volume_size_bytes", "online_state_bytes"):
            assert f"\nfraudflow_{gauge} " in text


def test_promotion_swaps_the_model_with_no_failed_request(api, two_versions) -> None:
    _, settings, v1, v2 = two_versions
    seen: list[tuple[float, str]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        i = 1000
        with requests.Session() as session:
            while not stop.is_set() and i < 6000:
                i += 1
                try:
                    r = session.post(f"{api}/predict", json=tx(i), timeout=30)
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        seen.append((time.monotonic(), r.json()["model"]["version"]))
                except requests.RequestException as exc:
                    failures.append(repr(exc))

    def wait_until(condition) -> None:
        deadline = time.monotonic() + 120
        while not condition() and not failures and thread.is_alive():
            assert time.monotonic() < deadline, (len(seen), failures[:5])
            time.sleep(0.1)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_until(lambda: len(seen) >= 10)  # traffic flows on v1 before the promotion
        set_stage(settings, v2, "Production", "hot swap test")
        wait_every_worker(api, WORKERS, v2)  # each worker swaps at its own next poll
        # the one request in flight now may have started on v1; every later one starts after
        # both workers swapped
        swapped = len(seen) + 1
        wait_until(lambda: len(seen) >= swapped + 10)
    finally:
        stop.set()
        thread.join(60)
    assert not failures, failures[:5]
    assert len(seen) > 20
    assert seen[0][1] == v1
    last_v1 = max((t for t, v in seen if v == v1), default=0)
    assert all(v == v2 for t, v in seen if t > last_v1)  # once both workers swapped, no going back
    assert [v for _, v in seen[swapped:]] == [v2] * (len(seen) - swapped)
    assert seen[-1][1] == v2
    # leave the module's server as the other tests expect it, whatever order they run in
    set_stage(settings, v1, "Production", "back to the module's model")
    wait_every_worker(api, WORKERS, v1)


def test_a_new_embedded_store_is_created_once_before_the_workers_start(tmp_path) -> None:
    """`fraudflow serve` before anything else ran: the master creates the SQLite store, so the
    two workers do not race on its schema (one of them used to die at boot)."""
    settings = serving_settings(tmp_path)
    assert not (settings.workdir / "mlflow.db").exists()
    config = write_config(tmp_path / "serve.yaml", settings)
    log = tmp_path / "gunicorn.log"
    with gunicorn_api(config, log, version=None, workers=WORKERS) as url:
        for _ in range(4):  # every worker has booted: whichever answers, none has a model
            assert requests.get(f"{url}/ready", timeout=30).status_code == 503
        assert (settings.workdir / "mlflow.db").exists()
    text = log.read_text()
    assert text.count("Booting worker") == 2, text[-3000:]
    assert "Traceback" not in text and "Worker failed to boot" not in text, text[-3000:]


def test_no_production_model_starts_unready_then_serves_once_promoted(tmp_path, small_transactions):
    settings = serving_settings(tmp_path)
    version = train_and_register(small_transactions, settings)[0]
    config = write_config(tmp_path / "serve.yaml", settings)
    with gunicorn_api(config, tmp_path / "gunicorn.log", version=None, workers=WORKERS) as url:
        assert requests.get(f"{url}/ready", timeout=30).status_code == 503
        response = requests.post(f"{url}/predict", json=tx(0), timeout=30)
        assert response.status_code == 503 and "promote" in response.json()["error"]
        set_stage(settings, version, "Production", "now")
        # each worker polls on its own: one worker's answer says nothing of the other, so wait
        # until every worker's version gauge shows the model
        wait_every_worker(url, WORKERS, version)
        versions = worker_gauge(url, "fraudflow_model_version")  # the champion's, per worker
        assert list(versions.values()) == [float(version)] * WORKERS, versions
        statuses = [
            requests.post(f"{url}/predict", json=tx(0), timeout=30).status_code for _ in range(6)
        ]
        assert statuses == [200] * 6, statuses
        assert requests.get(f"{url}/ready", timeout=30).status_code == 200


def test_registry_outage_keeps_serving_and_reports_degraded(tmp_path, small_transactions) -> None:
    with mlflow_server(tmp_path / "mlflow") as (tracking, server):
        settings = serving_settings(tmp_path, tracking_uri=tracking)
        version = train_and_register(small_transactions, settings)[0]
        set_stage(settings, version, "Production", "via the tracking server")
        config = write_config(tmp_path / "serve.yaml", settings)
        # every worker has loaded the model before the registry goes away
        log = tmp_path / "gunicorn.log"
        with gunicorn_api(config, log, version=version, workers=WORKERS) as url:
            assert requests.get(f"{url}/health", timeout=30).json()["registry"] == "ok"
            kill_group(server)
            # each worker notices at its own next poll
            wait_every_worker_gauge(url, "fraudflow_registry_up", WORKERS, 0.0)
            assert requests.get(f"{url}/health", timeout=30).json()["registry"] == "unreachable"
            for i in range(6):
                response = requests.post(f"{url}/predict", json=tx(i), timeout=30)
                assert response.status_code == 200
                assert response.json()["model"]["version"] == version
            assert requests.get(f"{url}/ready", timeout=30).status_code == 200
            assert registry_up(url) == {0.0}
            # the registry comes back on the same address: every worker reports it up again
            port = int(tracking.rsplit(":", 1)[1])
            with mlflow_server(tmp_path / "mlflow", port=port):
                wait_every_worker_gauge(url, "fraudflow_registry_up", WORKERS, 1.0)
                assert registry_up(url) == {1.0}
                assert requests.get(f"{url}/health", timeout=30).json()["registry"] == "ok"
            wait_every_worker(url, WORKERS, version)  # and the model never left any worker


def registry_up(url: str) -> set[float]:
    """The value of fraudflow_registry_up of every live worker."""
    return set(metric_values(url, "fraudflow_registry_up"))


def test_a_replica_started_while_the_registry_is_down_serves_its_cached_model(
    tmp_path, small_transactions
) -> None:
    """Served once from a real `mlflow server` (which fills the replica's model cache), then
    restarted while that server is down: it serves the cached version and says so, and once
    the registry is back it follows a promotion."""
    log = tmp_path / "gunicorn.log"
    with mlflow_server(tmp_path / "mlflow") as (tracking, server):
        settings = serving_settings(tmp_path, tracking_uri=tracking)
        v1 = train_and_register(small_transactions, settings)[0]
        v2 = train_and_register(small_transactions, settings)[0]
        set_stage(settings, v1, "Production", "via the tracking server")
        config = write_config(tmp_path / "serve.yaml", settings)
        with gunicorn_api(config, log, version=v1, workers=WORKERS) as url:
            health = requests.get(f"{url}/health", timeout=30).json()
            assert health["model_source"] == "registry" and health["registry"] == "ok"
        port = int(tracking.rsplit(":", 1)[1])
    cache = settings.under_workdir(settings.serving.model_cache_dir)
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [
        "current.json",
        f"v{v1}",
    ]
    with gunicorn_api(config, log, version=v1, workers=WORKERS) as url:
        for _ in range(4):  # whichever worker answers
            health = requests.get(f"{url}/health", timeout=30).json()
            assert health["registry"] == "unreachable", health
            assert health["model_source"] == "cache" and health["model_version"] == v1, health
        for i in range(6):
            response = requests.post(f"{url}/predict", json=tx(i), timeout=30)
            assert response.status_code == 200, response.text
            assert response.json()["model"]["version"] == v1
        assert requests.get(f"{url}/ready", timeout=30).status_code == 200
        assert requests.get(f"{url}/model", timeout=30).json()["model_source"] == "cache"
        assert registry_up(url) == {0.0}
        with mlflow_server(tmp_path / "mlflow", port=port):
            set_stage(settings, v2, "Production", "promoted while the replica ran on its cache")
            wait_every_worker(url, WORKERS, v2)
            for _ in range(4):
                health = requests.get(f"{url}/health", timeout=30).json()
                assert health["registry"] == "ok" and health["model_source"] == "registry", health
                response = requests.post(f"{url}/predict", json=tx(100), timeout=30)
                assert response.status_code == 200 and response.json()["model"]["version"] == v2
    text = log.read_text()
    assert "from the model cache" in text and "Traceback" not in text, text[-3000:]
