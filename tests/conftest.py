"""Shared fixtures: small simulated data and settings pointing at a temporary MLflow store
(what they run on is in tests/support)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from pipelines.data import load_transactions
from pipelines.training.simulate import simulate_transactions, write_daily_parquet
from tests.support.browser import WebDriver, artifact_folder, chromium, save_failure_artifacts
from tests.support.redis import RedisServer, redis_server
from tests.support.settings import make_settings

# Markers of tests that share one resource per machine (one dockerd on one data root, one local
# Spark JVM): `make test` runs pytest-xdist with `--dist loadfile`, which keeps a module on one
# worker, so each of these must stay within one module. (`--dist loadgroup` with xdist_group
# marks would say it per test, but pytest-xdist 3.8 cannot regroup nodes under pytest 9.)
ONE_PER_MACHINE = ("container", "spark")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if "browser" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("browser")
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests that drive Chromium (the `browser` fixture) must carry the marker `browser`, "
            f"which `make test-unit` leaves out: {unmarked}"
        )
    for marker in ONE_PER_MACHINE:
        modules = {
            item.nodeid.split("::", 1)[0] for item in items if item.get_closest_marker(marker)
        }
        if len(modules) > 1:
            raise pytest.UsageError(
                f"tests marked {marker!r} share one resource per machine and must live in one "
                f"module (one xdist worker runs a module): found in {sorted(modules)}"
            )


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("transactions")
    settings = make_settings(folder.parent / "unused")
    write_daily_parquet(simulate_transactions(settings.simulation), folder)
    return folder


@pytest.fixture(scope="session")
def small_transactions(small_data_dir: Path) -> pd.DataFrame:
    return load_transactions(small_data_dir, require_labels=True)


@pytest.fixture(autouse=True)
def _no_leaking_tracking_state(monkeypatch: pytest.MonkeyPatch):
    """Each test starts with no active run and no tracking URI from the outside world."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in list(os.environ):
        if name.startswith("FRAUDFLOW__"):
            monkeypatch.delenv(name)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture(scope="session")
def redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session's tests that need one (marker `multihost`)."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_service: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    with redis_service.client() as client:
        client.flushall()
    return redis_service.url


# --- the browser tests: a headless Chromium, and what it saw when a test failed ---------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on its test (`item.rep_setup`, `item.rep_call`): a fixture's
    teardown learns from them whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[WebDriver]:
    """A headless Chromium for this test alone (marker `browser`). When the test fails, its
    screenshot and browser console are saved in test-output/browser/<test>/ (CI uploads them)."""
    folder = artifact_folder(request.node.nodeid)
    shutil.rmtree(folder, ignore_errors=True)  # what an earlier failing run left there
    with chromium() as driver:
        yield driver
        reports = [getattr(request.node, f"rep_{when}", None) for when in ("setup", "call")]
        if any(report is not None and report.failed for report in reports):
            save_failure_artifacts(driver, folder)
