"""Is a store live? A process of this host (the API's workers, a job) holding one of its files
open: restoring under it would mix the two stores' data."""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def holders(paths: list[Path]) -> dict[str, list[int]]:
    """For each of `paths` (a file, or a folder meaning every file under it) that a process of
    this host other than this one holds open: the pids (processes this user may inspect)."""
    targets = [Path(p).resolve() for p in paths]
    found: dict[str, list[int]] = {}
    if not PROC.is_dir():
        return found
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except (PermissionError, FileNotFoundError, ProcessLookupError, NotADirectoryError):
            continue
        for link in links:
            opened = Path(link.removesuffix(" (deleted)"))
            for target in targets:
                if (
                    opened == target
                    or target in opened.parents
                    or (
                        opened.name.startswith(target.name + "-") and opened.parent == target.parent
                    )
                ):  # SQLite's -wal and -shm beside the database
                    pids = found.setdefault(str(target), [])
                    if int(entry.name) not in pids:
                        pids.append(int(entry.name))
    return found
