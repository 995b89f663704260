"""The canary guard: stops a canary challenger, on every worker and host, once it leaves the
band around the champion (`CanaryRollbackSettings`, judged by `serving.canary_band`).

Each worker counts its requests in memory (`observe`, on every /predict) and, every
`check_interval_s`, adds them to the shared ledger in the online state (SQLite for one host,
Redis for many), reads the window's sums of every worker and host, and judges them. The first
worker that finds the band broken writes the version's stop record (the first writer wins);
every worker reads it at its next check and closes the canary of that version (`is_open`), so
the challenger goes back to shadow and the champion decides for every card.

The stop is per challenger version: a new `@challenger` version starts a new canary with
counts and a stop record of its own, while a stopped version stays stopped for as long as the
state keeps its record (also across restarts).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from pipelines.log.record import ROLES
from pipelines.settings import CanaryRollbackSettings
from pipelines.state.protocol import CanaryLedger, RoleCounts
from serving.canary_band import RoleFigures, band_breach, latency_bin

log = logging.getLogger(__name__)

ROLLED_BACK = "canary_rolled_back"
OPENED = "canary_open"
# the window is summed over about this many buckets (each at least a second wide)
WINDOW_BUCKETS = 30

CanaryListener = Callable[[str, dict[str, Any]], None]


class _Tally:
    """One role's counts of one version since the last flush (mutable, under the guard's lock)."""

    __slots__ = ("transactions", "errors", "declines", "bins")

    def __init__(self) -> None:
        self.transactions = self.errors = self.declines = 0
        self.bins: dict[int, int] = {}

    def counts(self) -> RoleCounts:
        return RoleCounts(self.transactions, self.errors, self.declines, dict(self.bins))


class CanaryGuard:
    """Decides when the canary of a challenger version stops. One per worker, started in the
    worker (a thread does not survive gunicorn's fork); all of them share `ledger`, the online
    state. A version nobody stopped is open once a check has read the ledger for it; until then
    (a worker just started, or the state unreachable since) it is closed, so that no worker
    sends cards to a challenger before it knows that its canary was not stopped elsewhere."""

    def __init__(
        self,
        settings: CanaryRollbackSettings,
        ledger: CanaryLedger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.clock = clock  # wall time: buckets are shared across hosts
        self.bucket_s = max(1, round(settings.window_s / WINDOW_BUCKETS))
        self.buckets = max(1, math.ceil(settings.window_s / self.bucket_s))
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], _Tally] = {}
        self._watched: dict[str, None] = {}  # versions asked about, in order, not yet stopped
        self._open: set[str] = set()
        self._asked: set[str] = set()  # versions asked about since the last check
        self._last_asked: dict[str, float] = {}
        self._stops: dict[str, dict[str, Any]] = {}
        self._listeners: list[CanaryListener] = []
        self._failing = False
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the request path: in memory, no I/O ---------------------------------------------------

    def observe(
        self,
        version: str,
        role: str,
        transactions: int,
        errors: int,
        declines: int,
        latency_ms: float,
    ) -> None:
        """One request's share for a role that decided transactions in it, counted under the
        challenger `version` whose canary runs (both roles are): how many transactions the role
        was asked to decide, how many of them failed, how many it declined, and the request's
        latency for that role (one histogram sample per request). Nothing is counted for a
        version already stopped."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: one of {ROLES}")
        index = latency_bin(latency_ms)
        with self._lock:
            if version in self._stops:
                return
            tally = self._pending.get((version, role))
            if tally is None:
                tally = self._pending[(version, role)] = _Tally()
                self._watched.setdefault(version, None)
            tally.transactions += transactions
            tally.errors += errors
            tally.declines += declines
            tally.bins[index] = tally.bins.get(index, 0) + 1

    def is_open(self, version: str) -> bool:
        """Whether this version's canary may decide for its cards: False once it was stopped
        anywhere, and until a first check has read the ledger for it."""
        self._asked.add(version)
        if version in self._open:
            return True
        if version not in self._stops and version not in self._watched:
            with self._lock:
                if version not in self._stops:
                    self._watched.setdefault(version, None)
        return False

    def stop_record(self, version: str) -> dict[str, Any] | None:
        """The version's stop record as this worker last read it (None: not stopped)."""
        return self._stops.get(version)

    def add_listener(self, listener: CanaryListener) -> None:
        """Called with ("canary_rolled_back", stop record) once per version when this worker
        learns of its stop, and with ("canary_open", {"version": v}) when a check first finds
        a version not stopped."""
        self._listeners.append(listener)

    # --- the check step ------------------------------------------------------------------------

    def check(self) -> None:
        """One step for every version watched and not stopped: flush this worker's counts,
        read the window's sums and the stop record, judge the band and write the stop record
        when it is broken. A ledger failure is logged; the flags stay as they were and the
        unflushed counts wait for the next step."""
        self._forget_idle()
        with self._lock:
            versions = list(self._watched)
        for version in versions:
            try:
                self._check_version(version)
            except Exception as exc:  # noqa: BLE001 - a state outage must never stop serving
                self._failed(version, exc)
            else:
                self._recovered()

    def _check_version(self, version: str) -> None:
        now = self.clock()
        bucket = int(now // self.bucket_s) * self.bucket_s
        pending = self._take_pending(version)
        if pending:
            try:
                self.ledger.add_canary_counts(version, bucket, pending, self._keep_s())
            except BaseException:
                self._return_pending(version, pending)
                raise
        starts = [bucket - i * self.bucket_s for i in range(self.buckets)]
        window = self.ledger.canary_window(version, starts)
        if window.stop is not None:
            self._close(version, window.stop)
            return
        champion, challenger = (RoleFigures.of(window.counts.get(r, RoleCounts())) for r in ROLES)
        reason = band_breach(self.settings, champion, challenger)
        if reason is None:
            self._mark_open(version)
            return
        record = {
            "version": version,
            "time": datetime.fromtimestamp(now, timezone.utc).isoformat(),
            "reason": reason,
            "window_s": self.settings.window_s,
            "champion": champion.as_record(),
            "challenger": challenger.as_record(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        standing = self.ledger.record_canary_stop(version, record)
        if standing == record:
            log.warning("canary of challenger v%s stopped: %s", version, reason)
        self._close(version, standing)

    def _forget_idle(self) -> None:
        """Stop reading the ledger for an open version nobody asked about for a whole window
        (a former challenger): asked again, it is closed until the next check reads it."""
        now = self.clock()
        asked, self._asked = self._asked, set()
        with self._lock:
            for version in list(self._watched):
                if version in asked or version not in self._last_asked:
                    self._last_asked[version] = now
                elif version in self._open and now - self._last_asked[version] > (
                    self.settings.window_s
                ):
                    if any(key[0] == version for key in self._pending):
                        continue  # counts still to flush
                    del self._watched[version], self._last_asked[version]
                    self._open.discard(version)

    def _keep_s(self) -> int:
        """How long a bucket stays in the ledger after its last write: the window and a bucket
        more (a bucket is written until it ends)."""
        return (self.buckets + 1) * self.bucket_s

    def _take_pending(self, version: str) -> dict[str, RoleCounts]:
        with self._lock:
            return {
                role: self._pending.pop((version, role)).counts()
                for role in ROLES
                if (version, role) in self._pending
            }

    def _return_pending(self, version: str, counts: dict[str, RoleCounts]) -> None:
        """Counts a failed flush did not write go back, to be added at the next check."""
        with self._lock:
            for role, figures in counts.items():
                tally = self._pending.setdefault((version, role), _Tally())
                tally.transactions += figures.transactions
                tally.errors += figures.errors
                tally.declines += figures.declines
                for index, count in figures.latency_bins.items():
                    tally.bins[index] = tally.bins.get(index, 0) + count

    def _mark_open(self, version: str) -> None:
        if version in self._open:
            return
        self._open.add(version)
        self._notify(OPENED, {"version": version})

    def _close(self, version: str, record: dict[str, Any]) -> None:
        with self._lock:
            if version in self._stops:
                return
            self._stops[version] = record
            self._open.discard(version)
            self._watched.pop(version, None)
            self._last_asked.pop(version, None)
            for role in ROLES:
                self._pending.pop((version, role), None)
        self._notify(ROLLED_BACK, record)

    def _notify(self, event: str, payload: dict[str, Any]) -> None:
        for listener in self._listeners:
            try:
                listener(event, payload)
            except Exception:  # noqa: BLE001 - a listener's fault must not undo the stop
                log.exception("canary listener failed on %s", event)

    def _failed(self, version: str, exc: Exception) -> None:
        if not self._failing:  # once per outage, not once a second
            log.warning("canary guard: check of v%s failed, flags unchanged: %r", version, exc)
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.info("canary guard: the ledger answers again")
        self._failing = False

    # --- the background thread -----------------------------------------------------------------

    def start(self) -> None:
        """Check every `check_interval_s` in a daemon thread (call in the worker, after fork)."""
        if self._thread is not None:
            return
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._run, name="canary-guard", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the thread; the counts not yet flushed are dropped."""
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop_event.wait(self.settings.check_interval_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the thread must outlive any fault
                log.exception("canary guard check failed")
