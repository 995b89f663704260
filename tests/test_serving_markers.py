"""Promotion outside fraudflow reaching the running API: real gunicorn (2 workers) with the
registry sync `fraudflow serve` starts beside it, on a real embedded store. The gestures are
MlflowClient calls, as any MLflow client makes them (tests/test_browser_registry_ui.py makes
them in the MLflow UI itself)."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from pipelines.mlflow import store as mlflow_store
from pipelines.mlflow.markers import read_markers
from pipelines.mlflow.promotion import OUTSIDE_ACTOR, promotion_history, set_stage
from tests.support.models import train_and_register
from tests.support.processes import poll_until
from tests.support.servers import gunicorn_api, wait_every_worker
from tests.support.settings import make_settings, write_config
from tests.support.traffic import api_transaction

pytestmark = pytest.mark.integration
NAME = "fraud-detector"
WORKERS = 2
MOVES = 20


def tx(i: int) -> dict:
    return api_transaction(i, "m")


@pytest.fixture(scope="module")
def served(tmp_path_factory, small_transactions):
    """v1 in service by `fraudflow promote`, v2 registered; the API with its registry sync."""
    root = tmp_path_factory.mktemp("markers")
    settings = make_settings(
        root / "work",
        serving={"poll_interval_s": 1.0, "metrics_dir": str(root / "prom")},
        state={"sqlite_path": str(root / "state.sqlite")},
        prediction_log={"dir": str(root / "predictions")},
        registry_sync={"interval_s": 1.0},
    )
    v1, result = train_and_register(small_transactions, settings, "first", actor="ci")
    lighter = make_settings(settings.workdir, training={"max_rounds": 40})
    v2 = train_and_register(small_transactions, lighter)[0]
    config = write_config(root / "serve.yaml", settings)
    with gunicorn_api(config, root / "gunicorn.log", version=v1, workers=WORKERS) as url:
        yield settings, mlflow_store.client(settings), url, v1, v2
    log = (root / "gunicorn.log").read_text()
    assert "registry sync started" in log, log[-3000:]


def newest_outside_record(settings, version: str, before: int) -> dict:
    """Until a promotion record newer than the `before` first ones is the registry sync's of
    `version` (it writes the record just after moving the markers)."""

    def check():
        history = promotion_history(settings)
        newest = history.iloc[0].to_dict()
        done = len(history) > before and newest["actor"] == OUTSIDE_ACTOR
        return done and newest["version"] == version, newest

    return poll_until(check, f"the sync's record of v{version}", 60)


def markers_agree_on(settings, client, version: str) -> None:
    """Until the registry sync has brought both markers onto `version`."""

    def check():
        found = read_markers(client, NAME, settings.mlflow.champion_alias)
        return found.alias == version and found.production_versions == (version,), found

    poll_until(check, f"both markers on v{version}", 60)


class Traffic:
    """/predict in a loop on another thread: every answer's version, every failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.versions: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        i = 0
        with requests.Session() as session:
            while not self._stop.is_set():
                i += 1
                try:
                    r = session.post(f"{self.url}/predict", json=tx(i), timeout=30)
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        self.versions.append(r.json()["model"]["version"])
                except requests.RequestException as exc:
                    self.failures.append(repr(exc))

    def __enter__(self) -> "Traffic":
        self._thread.start()
        poll_until(lambda: (len(self.versions) >= 10, len(self.versions)), "traffic", 60)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)


def test_moving_the_alias_back_and_forth_fails_no_request(served) -> None:
    settings, client, url, v1, v2 = served
    before = len(promotion_history(settings))
    with Traffic(url) as traffic:
        for move in range(MOVES):
            target = v2 if move % 2 == 0 else v1
            client.set_registered_model_alias(NAME, settings.mlflow.champion_alias, target)
            wait_every_worker(url, WORKERS, target, timeout=120)
            assert not traffic.failures, traffic.failures[:5]
        answered = len(traffic.versions)
        poll_until(lambda: (len(traffic.versions) > answered + 10, 0), "traffic on", 60)
    assert not traffic.failures, traffic.failures[:5]
    last = v1 if MOVES % 2 == 0 else v2
    wait_every_worker(url, WORKERS, last, timeout=5)  # each worker ends on the last version
    assert traffic.versions[-1] == last and {v1, v2} <= set(traffic.versions)
    markers_agree_on(settings, client, last)
    model = requests.get(f"{url}/model", timeout=10).json()
    assert model["version"] == last and model["markers"]["followed"] == last
    newest_outside_record(settings, last, before)
    history = promotion_history(settings)
    assert set(history[history["actor"] == OUTSIDE_ACTOR]["gesture"]) == {"alias"}


def test_a_stage_transition_is_served_and_the_alias_follows(served) -> None:
    settings, client, url, v1, v2 = served
    current = requests.get(f"{url}/model", timeout=10).json()["version"]
    target = v2 if current == v1 else v1
    markers_agree_on(settings, client, current)
    before = len(promotion_history(settings))
    client.transition_model_version_stage(NAME, target, "Production", True)  # the legacy UI
    wait_every_worker(url, WORKERS, target, timeout=120)
    model = requests.get(f"{url}/model", timeout=10).json()
    assert model["markers"]["followed"] == target
    markers_agree_on(settings, client, target)
    assert newest_outside_record(settings, target, before)["gesture"] == "stage"
    # fraudflow's own promotion moves both markers: no record of the sync's
    set_stage(settings, current, "Production", "back", actor="ci")
    wait_every_worker(url, WORKERS, current, timeout=120)
    time.sleep(3 * settings.registry_sync.interval_s)  # passes of the sync that must add nothing
    history = promotion_history(settings)
    assert (history.iloc[0]["actor"], history.iloc[0]["gesture"]) == ("ci", "cli")
