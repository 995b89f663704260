"""The API as it runs in production: real gunicorn (2 workers), real MLflow stores and server."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import requests

from drift.monitor import record_error
from pipelines.prediction_log import read_predictions
from pipelines.promotion import set_stage
from pipelines.tracking import log_training_run
from pipelines.train import train_model
from tests.conftest import make_settings, write_config
from tests.servers import gunicorn_api, kill_group, mlflow_server, wait_for

pytestmark = pytest.mark.integration
POLL_S = 1.0


def serving_settings(root: Path, **mlflow):
    return make_settings(
        root / "work",
        serving={
            "poll_interval_s": POLL_S,
            "state_path": str(root / "state.sqlite"),
            "prediction_log_dir": str(root / "predictions"),
            "metrics_dir": str(root / "prom"),
        },
        **({"mlflow": mlflow} if mlflow else {}),
    )


def register(transactions: pd.DataFrame, settings) -> str:
    result = train_model(transactions, settings)
    _, version = log_training_run(result, settings, {"data_path": "test"})
    return str(version.version)


def tx(i: int) -> dict:
    return {
        "transaction_id": f"g{i}",
        "tx_datetime": f"2018-06-21T{8 + i % 12:02d}:{i % 60:02d}:00",
        "customer_id": f"c{i % 17}",
        "terminal_id": f"m{i % 11}",
        "tx_amount": float(5 + (i * 37) % 250),
    }


def metric_values(url: str, name: str) -> list[float]:
    """Every sample of metric NAME (with labels) in one scrape of /metrics."""
    text = requests.get(f"{url}/metrics", timeout=5).text
    return [
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(f"{name}{{")
    ]


def predictions_total(url: str) -> float:
    return sum(metric_values(url, "fraudflow_predictions_total"))


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory, small_transactions):
    root = tmp_path_factory.mktemp("gunicorn")
    settings = serving_settings(root)
    v1 = register(small_transactions, settings)
    set_stage(settings, v1, "Production", "first")
    strict = make_settings(settings.workdir, training={"max_rounds": 40})
    v2 = register(small_transactions, strict)
    return root, settings, v1, v2


@pytest.fixture(scope="module")
def api(two_versions):
    root, settings, _, _ = two_versions
    config = write_config(root / "serve.yaml", settings)
    with gunicorn_api(config, root / "gunicorn.log") as url:
        wait_for(f"{url}/ready")
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
            return fresh.post(f"{api}/predict", json=tx(i), timeout=10).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        while sent < 480 and (sent < 40 or len(list(folder.glob("predictions-*.jsonl"))) < 2):
            statuses = list(pool.map(post, range(100 + sent, 140 + sent)))
            assert statuses == [200] * 40
            sent += 40
    assert len(list(folder.glob("predictions-*.jsonl"))) == 2  # both workers served and logged
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
                    r = session.post(f"{api}/predict", json=tx(i), timeout=10)
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        seen.append((time.monotonic(), r.json()["model"]["version"]))
                except requests.RequestException as exc:
                    failures.append(repr(exc))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        time.sleep(1.0)
        promoted_at = time.monotonic()
        set_stage(settings, v2, "Production", "hot swap test")
        deadline = promoted_at + POLL_S + 15
        while time.monotonic() < deadline and not any(v == v2 for _, v in seen[-4:]):
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(30)
    assert not failures, failures[:5]
    assert len(seen) > 20
    first_v2 = min(t for t, v in seen if v == v2)
    assert first_v2 - promoted_at < POLL_S + 5
    last_v1 = max((t for t, v in seen if v == v1), default=0)
    assert all(v == v2 for t, v in seen if t > last_v1)  # once both workers swapped, no going back
    assert seen[-1][1] == v2


def test_a_new_embedded_store_is_created_once_before_the_workers_start(tmp_path) -> None:
    """`fraudflow serve` before anything else ran: the master creates the SQLite store, so the
    two workers do not race on its schema (one of them used to die at boot)."""
    settings = serving_settings(tmp_path)
    assert not (settings.workdir / "mlflow.db").exists()
    config = write_config(tmp_path / "serve.yaml", settings)
    log = tmp_path / "gunicorn.log"
    with gunicorn_api(config, log) as url:
        for _ in range(4):  # requests land on both workers
            assert requests.get(f"{url}/ready", timeout=5).status_code == 503
        assert (settings.workdir / "mlflow.db").exists()
    text = log.read_text()
    assert text.count("Booting worker") == 2, text[-3000:]
    assert "Traceback" not in text and "Worker failed to boot" not in text, text[-3000:]


def test_no_production_model_starts_unready_then_serves_once_promoted(tmp_path, small_transactions):
    settings = serving_settings(tmp_path)
    version = register(small_transactions, settings)
    config = write_config(tmp_path / "serve.yaml", settings)
    with gunicorn_api(config, tmp_path / "gunicorn.log") as url:
        assert requests.get(f"{url}/ready", timeout=5).status_code == 503
        response = requests.post(f"{url}/predict", json=tx(0), timeout=5)
        assert response.status_code == 503 and "promote" in response.json()["error"]
        set_stage(settings, version, "Production", "now")
        # each worker polls on its own: within the poll interval plus a few seconds, all serve
        deadline = time.monotonic() + POLL_S + 20
        statuses: list[int] = []
        while time.monotonic() < deadline and statuses[-6:] != [200] * 6:
            statuses.append(requests.post(f"{url}/predict", json=tx(0), timeout=5).status_code)
            time.sleep(0.1)
        assert statuses[-6:] == [200] * 6, statuses
        assert requests.get(f"{url}/ready", timeout=5).status_code == 200
        # and not only the worker that answered: each worker's version gauge shows the model
        while (
            time.monotonic() < deadline
            and metric_values(url, "fraudflow_model_version") != [float(version)] * 2
        ):
            time.sleep(0.25)
        assert metric_values(url, "fraudflow_model_version") == [float(version)] * 2


def test_registry_outage_keeps_serving_and_reports_degraded(tmp_path, small_transactions) -> None:
    with mlflow_server(tmp_path / "mlflow") as (tracking, server):
        settings = serving_settings(tmp_path, tracking_uri=tracking)
        version = register(small_transactions, settings)
        set_stage(settings, version, "Production", "via the tracking server")
        config = write_config(tmp_path / "serve.yaml", settings)
        with gunicorn_api(config, tmp_path / "gunicorn.log") as url:
            wait_for(f"{url}/ready")
            assert requests.get(f"{url}/health", timeout=5).json()["registry"] == "ok"
            kill_group(server)
            deadline = time.monotonic() + POLL_S + 30
            health = {}
            while time.monotonic() < deadline:
                health = requests.get(f"{url}/health", timeout=5).json()
                if health["registry"] == "unreachable":
                    break
                time.sleep(0.5)
            assert health["registry"] == "unreachable", health
            for i in range(6):
                response = requests.post(f"{url}/predict", json=tx(i), timeout=10)
                assert response.status_code == 200
                assert response.json()["model"]["version"] == version
            assert requests.get(f"{url}/ready", timeout=5).status_code == 200
            assert registry_up(url) == {0.0}
            # the registry comes back on the same address: every worker reports it up again
            port = int(tracking.rsplit(":", 1)[1])
            with mlflow_server(tmp_path / "mlflow", port=port):
                deadline = time.monotonic() + POLL_S + 30
                while time.monotonic() < deadline and registry_up(url) != {1.0}:
                    time.sleep(0.5)
                assert registry_up(url) == {1.0}
                assert requests.get(f"{url}/health", timeout=5).json()["registry"] == "ok"


def registry_up(url: str) -> set[float]:
    """The value of fraudflow_registry_up of every live worker."""
    return set(metric_values(url, "fraudflow_registry_up"))
