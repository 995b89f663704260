"""A new model's files are loaded and scored in a short-lived child process before an API
worker parses them.

LightGBM's native code can abort, crash or loop forever on a file that passed every check in
Python (FIELD-NOTES, "LightGBM under gunicorn"). The child does what a worker is about to do
with the files (the Python checks, LightGBM's parser, the single-row fast paths, a prediction
and its contributions on an all-zero and an all-missing row) and the worker goes on only if
the child exits 0 in time: a native crash or hang costs the child, never the worker. A file
that passed is remembered by the SHA-256 of both files (in the process, and on the replica's
disk when a folder is given), so each version is probed once: the workers of a replica that
poll the same new version take turns on a file lock, and the second finds the first's verdict.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import multiprocessing
import os
import signal
import tempfile
from pathlib import Path

import numpy as np

from pipelines.booster_check import BoosterLimits
from pipelines.files import write_json_atomic
from pipelines.model import FraudScorer, ModelArtifactError, file_hashes
from serving.online_scorer import OnlineScorer

log = logging.getLogger(__name__)
PASSED = "passed"


class ProbeError(ModelArtifactError):
    """The child that tried the files crashed, hung or refused them."""


def probe_key(booster: Path, meta: Path) -> str:
    """One name for this pair of files: the SHA-256 of their two SHA-256s."""
    hashes = file_hashes(booster, meta)
    return hashlib.sha256(" ".join(sorted(hashes.values())).encode()).hexdigest()


class ModelProbe:
    """Tries model files in a child process, once per pair of files."""

    def __init__(self, limits: BoosterLimits, timeout_s: float, folder: Path | None = None) -> None:
        self.limits = limits
        self.timeout_s = timeout_s
        self.folder = Path(folder) if folder is not None else None
        self._passed: set[str] = set()

    def require(self, booster: Path, meta: Path) -> None:
        """Return once a child process has loaded and scored these files and exited 0 (now or
        before); ProbeError naming what happened otherwise."""
        key = probe_key(booster, meta)
        if key in self._passed:
            return
        if self.folder is None:
            run_probe(booster, meta, self.limits, self.timeout_s)
            self._passed.add(key)
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock = open(self.folder / f"{key}.lock", "a")
        except OSError as exc:  # the lock only saves work: probe without it
            log.warning("no probe lock in %s: %s", self.folder, exc)
            lock = None
        try:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be probing these files
            if not self._passed_on_disk(key):
                run_probe(booster, meta, self.limits, self.timeout_s)
                try:
                    write_json_atomic(self.folder / f"{key}.json", {"verdict": PASSED})
                except OSError as exc:  # the verdict is only a shortcut
                    log.warning("could not record the probe verdict in %s: %s", self.folder, exc)
            self._passed.add(key)
        finally:
            if lock is not None:
                lock.close()  # releases the lock

    def _passed_on_disk(self, key: str) -> bool:
        return self.folder is not None and (self.folder / f"{key}.json").is_file()


def run_probe(booster: Path, meta: Path, limits: BoosterLimits, timeout_s: float) -> None:
    """Load and score the files in a fresh interpreter (spawned: nothing of this process's
    threads or native state is inherited); ProbeError unless it exits 0 within `timeout_s`."""
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="fraudflow-probe-") as folder:
        report = Path(folder) / "report.txt"
        child = context.Process(
            target=_probe_child,
            args=(str(booster), str(meta), limits, str(report)),
            name="model-probe",
            daemon=True,
        )
        child.start()
        child.join(timeout_s)
        if child.is_alive():
            child.kill()
            child.join(30)
            raise ProbeError(
                f"the model did not load and score in a child process within {timeout_s:g} s "
                "(stopped; an endless loop in the native code?)"
            )
        said = report.read_text()[:400] if report.is_file() else ""
        code = child.exitcode
        if code == 0 and said == PASSED:
            return
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else ""
            raise ProbeError(
                f"the model crashed the child process that tried it ({name or f'signal {-code}'})"
            )
        raise ProbeError(said or f"the child process that tried the model exited with {code}")


def _probe_child(booster: str, meta: str, limits: BoosterLimits, report: str) -> None:
    """In the child: what a worker does with new files; the verdict goes to `report`."""
    try:
        scorer = FraudScorer.load(Path(booster), Path(meta), limits)
        online = OnlineScorer(scorer)
        width = len(scorer.features)
        for row in (np.zeros(width), np.full(width, np.nan)):
            probability = scorer.predict_rows(row[None, :])
            contributions = scorer.contribution_rows(row[None, :])
            if probability.shape != (1,) or contributions.shape != (1, width + 1):
                raise ModelArtifactError(
                    f"the model answers {probability.shape} probabilities and "
                    f"{contributions.shape} contributions for one row"
                )
            online.probabilities([row])
            online.contributions([row])
        verdict = PASSED
        code = 0
    except Exception as exc:  # noqa: BLE001 - the reason is the verdict
        verdict = f"{type(exc).__name__}: {exc}"[:400]
        code = 1
    Path(report).write_text(verdict)
    os._exit(code)  # no interpreter teardown: nothing of the model's native state runs again
