"""The prediction log's writer: the API appends each request's records with one `os.write` on
an O_APPEND descriptor, so the kernel holds a record as soon as the call returns, a killed
worker loses nothing it acknowledged, and the request path never waits for a disk flush."""

from __future__ import annotations

import errno
import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipelines.log.record import FILE_MODE, log_file, writer_name


class PredictionLogError(OSError):
    """The log could not take a record (disk full, I/O error): the request must fail."""


class PredictionLogWriter:
    """Appends records to this process's file of the current UTC day.

    A record is acknowledged only once all its bytes are in the file: a short write is
    continued, and a failed one (ENOSPC, EIO) is cut back to the previous end of the file and
    raised, so that no torn record is ever left behind an answered request."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._key: tuple[str, int] | None = None
        self._fd: int | None = None
        self._size = 0
        # the end of the file's whole records, when a failed write could not be cut back yet
        self._torn_at: int | None = None

    def _descriptor(self, day: str) -> int:
        key = (day, os.getpid())
        if self._key != key or self._fd is None:
            if self._fd is not None and self._key is not None and self._key[1] == key[1]:
                os.close(self._fd)  # a forked child leaves its parent's descriptor alone
            path = log_file(self.folder, day, writer_name())
            self._fd = None
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
            self._fd, self._key, self._size = fd, key, os.fstat(fd).st_size
            self._torn_at = None
        return self._fd

    def write(self, records: list[dict[str, Any]]) -> None:
        """Append the records, all or none; raises PredictionLogError when the disk refuses."""
        if not records:
            return
        payload = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        with self._lock:
            try:
                fd = self._descriptor(day)
            except OSError as exc:
                raise PredictionLogError(exc.errno, f"cannot open the log: {exc}") from exc
            if self._torn_at is not None:
                self._cut_back(fd)
            view, written = memoryview(payload), 0
            try:
                while written < len(payload):
                    count = os.write(fd, view[written:])
                    if count <= 0:
                        raise OSError(errno.ENOSPC, "the disk took no byte")
                    written += count
            except OSError as exc:
                if written:
                    self._torn_at = self._size
                    self._cut_back(fd)
                raise PredictionLogError(exc.errno, f"cannot append to the log: {exc}") from exc
            self._size += written

    def _cut_back(self, fd: int) -> None:
        """Remove the bytes of a failed write; until that succeeds nothing else is appended."""
        try:
            os.ftruncate(fd, self._torn_at)
        except OSError as exc:
            raise PredictionLogError(exc.errno, f"cannot remove a torn record: {exc}") from exc
        self._torn_at = None

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
