"""schemathesis (pinned in setup.cfg's dev extra) against the live API and its /openapi.json:
real gunicorn (2 workers) serving a trained Production model with bearer auth on. Every check
(`--checks all`: no 5xx, declared statuses, content types, headers and schemas, schema-valid
requests accepted, schema-violating ones rejected, auth not ignored, 405s with `Allow`) must
pass on every generated case. Generation is deterministic, so every run tries the same
cases; tests/test_api_contract.py holds the in-process checks of each fix."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.support.models import train_and_register
from tests.support.processes import BIN, clean_env
from tests.support.servers import gunicorn_api
from tests.support.settings import make_settings, write_config

pytestmark = pytest.mark.integration
CONFIG = Path(__file__).with_name("schemathesis.toml")
# cases per operation and phase: about 1,400 cases over the 7 operations
MAX_EXAMPLES = 150
MIN_CASES = 1_000
TOKEN = "conformance-test-token"
WORKERS = 2


def auth_settings(token: str) -> dict:
    """The `serving` settings that make the API require `token` (both scopes) on its protected
    routes."""
    digest = hashlib.sha256(token.encode()).hexdigest()  # as a deployment gives it
    return {"tokens": [{"name": "conformance", "scopes": ["score", "label"], "sha256": digest}]}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame):
    root = tmp_path_factory.mktemp("conformance")
    settings = make_settings(
        root / "work",
        serving={"metrics_dir": str(root / "prom"), **auth_settings(TOKEN)},
        state={"sqlite_path": str(root / "state.sqlite")},
        prediction_log={"dir": str(root / "predictions")},
    )
    version, _ = train_and_register(small_transactions, settings, production="conformance")
    config = write_config(root / "serve.yaml", settings)
    log = root / "gunicorn.log"
    with gunicorn_api(config, log, version=version, workers=WORKERS) as url:
        yield url, log


def run_schemathesis(url: str, folder: Path) -> tuple[subprocess.CompletedProcess, dict]:
    report = folder / "schemathesis.json"
    command = [
        str(BIN / "schemathesis"),
        "--config-file",
        str(CONFIG),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        # the same cases on every run (no seed, no example database)
        "--generation-deterministic",
        # how long generating a case takes depends on the machine's load, never on the API
        "--suppress-health-check",
        "too_slow",
        "--workers",
        "2",
        "--request-timeout",
        "60",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    run = subprocess.run(
        command, cwd=folder, env=clean_env(), capture_output=True, text=True, timeout=900
    )
    assert report.exists(), f"schemathesis wrote no report ({run.returncode}):\n{run.stderr}"
    return run, json.loads(report.read_text())


def test_schemathesis_finds_no_fault_in_the_live_api(api, tmp_path: Path) -> None:
    url, log = api
    run, report = run_schemathesis(url, tmp_path)
    output = run.stdout[-20_000:] + run.stderr[-5_000:]
    assert run.returncode == 0 and report["exit_code"] == 0, output
    assert report["complete"] and not report["failures"] and not report["errors"], output
    assert report["operations"]["tested"] == report["operations"]["total"] == 7, output
    assert report["test_cases"]["generated"] >= MIN_CASES, report["test_cases"]
    assert report["test_cases"]["errored"] == 0, output
    # nothing that would make the run hollow: every protected call authenticated, no
    # operation whose generated data the server mostly refused, no pattern it could not read
    warned = {name: items for name, items in report["warnings"].items() if items}
    assert not warned, warned
    assert "Traceback" not in log.read_text(errors="replace")
