"""`fraudflow registry-sync`: the registry sync's loop, its heartbeat and its health check.

One pass every `registry_sync.interval_s` (`pipelines.mlflow.marker_sync`); a pass that fails
(registry outage, a permission refused) is logged and the loop goes on. After each pass the
heartbeat file says when and how it went, which `--health` (the Compose health check, the
Kubernetes probes) reads. Beside the API (`fraudflow serve`), the gunicorn master starts it
with `--parent`: it stops when the master is gone.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipelines.files import write_json_atomic
from pipelines.mlflow.marker_sync import RegistrySync, SyncPass
from pipelines.settings import Settings

log = logging.getLogger(__name__)

# --health fails when the last pass is older than this many intervals
STALE_INTERVALS = 3


def heartbeat_path(settings: Settings) -> Path:
    return settings.under_workdir(settings.registry_sync.heartbeat)


def _beat(path: Path, outcome: str, error: str | None, **extra: Any) -> None:
    """Write the heartbeat; a failure to write is logged (the health check then fails)."""
    try:
        write_json_atomic(
            path,
            {
                "at": time.time(),
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "pid": os.getpid(),
                "ok": error is None,
                "outcome": outcome,
                "error": error,
                **extra,
            },
        )
    except OSError as exc:
        log.error("registry sync: cannot write its heartbeat %s: %s", path, exc)


def one_pass(sync: RegistrySync, heartbeat: Path) -> SyncPass | None:
    """One pass with its heartbeat; None when it failed (logged, and said in the heartbeat).
    The heartbeat also keeps what the sync remembers, for its next run."""
    try:
        result = sync.run_once()
    except Exception as exc:  # an outage or a refusal: report it, try again next interval
        error = f"{type(exc).__name__}: {exc}"[:500]
        log.warning("registry sync: pass failed: %s", error)
        _beat(heartbeat, "error", error, memory=sync.memory())
        return None
    markers = result.markers.describe()
    _beat(heartbeat, result.outcome, None, markers=markers, memory=sync.memory())
    return result


def remembered(heartbeat: Path) -> object:
    """The memory the last run left in its heartbeat (None when there is none to read)."""
    try:
        return json.loads(heartbeat.read_text()).get("memory")
    except (OSError, ValueError, AttributeError):
        return None


def run(settings: Settings, once: bool = False, parent: int | None = None) -> int:
    """Run passes until SIGTERM/SIGINT (or the `parent` process is gone); one with `once`.
    It starts from the memory its last run left in the heartbeat: a gesture made while it was
    down is followed, not undone. Exit code: 0, or 1 when `once` and the pass failed."""
    heartbeat = heartbeat_path(settings)
    sync = RegistrySync.remembering(settings, remembered(heartbeat))
    if once:
        return 0 if one_pass(sync, heartbeat) is not None else 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    interval = settings.registry_sync.interval_s
    log.info(
        "registry sync: every %.1f s, model %r, alias @%s",
        interval,
        settings.mlflow.model_name,
        settings.mlflow.champion_alias,
    )
    while not stop.is_set():
        if parent is not None and os.getppid() != parent:
            log.info("registry sync: the API that started it is gone; stopping")
            break
        one_pass(sync, heartbeat)
        stop.wait(interval)
    return 0


def health(
    settings: Settings, now: float | None = None, live_only: bool = False
) -> tuple[bool, str]:
    """Whether the loop is alive and its last pass reached the registry, and why not; with
    `live_only`, whether the loop is alive (a registry outage is no reason to restart it)."""
    path = heartbeat_path(settings)
    try:
        beat = json.loads(path.read_text())
        at, ok = float(beat["at"]), bool(beat["ok"])
    except FileNotFoundError:
        return False, f"no heartbeat at {path}: the registry sync has not run a pass"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"heartbeat {path} unreadable: {exc}"
    age = (time.time() if now is None else now) - at
    limit = STALE_INTERVALS * settings.registry_sync.interval_s
    if age > limit:
        return False, f"last pass {age:.0f} s ago (more than {limit:.0f} s): the loop is stuck"
    if not ok and not live_only:
        return False, f"last pass failed: {beat.get('error')}"
    return True, f"last pass {age:.0f} s ago: {beat.get('outcome')}"
