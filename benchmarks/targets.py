"""What wrk sends to which server: the targets and the clock of /predict's transactions.

/predict must get a new transaction_id and a later tx_datetime on every request of every run,
or the online state would see re-sent ids or time going backwards and do less work than in
production; the static targets send one fixed body.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks import mlserver
from benchmarks.world import World


@dataclass
class Target:
    """One wrk target: which server, which path, which Lua script and its environment."""

    key: str
    label: str
    server: str
    path: str
    script: str
    env: Callable[[int], dict[str, str]]
    runs: list[dict[str, Any]] = field(default_factory=list)


def targets(world: World, threads: int) -> tuple[list[Target], dict[str, float]]:
    """The six targets in round-robin order, and the /predict clock (moved after each run)."""
    cursor = {"start": world.start_s, "run": 0}
    hello_body = json.dumps(
        {
            "transaction_id": "hello-1",
            "tx_datetime": "2018-07-01T12:00:00",
            "customer_id": "123",
            "terminal_id": "4567",
            "tx_amount": 57.16,
        }
    )

    def static(body: str) -> Callable[[int], dict[str, str]]:
        return lambda _: {"WRK_BODY": body}

    def predict_env(_: int) -> dict[str, str]:
        cursor["run"] += 1
        return {
            "WRK_SAMPLE": str(world.sample),
            "WRK_RUN": f"load{cursor['run']}",
            "WRK_START_S": f"{cursor['start']:.0f}",
            "WRK_STEP_S": f"{world.step_s:.3f}",
            "WRK_THREADS": str(threads),
        }

    body = world.invocation_body
    items = [
        Target(
            "hello", "Flask hello (floor)", "hello", "/hello", "load_static.lua", static(hello_body)
        ),
        Target(
            "predict",
            "fraudflow /predict (SQLite)",
            "api",
            "/predict",
            "load_predict.lua",
            predict_env,
        ),
        Target(
            "predict_redis",
            "fraudflow /predict (Redis)",
            "api_redis",
            "/predict",
            "load_predict.lua",
            predict_env,
        ),
        Target(
            "ours_inv",
            "fraudflow /invocations",
            "api",
            "/invocations",
            "load_static.lua",
            static(body),
        ),
        Target(
            "mlflow_inv",
            "mlflow serve /invocations",
            "mlflow",
            "/invocations",
            "load_static.lua",
            static(body),
        ),
        Target(
            "mlserver_inv",
            "MLServer /v2/…/infer",
            "mlserver",
            mlserver.infer_path(),
            "load_static.lua",
            static(mlserver.v2_body(body)),
        ),
    ]
    return items, cursor


def advance(
    cursor: dict[str, float], run: dict[str, Any], step_s: float, threads: int, connections: int
) -> None:
    """Move the /predict clock past every transaction the last run could have sent.

    Thread k sends k, k + T, k + 2T, ...: however unevenly the threads ran, no sequence number
    exceeds T x (completed + in-flight requests)."""
    highest = (run["requests"] + connections) * threads
    cursor["start"] += highest * step_s + 3600
