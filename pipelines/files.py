"""Atomic file writes: every writer of a shared file (data, summaries) goes through here; and
the checksum every reader of such a file verifies it by."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


@contextmanager
def replacing(path: Path) -> Iterator[BinaryIO]:
    """A binary handle whose content replaces `path` when the block ends without error:
    written to a temporary file in the same folder, flushed to disk, then renamed over `path`
    (`os.replace`), so readers see the old file or the new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    # os.open with 0o666 lets the umask decide the mode, as for any new file (mkstemp: 0o600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> Path:
    """`payload` as indented JSON at `path`, replaced atomically."""
    with replacing(path) as handle:
        handle.write((json.dumps(payload, indent=2, default=str) + "\n").encode())
    return Path(path)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
