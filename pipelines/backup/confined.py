"""Copying a live folder into a backup without ever following a link out of it.

The data volume a backup reads is shared with the API and the jobs: whoever can write there
can plant `reports/x -> /proc/self/environ` or a folder linked to `/`. Here every folder is
opened relative to its parent with O_NOFOLLOW and every file with O_NOFOLLOW | O_NONBLOCK, so
a symlink, a named pipe, a socket or a device is never read; each is skipped and reported.
The configured roots themselves (the artifact, log and reports folders) are the operator's
settings and are taken as given.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def kind(mode: int) -> str:
    """What a non-regular entry is, in a word for the backup's report."""
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "named pipe"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def skipped_entry(shown: str, what: str) -> dict[str, str]:
    return {"path": shown, "what": what, "action": "skipped, not followed"}


def copy_tree(source: Path, target: Path, shown_as: str) -> list[dict[str, str]]:
    """Copy the folders and regular files under `source` into `target` (created); returns
    what was skipped (symlinks and special files, named as `shown_as`/relative path)."""
    target.mkdir(parents=True, exist_ok=True)
    skipped: list[dict[str, str]] = []
    try:
        folder_fd = os.open(source, _READ | os.O_DIRECTORY)
    except FileNotFoundError:
        return skipped
    try:
        _copy_folder(folder_fd, target, shown_as, skipped)
    finally:
        os.close(folder_fd)
    return skipped


def _copy_folder(folder_fd: int, target: Path, shown: str, skipped: list[dict[str, str]]) -> None:
    with os.scandir(folder_fd) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        where = f"{shown}/{entry.name}"
        mode = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            try:
                inner = os.open(
                    entry.name, _READ | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder_fd
                )
            except OSError:  # replaced by a link since it was listed
                skipped.append(skipped_entry(where, "symlink"))
                continue
            try:
                (target / entry.name).mkdir()
                _copy_folder(inner, target / entry.name, where, skipped)
            finally:
                os.close(inner)
        elif stat.S_ISREG(mode):
            _copy_file(folder_fd, entry.name, target / entry.name, where, skipped)
        else:
            skipped.append(skipped_entry(where, kind(mode)))


def _copy_file(
    folder_fd: int, name: str, target: Path, shown: str, skipped: list[dict[str, str]]
) -> None:
    try:
        fd = os.open(name, _READ | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder_fd)
    except OSError:  # replaced by a link since it was listed, or deleted
        skipped.append(skipped_entry(shown, "symlink or vanished"))
        return
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        skipped.append(skipped_entry(shown, kind(mode)))
        return
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as source, open(target, "xb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
