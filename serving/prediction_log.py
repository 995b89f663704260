"""Durable prediction log: append-only JSON lines, one file per worker and day.

One `os.write` on an O_APPEND descriptor per request: the kernel holds the record as soon as the
call returns, so a killed worker loses nothing it acknowledged, and the request path never
waits for a disk flush. Monitoring reads every file of a day.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd


class PredictionLog:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._day: str | None = None
        self._fd: int | None = None

    def _descriptor(self, day: str) -> int:
        if self._day != day or self._fd is None:
            if self._fd is not None:
                os.close(self._fd)
            path = self.folder / f"predictions-{day}-{os.getpid()}.jsonl"
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._day = day
        return self._fd

    def write(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        payload = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        os.write(self._descriptor(day), payload.encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_prediction_log(folder: Path, day: str | None = None) -> pd.DataFrame:
    """Every logged prediction (of one UTC day, if given) from every worker's file."""
    pattern = f"predictions-{day}-*.jsonl" if day else "predictions-*.jsonl"
    files = sorted(Path(folder).glob(pattern))
    frames = [pd.read_json(f, lines=True, dtype=False) for f in files if f.stat().st_size]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
