"""Report retention: the monitor's report folders (`<time>-v<version>`) older than the setting
are deleted by `fraudflow prune`; the newest is always kept, and so is the latest summary."""

from __future__ import annotations

import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPORT_FOLDER = re.compile(r"^(\d{8}T\d{6})-v.+$")


def report_folders(folder: Path) -> list[tuple[datetime, Path]]:
    """The monitor's report folders under `folder` with their time, oldest first."""
    found = []
    for path in Path(folder).iterdir() if Path(folder).is_dir() else ():
        match = REPORT_FOLDER.match(path.name)
        if match and path.is_dir():
            stamp = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
            found.append((stamp, path))
    return sorted(found)


def prune_reports(folder: Path, days: int, now: datetime | None = None) -> list[Path]:
    """Delete the report folders written more than `days` days ago, except the newest."""
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=days)
    folders = report_folders(folder)
    removed = []
    for stamp, path in folders[:-1]:
        if stamp < cutoff:
            shutil.rmtree(path)
            removed.append(path)
    return removed
