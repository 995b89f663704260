"""Damaged and crafted boosters promoted to a real gunicorn API while it serves: each is
refused and reported in /model, the previous model keeps answering /predict, and the same
worker processes serve throughout (no worker died or was restarted).

The versions are registered the way anyone who can write to the registry could: the files
logged as a model, their SHA-256 tags computed from the damaged files themselves (so the
hashes pass and the booster check and the child-process probe must stop them), and one whose
tags are those of the good file (a file damaged after it was logged).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
import requests

from pipelines.mlflow import store
from pipelines.mlflow.models import PYFUNC_CODE
from pipelines.mlflow.promotion import set_stage
from pipelines.model import BOOSTER_FILE, BOOSTER_SHA256_TAG, META_FILE, file_hashes, sha256_bytes
from tests.support.models import train_and_register
from tests.support.processes import poll_until
from tests.support.servers import gunicorn_api, worker_gauge
from tests.support.settings import make_settings, write_config
from tests.support.traffic import api_transaction

pytestmark = pytest.mark.integration
WORKERS = 2
NAME = "fraud-detector"


def tx(i: int) -> dict:
    return api_transaction(i, "h")


def one_token(text: str) -> str:
    """The first split_feature value replaced by another number: one token, and the tree
    sizes no longer agree with the trees (LightGBM aborts on it inside a parallel region)."""
    return re.sub(r"split_feature=\d+", "split_feature=12345", text, count=1)


def child_out_of_range(text: str) -> str:
    """The first left child far past the tree, with tree_sizes made to agree (LightGBM reads
    outside the tree when it scores)."""
    return with_tree_sizes(re.sub(r"left_child=-?\d+", "left_child=1000000", text, count=1))


def with_tree_sizes(text: str) -> str:
    """`text` with its header's tree_sizes made to agree with its tree blocks."""
    start, end = text.index("\nTree=") + 1, text.index("end of trees\n")
    blocks = re.split(r"(?=^Tree=)", text[start:end], flags=re.M)
    sizes = " ".join(str(len(block)) for block in blocks if block)
    return (
        re.sub(r"^tree_sizes=.*$", f"tree_sizes={sizes}", text[:start], flags=re.M) + text[start:]
    )


def cut_short(text: str) -> str:
    """Cut in the middle of the last tree (LightGBM loads it as a model one tree smaller)."""
    last = text.rindex("\nTree=")
    return text[: last + (text.index("end of trees") - last) // 2]


def register_altered(
    settings, good: str, alter: Callable[[str], str], tags_from_good: bool = False
) -> str:
    """A version holding the good version's files with the booster altered, its meta.json and
    hash tags made to match the altered file (or those of the good files)."""
    store.use_store(settings)
    folder = Path(tempfile.mkdtemp())
    files = {
        name: Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{NAME}/{good}/artifacts/{name}", dst_path=str(folder)
            )
        )
        for name in (BOOSTER_FILE, META_FILE)
    }
    good_hashes = file_hashes(files[BOOSTER_FILE], files[META_FILE])
    altered = alter(files[BOOSTER_FILE].read_text())
    files[BOOSTER_FILE].write_text(altered)
    if not tags_from_good:
        meta = json.loads(files[META_FILE].read_text())
        meta[BOOSTER_SHA256_TAG] = sha256_bytes(altered.encode())
        files[META_FILE].write_text(json.dumps(meta))
    client = store.client(settings)
    experiment = client.get_experiment_by_name(settings.mlflow.experiment)
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts={"booster": str(files[BOOSTER_FILE]), "meta": str(files[META_FILE])},
            registered_model_name=NAME,
            pip_requirements=["mlflow"],
        )
    version = str(info.registered_model_version)
    hashes = good_hashes if tags_from_good else file_hashes(files[BOOSTER_FILE], files[META_FILE])
    for name, tag in (("booster.txt", "booster_sha256"), ("meta.json", "meta_sha256")):
        client.set_model_version_tag(NAME, version, tag, hashes[name])
    return version


@pytest.fixture(scope="module")
def serving(tmp_path_factory, small_transactions):
    root = tmp_path_factory.mktemp("hostile")
    settings = make_settings(
        root / "work",
        serving={
            "poll_interval_s": 1.0,
            "metrics_dir": str(root / "prom"),
            "model_cache_dir": str(root / "model-cache"),
        },
        state={"sqlite_path": str(root / "state.sqlite")},
        prediction_log={"dir": str(root / "predictions")},
    )
    good, _ = train_and_register(small_transactions, settings, "the good model")
    config = write_config(root / "serve.yaml", settings)
    log = root / "gunicorn.log"
    with gunicorn_api(config, log, version=good, workers=WORKERS) as url:
        yield url, settings, good, log


def failures_total(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("fraudflow_model_reload_failures_total ")
    )


CASES = {
    "one token changed": (one_token, False, "tree_sizes"),
    "a child index out of range": (child_out_of_range, False, "left_child"),
    "cut short": (cut_short, False, "cut short"),
    "cut short after it was logged": (cut_short, True, "SHA-256"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_version_is_refused_and_the_previous_model_keeps_serving(serving, case):
    url, settings, good, log = serving
    alter, tags_from_good, reason = CASES[case]
    pids = set(worker_gauge(url, "fraudflow_model_version"))
    assert len(pids) == WORKERS
    before = failures_total(url)
    bad = register_altered(settings, good, alter, tags_from_good)
    set_stage(settings, bad, "Production", f"hostile: {case}")
    try:
        # every worker tries it (in a child process first) and fails
        poll_until(
            lambda: (failures_total(url) >= before + WORKERS, failures_total(url)),
            f"{WORKERS} load failures of v{bad}",
            timeout=600,
        )

        def reported() -> tuple[bool, object]:
            answers = []
            for _ in range(12):
                with requests.Session() as fresh:  # a new connection: any worker answers
                    answers.append(fresh.get(f"{url}/model", timeout=30).json())
            named = all(a["failed_version"] == bad and a["version"] == good for a in answers)
            return named, answers[-1]

        model = poll_until(reported, f"/model naming v{bad}", timeout=300)
        assert reason in model["load_error"], model["load_error"]
        for i in range(10):
            with requests.Session() as fresh:
                answer = fresh.post(f"{url}/predict", json=tx(i), timeout=30)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"]["version"] == good
        # the same workers, still serving the good version: none died or was restarted
        assert worker_gauge(url, "fraudflow_model_version") == {p: float(good) for p in pids}
        text = log.read_text()
        assert text.count("Booting worker") == WORKERS, text[-3000:]
        assert "terminate called" not in text and "Worker exiting" not in text, text[-3000:]
    finally:
        set_stage(settings, good, "Production", "back to the good model")
    poll_until(
        lambda: (
            all(
                requests.get(f"{url}/model", timeout=30).json()["failed_version"] is None
                for _ in range(6)
            ),
            None,
        ),
        "the failure cleared",
        timeout=120,
    )
