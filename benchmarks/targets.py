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
from benchmarks.world import REFERENCE_SERVER, World


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
    # the runs at a fixed request rate (benchmarks/paced.py)
    paced: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The target's name on the command line (`--targets`)."""
        return self.key.replace("_", "-")


# every target's key, in round-robin order
TARGET_KEYS = (
    "hello",
    "predict",
    "predict_reference",
    "predict_shadow",
    "predict_canary",
    "predict_redis",
    "ours_inv",
    "mlflow_inv",
    "mlserver_inv",
)
# the server each target loads (Target.server)
SERVER_OF = {
    "hello": "hello",
    "predict": "api",
    "predict_reference": REFERENCE_SERVER,
    "predict_shadow": "api_shadow",
    "predict_canary": "api_canary",
    "predict_redis": "api_redis",
    "ours_inv": "api",
    "mlflow_inv": "mlflow",
    "mlserver_inv": "mlserver",
}
# the /predict targets on the SQLite state, shadow off / on / canary: the ones run at a fixed rate
CHALLENGER_KEYS = ("predict", "predict_shadow", "predict_canary")


def select_targets(names: str | None) -> list[str]:
    """The keys named in a comma-separated `--targets` value (dashes or underscores), in
    round-robin order; every target when NAMES is empty. ValueError on an unknown name."""
    if not names:
        return list(TARGET_KEYS)
    wanted = {name.strip().replace("-", "_") for name in names.split(",") if name.strip()}
    unknown = sorted(wanted - set(TARGET_KEYS))
    if unknown:
        choices = ", ".join(key.replace("_", "-") for key in TARGET_KEYS)
        raise ValueError(f"unknown target {', '.join(unknown)}; choose among {choices}")
    return [key for key in TARGET_KEYS if key in wanted]


def servers_for(keys: list[str]) -> frozenset[str]:
    """The servers the targets KEYS load."""
    return frozenset(SERVER_OF[key] for key in keys)


def new_run_id(cursor: dict[str, float], prefix: str) -> str:
    """A prefix for transaction ids unique to one run (ids never repeat across runs)."""
    cursor["run"] += 1
    return f"{prefix}{cursor['run']:.0f}"


def targets(
    world: World, threads: int, keys: list[str] | None = None, canary_percent: float = 10.0
) -> tuple[list[Target], dict[str, float]]:
    """The targets named by KEYS (default: all) in round-robin order, and the /predict clock
    (moved after each run)."""
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
        return {
            "WRK_SAMPLE": str(world.sample),
            "WRK_RUN": new_run_id(cursor, "load"),
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
            "predict_reference",
            "fraudflow /predict, reference model configuration (SQLite)",
            REFERENCE_SERVER,
            "/predict",
            "load_predict.lua",
            predict_env,
        ),
        Target(
            "predict_shadow",
            "fraudflow /predict, shadow on (SQLite)",
            "api_shadow",
            "/predict",
            "load_predict.lua",
            predict_env,
        ),
        Target(
            "predict_canary",
            f"fraudflow /predict, canary {canary_percent:g} % (SQLite)",
            "api_canary",
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
    chosen = list(TARGET_KEYS) if keys is None else keys
    return [t for t in items if t.key in chosen], cursor


def advance(
    cursor: dict[str, float], run: dict[str, Any], step_s: float, threads: int, connections: int
) -> None:
    """Move the /predict clock past every transaction the last run could have sent.

    Thread k sends k, k + T, k + 2T, ...: however unevenly the threads ran, no sequence number
    exceeds T x (completed + in-flight requests)."""
    advance_past(cursor, (run["requests"] + connections) * threads, step_s)


def advance_past(cursor: dict[str, float], highest: int, step_s: float) -> None:
    """Move the /predict clock past sequence number HIGHEST (and an hour more)."""
    cursor["start"] += highest * step_s + 3600
