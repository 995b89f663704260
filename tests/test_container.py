"""The image, built from the repository's Dockerfile and run for real (marker `container`).

The engine and the local base image come from tests/support/docker_engine.py (installed and started
when absent, stopped at the end). One image build and one demo store per run: the store is
made by the image's own job entry points (simulate, train, promote) on a host folder mounted
at /data, owned by the image's user 10001, and the API container serves it as that user on a
read-only root file system with host networking.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from pipelines.model import ARTIFACTS_FOLDER, BOOSTER_FILE
from tests.support import REPO
from tests.support.docker_engine import Engine, EngineError, ensure_base_image, ensure_engine
from tests.support.processes import free_port, poll_until
from tests.support.servers import wait_every_worker
from tests.support.settings import make_settings, write_config
from tests.support.stack import compose_service, postgres_server

pytestmark = pytest.mark.container

UID = 10001
SCORER = "container-scorer-token-0001"
METRICS = "container-metrics-token-0001"
WORKERS = 2
CONFIG = "/data/fraudflow.yaml"
TX = {
    "transaction_id": "c-1",
    "tx_datetime": "2018-06-21T12:00:00",
    "customer_id": "7",
    "terminal_id": "9",
    "tx_amount": 42.0,
}


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Image:
    engine: Engine
    tag: str
    build_seconds: float
    size_bytes: int


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    try:
        engine = ensure_engine()
    except EngineError as exc:
        pytest.fail(f"the container tests need a Docker engine: {exc}")
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def image(engine: Engine) -> Iterator[Image]:
    """The repository's Dockerfile built on the local base (layers cached by the engine), under
    a tag of this session's own (another session may build on the same engine), untagged at
    the end."""
    base = ensure_base_image(engine)
    tag = f"fraudflow:container-test-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    engine.build(REPO, tag, build_args={"PYTHON_IMAGE": base}, timeout=3600)
    seconds = time.monotonic() - started
    size = int(engine.run("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    print(f"\nimage {tag} on {base}: built in {seconds:.0f} s, {size / 1e9:.2f} GB")
    yield Image(engine, tag, seconds, size)
    engine.run("image", "rm", tag, check=False)


def confined(folder: Path) -> list[str]:
    """The `docker run` flags of every container here: the host's network, a read-only root
    file system with a private /tmp, and `folder` as /data."""
    return ["--network", "host", "--read-only", "--tmpfs", "/tmp", "--volume", f"{folder}:/data"]


def docker_run_result(
    image: Image, store: Path, *args: str, timeout: float = 900
) -> subprocess.CompletedProcess:
    """`docker run --rm ARGS` on the store, as the image's user, like a job of the image."""
    return image.engine.run(
        "run",
        "--rm",
        "--no-healthcheck",  # the API's check: a job serves nothing
        *confined(store),
        "--env",
        f"FRAUDFLOW_CONFIG={CONFIG}",
        *args,
        check=False,
        timeout=timeout,
    )


def docker_run(image: Image, store: Path, *args: str, timeout: float = 900) -> str:
    """`docker run --rm ARGS` that must succeed: its output."""
    result = docker_run_result(image, store, *args, timeout=timeout)
    assert result.returncode == 0, f"{args}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result.stdout


def job(image: Image, store: Path, command: str, *args: str) -> str:
    """`fraudflow COMMAND --config <the store's settings> ARGS` in the image: its output."""
    return docker_run(
        image, store, "--entrypoint", "fraudflow", image.tag, command, "--config", CONFIG, *args
    )


@pytest.fixture(scope="module")
def store(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo store made in the image: small world simulated, three versions trained, v1 in
    Production. The folder is the container's /data, owned by its user."""
    folder = tmp_path_factory.mktemp("container-data")
    settings = make_settings(
        Path("/data"),
        serving={
            "workers": WORKERS,
            "poll_interval_s": 1,
            "tokens": [{"name": "probe", "scopes": ["score", "label"], "sha256": sha256(SCORER)}],
            "metrics_token": {"sha256": sha256(METRICS)},
        },
        monitoring={"min_rows": 20},
    )
    write_config(folder / "fraudflow.yaml", settings)
    os.chown(folder, UID, UID)
    os.chown(folder / "fraudflow.yaml", UID, UID)
    job(image, folder, "simulate")
    for _ in range(3):
        job(image, folder, "train")
    job(image, folder, "promote", "--version", "1", "--stage", "Production", "--actor", "test")
    return folder


def model_folder(store: Path, version: str) -> Path:
    """The host folder of a registered version's logged model files (read from the store)."""
    with sqlite3.connect(f"file:{store / 'mlflow.db'}?mode=ro", uri=True) as db:
        (location,) = db.execute(
            "SELECT storage_location FROM model_versions WHERE version = ?", (int(version),)
        ).fetchone()
    db.close()
    path = location.removeprefix("file://")
    assert path.startswith("/data/"), location
    folder = store / path.removeprefix("/data/") / ARTIFACTS_FOLDER
    assert (folder / BOOSTER_FILE).is_file(), folder
    return folder


@dataclass(frozen=True)
class Api:
    name: str
    url: str


def inspect(engine: Engine, name: str, template: str) -> str:
    return engine.run("inspect", "--format", template, name).stdout.strip()


@pytest.fixture(scope="module")
def api(image: Image, store: Path) -> Iterator[Api]:
    """The image's default command (gunicorn) on the store: healthy by its own HEALTHCHECK."""
    engine, port = image.engine, free_port()
    name = f"fraudflow-api-{uuid.uuid4().hex[:8]}"
    engine.run(
        "run",
        "--detach",
        "--name",
        name,
        *confined(store),
        "--env",
        f"FRAUDFLOW_CONFIG={CONFIG}",
        "--env",
        f"FRAUDFLOW__SERVING__PORT={port}",
        image.tag,
    )
    try:

        def healthy() -> tuple[bool, object]:
            state = json.loads(inspect(engine, name, "{{json .State}}"))
            if not state["Running"]:
                raise AssertionError(f"the API container exited: {logs(engine, name)}")
            return state.get("Health", {}).get("Status") == "healthy", state.get("Health")

        poll_until(healthy, "the container's HEALTHCHECK reporting healthy", 240)
        url = f"http://127.0.0.1:{port}"
        wait_every_worker(url, WORKERS, "1", headers=auth(METRICS))
        yield Api(name, url)
    finally:
        print(logs(engine, name)[-4000:])
        engine.run("rm", "--force", name, check=False)


def logs(engine: Engine, name: str) -> str:
    result = engine.run("logs", name, check=False)
    return result.stdout + result.stderr


def test_the_image_builds_on_the_local_base(image: Image) -> None:
    config = json.loads(inspect(image.engine, image.tag, "{{json .Config}}"))
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["gunicorn", "-c", "/app/serving/gunicorn.conf.py"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert 0 < image.size_bytes < 3e9


def test_the_api_runs_as_its_user_on_a_read_only_root_and_serves(
    image: Image, store: Path, api: Api
) -> None:
    engine = image.engine
    assert inspect(engine, api.name, "{{.HostConfig.ReadonlyRootfs}}") == "true"
    status = engine.run("exec", api.name, "cat", "/proc/1/status").stdout
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == [str(UID)] * 4, status
    assert engine.run("exec", api.name, "touch", "/app/x", check=False).returncode != 0
    # gunicorn's control socket stays out of $HOME (the data volume)
    assert not (store / ".gunicorn").exists()

    ready = requests.get(f"{api.url}/ready", timeout=30)
    assert ready.status_code == 200 and ready.json()["model_version"] == "1"
    assert requests.post(f"{api.url}/predict", json=TX, timeout=30).status_code == 401
    scored = requests.post(f"{api.url}/predict", json=TX, headers=auth(SCORER), timeout=30)
    assert scored.status_code == 200, scored.text
    assert 0 <= scored.json()["fraud_probability"] <= 1 and scored.json()["model"]["version"] == "1"
    assert requests.get(f"{api.url}/metrics", timeout=30).status_code == 401
    metrics = requests.get(f"{api.url}/metrics", headers=auth(METRICS), timeout=30).text
    assert 'fraudflow_predictions_total{decision="approve",model_role="champion"}' in metrics
    # what it scored is in the prediction log on the volume, written by the container's user
    logged = [p for p in (store / "predictions").rglob("*") if p.is_file()]
    assert logged and all(p.stat().st_uid == UID for p in logged)


def test_a_version_promoted_from_outside_is_hot_swapped_even_from_a_read_only_folder(
    image: Image, store: Path, api: Api
) -> None:
    """v2's model folder is made unwritable first: loading a version must write nothing there
    (MLflow's registered_model_meta goes only into a downloaded model's root folder)."""
    folder = model_folder(store, "2")
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    job(image, store, "promote", "--version", "2", "--stage", "Production", "--actor", "test")
    wait_every_worker(api.url, WORKERS, "2", headers=auth(METRICS))
    model = requests.get(f"{api.url}/model", headers=auth(SCORER), timeout=30).json()
    assert model["version"] == "2" and model["failed_version"] is None
    scored = requests.post(
        f"{api.url}/predict", json={**TX, "transaction_id": "c-2"}, headers=auth(SCORER), timeout=10
    )
    assert scored.status_code == 200 and scored.json()["model"]["version"] == "2"


def test_a_version_that_fails_to_load_is_reported_with_its_error(
    image: Image, store: Path, api: Api
) -> None:
    """v3's booster file is damaged, then v3 is promoted: v2 keeps serving, /model names v3
    and its error, the reload-failure counter counts it, the container stays healthy."""
    booster = model_folder(store, "3") / BOOSTER_FILE
    booster.write_text(booster.read_text()[:200])
    job(image, store, "promote", "--version", "3", "--stage", "Production", "--actor", "test")

    def failed(version: str | None) -> Callable[[], tuple[bool, object]]:
        def check() -> tuple[bool, object]:
            model = requests.get(f"{api.url}/model", headers=auth(SCORER), timeout=30).json()
            return model.get("failed_version") == version, model

        return check

    try:
        model = poll_until(failed("3"), "/model reporting v3's load failure", 60)
        _assert_failure_reported(api, model)
    finally:  # v2 back in Production: the failure no longer stands
        job(image, store, "promote", "--version", "2", "--stage", "Production", "--actor", "test")
    model = poll_until(failed(None), "/model with no failure once v2 is back", 60)
    assert model["version"] == "2" and model["load_error"] is None


def _assert_failure_reported(api: Api, model: dict) -> None:
    assert model["version"] == "2" and "booster.txt" in model["load_error"], model
    metrics = requests.get(f"{api.url}/metrics", headers=auth(METRICS), timeout=30).text
    failures = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("fraudflow_model_reload_failures_total ")
    ]
    assert failures and failures[0] >= 1, metrics
    assert requests.get(f"{api.url}/health", timeout=30).status_code == 200


def test_the_job_entry_points_run_in_the_image(image: Image, store: Path, api: Api) -> None:
    """`fraudflow --help` and a monitor run on the store the API has written to."""
    assert "monitor" in docker_run(image, store, "--entrypoint", "fraudflow", image.tag, "--help")
    batch = [{**TX, "transaction_id": f"m-{i}", "tx_amount": 10.0 + i} for i in range(30)]
    response = requests.post(f"{api.url}/predict", json=batch, headers=auth(SCORER), timeout=30)
    assert response.status_code == 200
    result = docker_run_result(
        image, store, "--entrypoint", "fraudflow", image.tag, "monitor", "--config", CONFIG
    )
    # 0 no drift, 1 drift, 2 degraded; 3 is an error
    assert result.returncode in (0, 1, 2), result.stdout[-3000:] + result.stderr[-3000:]
    assert (store / "reports" / "latest.json").is_file()


def test_the_tracking_server_starts_on_postgresql_in_the_image(image: Image, tmp_path) -> None:
    """The compose file's `mlflow server` service (command, basic-auth app, environment) in the
    image, on a real PostgreSQL: it answers, and an account reads the database through it."""
    docker_run(image, tmp_path, "--entrypoint", "python", image.tag, "-c", "import psycopg2")
    service = compose_service("mlflow")
    command = [str(part) for part in service["command"]]
    port = free_port()
    for flag, value in {"--host": "127.0.0.1", "--port": str(port)}.items():
        command[command.index(flag) + 1] = value
    data = tmp_path / "mlflow-data"
    data.mkdir()
    os.chown(data, UID, UID)
    admin = ("admin", "container-admin-password")
    name = f"fraudflow-mlflow-{uuid.uuid4().hex[:8]}"
    engine = image.engine
    with postgres_server() as backend:
        environment = {
            **service["environment"],
            "MLFLOW_BACKEND_STORE_URI": backend,
            "MLFLOW_AUTH_ADMIN_USERNAME": admin[0],
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
        }
        env_args = [
            arg for key, value in environment.items() for arg in ("--env", f"{key}={value}")
        ]
        engine.run(
            "run",
            "--detach",
            "--name",
            name,
            *confined(data),
            *env_args,
            "--entrypoint",
            service["entrypoint"][0],
            image.tag,
            *service["entrypoint"][1:],
            *command,
        )
        try:
            url = f"http://127.0.0.1:{port}"

            def up() -> tuple[bool, object]:
                if inspect(engine, name, "{{.State.Running}}") != "true":
                    raise AssertionError(f"mlflow server exited: {logs(engine, name)[-3000:]}")
                answer = requests.get(f"{url}/health", timeout=30)
                return answer.status_code == 200, answer.status_code

            poll_until(up, "mlflow server answering /health", 180)
            search = f"{url}/api/2.0/mlflow/experiments/search"
            assert requests.post(search, json={"max_results": 5}, timeout=30).status_code == 401
            found = requests.post(search, json={"max_results": 5}, auth=admin, timeout=60)
            assert found.status_code == 200, found.text
            assert [e["name"] for e in found.json()["experiments"]] == ["Default"]
        finally:
            engine.run("rm", "--force", name, check=False)
