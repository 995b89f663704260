"""The backup manifest: what a backup holds, file by file (size and SHA-256), and where it came
from. Written last, so a backup without one is incomplete; checked whole before a restore."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipelines.files import sha256_file, write_json_atomic

MANIFEST = "manifest.json"
FORMAT = "fraudflow-backup"
# raised whenever the layout of a backup or the meaning of a manifest field changes
FORMAT_VERSION = 1


class BackupInvalid(ValueError):
    """A backup that must not be restored: incomplete, damaged, or of another format version."""


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


def describe_files(folder: Path) -> list[FileEntry]:
    """Every file under `folder` (the manifest aside), with its size and checksum."""
    return [
        FileEntry(path.relative_to(folder).as_posix(), path.stat().st_size, sha256_file(path))
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file())
        if path.relative_to(folder).as_posix() != MANIFEST
    ]


def write_manifest(
    folder: Path, parts: dict[str, dict[str, Any]], source: dict[str, Any]
) -> dict[str, Any]:
    """Checksum every file of the backup in `folder` and write the manifest beside them."""
    files = describe_files(folder)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "parts": parts,
        "files": [entry.__dict__ for entry in files],
        "total_bytes": sum(entry.size for entry in files),
    }
    write_json_atomic(Path(folder) / MANIFEST, manifest)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of the backup in `folder`, its format checked (not yet its files)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BackupInvalid(
            f"{folder} has no {MANIFEST}: the backup is incomplete (interrupted before its "
            "manifest was written) or not a fraudflow backup"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackupInvalid(f"{path} is not valid JSON (truncated or damaged): {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupInvalid(f"{path} is not a fraudflow backup manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BackupInvalid(
            f"{folder} is a backup of format version {version}; this fraudflow restores "
            f"format version {FORMAT_VERSION} only"
        )
    if not isinstance(manifest.get("files"), list) or not isinstance(manifest.get("parts"), dict):
        raise BackupInvalid(f"{path} lacks its file list or its parts")
    return manifest


def verify(folder: Path) -> dict[str, Any]:
    """The manifest, once every file it lists is present with its size and checksum and no
    other file is there; otherwise BackupInvalid naming each problem."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems: list[str] = []
    listed: set[str] = set()
    for entry in manifest["files"]:
        relative = str(entry["path"])
        listed.add(relative)
        path = folder / relative
        if not path.is_file():
            problems.append(f"{relative} is missing (partial backup)")
            continue
        size = path.stat().st_size
        if size != entry["size"]:
            problems.append(
                f"{relative} is {size} bytes, the manifest says {entry['size']} (truncated)"
                if size < entry["size"]
                else f"{relative} is {size} bytes, the manifest says {entry['size']}"
            )
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{relative}: checksum mismatch (SHA-256 differs from the manifest)")
    extra = [e.path for e in describe_files(folder) if e.path not in listed]
    problems += [f"{path} is not in the manifest" for path in extra]
    if problems:
        raise BackupInvalid(f"backup {folder} is damaged: " + "; ".join(problems))
    return manifest
