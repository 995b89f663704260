"""The monitor's summary: what one monitor run found, its writer and its reader.

The one owner of the format: the monitor job writes it (into its report folder and as the
latest verdict), the API's /metrics reads the latest one at each scrape, alerts act on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from pipelines.files import write_json_atomic


class Verdict(str, Enum):
    """The verdict of a monitor run, and the exit code a scheduler acts on."""

    NO_DRIFT = "no_drift"
    DRIFT = "drift"
    DEGRADED = "degraded"
    ERROR = "error"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self]


EXIT_CODES = {Verdict.NO_DRIFT: 0, Verdict.DRIFT: 1, Verdict.DEGRADED: 2, Verdict.ERROR: 3}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class MonitorSummary:
    """One monitor run. An error run carries only the verdict, the time and the error; a
    checked window carries the model, the window, the drift and performance figures, the
    report's files, the champion against the challenger on the transactions both scored
    (`live`, when the window holds any: `pipelines.live_evidence.LiveComparison.as_dict`), and
    (set later) the run id, the retraining outcome."""

    verdict: Verdict
    checked_at: str = field(default_factory=now_iso)
    error: str | None = None
    model: dict[str, str] | None = None
    window: dict[str, str] | None = None
    rows: dict[str, int] | None = None
    drift: dict[str, Any] | None = None
    performance: dict[str, Any] | None = None
    thresholds: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    live: dict[str, Any] | None = None
    run_id: str | None = None
    report: str | None = None
    retrain: dict[str, Any] | None = None
    retrain_error: str | None = None

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code

    @property
    def checked_timestamp(self) -> float:
        return datetime.fromisoformat(self.checked_at).timestamp()

    @property
    def drifted_share(self) -> float | None:
        return None if not self.drift else float(self.drift["drifted_share"])

    @property
    def prediction_drift_score(self) -> float | None:
        score = (self.drift or {}).get("score")
        return None if not score else float(score["score"])

    def as_dict(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"verdict": self.verdict.value, "exit_code": self.exit_code}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name != "verdict" and value not in (None, {}):
                payload[item.name] = value
        return payload

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "MonitorSummary":
        known = {item.name for item in fields(cls)}
        values = {k: v for k, v in payload.items() if k in known}
        values["verdict"] = Verdict(payload["verdict"])
        return cls(**values)


def write_summary(path: Path, summary: MonitorSummary) -> Path:
    return write_json_atomic(path, summary.as_dict())


def read_summary(path: Path) -> MonitorSummary | None:
    """The summary at `path`; None when there is none yet or it cannot be read."""
    try:
        return MonitorSummary.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
