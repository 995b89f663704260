"""Damaged and crafted boosters promoted to a real gunicorn API while it serves: each is
refused and reported in /model, the previous model keeps answering /predict, and the same
worker processes serve throughout (no worker died or was restarted).

The versions are registered the way anyone who can write to the registry could: the files
logged as a model, their SHA-256 tags computed from the damaged files themselves (so the
hashes pass and the booster check and the child-process probe must stop them), and one whose
tags are those of the good file (a file damaged after it was logged).
"""

from __future__ import annotations

import pytest
import requests

from pipelines.mlflow.promotion import set_stage
from tests.support.models import (
    child_out_of_range,
    cut_short,
    one_token,
    register_altered,
    train_and_register,
)
from tests.support.processes import poll_until
from tests.support.servers import gunicorn_api, worker_gauge
from tests.support.settings import make_settings, write_config
from tests.support.traffic import api_transaction

pytestmark = pytest.mark.integration
WORKERS = 2
NAME = "fraud-detector"


def tx(i: int) -> dict:
    return api_transaction(i, "h")


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
