"""The backup manifest: what a backup holds, file by file (size and SHA-256), which part each
file belongs to, and where it came from. Written last, so a backup without one is incomplete;
checked whole before a restore.

A backup folder holds regular files and folders only. Every path the manifest names is
relative, without `..`, and is opened one component at a time from the backup folder with
O_NOFOLLOW, so it cannot resolve outside it; a symlink or a special file anywhere in the
folder refuses the backup. With a key (`integrity.backup_key`) the manifest's exact bytes are
signed (HMAC-SHA256, in manifest.hmac beside it) and the restore requires that signature.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from pipelines.backup.confined import kind
from pipelines.files import replacing, sha256_file, write_json_atomic
from pipelines.integrity import manifest_signed_by, sign_manifest

MANIFEST = "manifest.json"
SIGNATURE = "manifest.hmac"
FORMAT = "fraudflow-backup"
# raised whenever the layout of a backup or the meaning of a manifest field changes
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_PATH_CHARS = 1024
# each part's kinds, and whether the part is one file or a folder of files
PART_SHAPES: dict[str, dict[str, str]] = {
    "mlflow_store": {"sqlite": "file", "postgresql": "file"},
    "artifacts": {"local": "folder", "server": "folder"},
    "online_state": {"sqlite": "file", "redis": "file"},
    "prediction_log": {"files": "folder"},
    "reports": {"files": "folder"},
}
_SHA256_HEX = frozenset("0123456789abcdef")


class BackupInvalid(ValueError):
    """A backup that must not be restored: incomplete, damaged, escaping its folder, not
    signed as required, or of another format version."""


class BackupUnsigned(BackupInvalid):
    """A backup whose signature cannot be checked (none, or no key here): restored only with
    --allow-unsigned."""


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


def _kind(mode: int) -> str:
    """What a non-regular entry is, as the refusal says it."""
    return f"a {kind(mode)}"


def _walk(folder: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under `folder` (its path relative to it, its lstat), never following a
    symlink."""
    for top, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            path = Path(top) / name
            yield path.relative_to(folder).as_posix(), path.lstat()


def describe_files(folder: Path) -> list[FileEntry]:
    """Every file under `folder` (the manifest and its signature aside), with its size and
    checksum; BackupInvalid if anything there is a symlink or a special file."""
    entries = []
    for relative, info in _walk(Path(folder)):
        if stat.S_ISDIR(info.st_mode) or relative in (MANIFEST, SIGNATURE):
            continue
        if not stat.S_ISREG(info.st_mode):
            raise BackupInvalid(f"{relative} is {_kind(info.st_mode)}: a backup holds files only")
        entries.append(FileEntry(relative, info.st_size, sha256_file(Path(folder) / relative)))
    return entries


def write_manifest(
    folder: Path,
    parts: dict[str, dict[str, Any]],
    source: dict[str, Any],
    key: bytes | None = None,
    skipped: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Checksum every file of the backup in `folder` and write the manifest beside them,
    signed with `key` when one is given."""
    files = describe_files(folder)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "parts": parts,
        "files": [entry.__dict__ for entry in files],
        "total_bytes": sum(entry.size for entry in files),
        "signed": key is not None,
        # what the live folders held that is not a regular file: never followed nor copied
        "skipped": skipped or [],
    }
    write_json_atomic(Path(folder) / MANIFEST, manifest)
    if key is not None:
        signature = sign_manifest(key, (Path(folder) / MANIFEST).read_bytes())
        with replacing(Path(folder) / SIGNATURE) as handle:
            handle.write((signature + "\n").encode())
    return manifest


def check_path(value: Any, what: str = "a manifest path") -> str:
    """`value` if it is a plain relative path inside the backup (no `..`, no `.`, no empty
    component, not absolute); BackupInvalid naming it otherwise."""
    if not isinstance(value, str) or not value:
        raise BackupInvalid(f"{what} is not a path: {value!r}")
    shown = repr(value[:200])
    if len(value) > MAX_PATH_CHARS or "\x00" in value or "\\" in value:
        raise BackupInvalid(f"{what} {shown} is not a plain path")
    if value.startswith("/"):
        raise BackupInvalid(f"{what} {shown} is absolute: a backup names files inside itself only")
    names = value.split("/")
    if ".." in names:
        raise BackupInvalid(f"{what} {shown} contains '..': it would reach outside the backup")
    if any(name in ("", ".") for name in names):
        raise BackupInvalid(f"{what} {shown} is not a plain relative path")
    return value


@contextmanager
def open_inside(folder: Path, relative: str) -> Iterator[BinaryIO]:
    """The regular file `relative` (checked by `check_path`) under `folder`, opened one folder
    at a time with O_NOFOLLOW: a symlink anywhere on its path, a special file, or a missing
    file raises BackupInvalid naming it."""
    names = check_path(relative).split("/")
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    folder_fd = os.open(folder, flags | os.O_DIRECTORY)
    try:
        for name in names[:-1]:
            inner = os.open(name, flags | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder_fd)
            os.close(folder_fd)
            folder_fd = inner
        fd = os.open(names[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder_fd)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise BackupInvalid(f"{relative} is missing (partial backup)") from exc
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise BackupInvalid(
                f"{relative}: a symlink or a non-folder on its path (refused, never followed)"
            ) from exc
        raise BackupInvalid(f"{relative} cannot be opened: {exc.strerror}") from exc
    finally:
        os.close(folder_fd)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise BackupInvalid(f"{relative} is {_kind(mode)}: a backup holds files only")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as handle:
        yield handle


def copy_listed(folder: Path, entry: dict[str, Any], target: Path) -> None:
    """Copy the listed file `entry` of the backup to `target` (a new file), hashing what is
    copied: a file changed since `verify` checked it raises BackupInvalid."""
    digest = hashlib.sha256()
    size = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with open_inside(folder, entry["path"]) as source, open(target, "xb") as out:
        while block := source.read(1 << 20):
            digest.update(block)
            size += len(block)
            out.write(block)
    if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
        raise BackupInvalid(f"{entry['path']} changed while it was being restored")


def part_entries(manifest: dict[str, Any], part: str) -> list[dict[str, Any]]:
    """The manifest's files of `part` (bound to it by `verify`)."""
    root = manifest["parts"][part]["path"]
    return [e for e in manifest["files"] if e["path"] == root or e["path"].startswith(root + "/")]


def _read_inside(folder: Path, name: str) -> bytes | None:
    try:
        with open_inside(folder, name) as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except BackupInvalid as exc:
        if isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.ENOENT:
            return None
        raise
    if len(data) > MAX_MANIFEST_BYTES:
        raise BackupInvalid(f"{name} is over {MAX_MANIFEST_BYTES:,} bytes")
    return data


def _parse(folder: Path, data: bytes) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(data)
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


def _manifest_bytes(folder: Path) -> bytes:
    data = _read_inside(Path(folder), MANIFEST)
    if data is None:
        raise BackupInvalid(
            f"{folder} has no {MANIFEST}: the backup is incomplete (interrupted before its "
            "manifest was written) or not a fraudflow backup"
        )
    return data


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of the backup in `folder`, its format checked (not yet its files)."""
    return _parse(Path(folder), _manifest_bytes(folder))


def check_signature(folder: Path, data: bytes, key: bytes | None, allow_unsigned: bool) -> bool:
    """Whether the manifest bytes `data` carry a valid signature made with `key`. A signature
    that does not match is always refused; a backup that cannot be checked (unsigned, or no
    key here) is refused unless `allow_unsigned`."""
    raw = _read_inside(Path(folder), SIGNATURE)
    signature = raw.decode("ascii", "replace").strip() if raw is not None else None
    if key is not None and signature is not None:
        if manifest_signed_by(key, data, signature):
            return True
        raise BackupInvalid(
            f"{MANIFEST} of {folder} does not match its signature ({SIGNATURE}): the manifest "
            "was altered after signing, or signed with another key (integrity.backup_key)"
        )
    if allow_unsigned:
        return False
    if signature is None:
        why = f"{folder} is unsigned (no {SIGNATURE})"
        if key is None:
            why += " and no integrity.backup_key is configured"
    else:
        why = f"{folder} is signed, but no integrity.backup_key is configured to check it"
    raise BackupUnsigned(
        f"{why}: nothing proves who wrote it (a crafted dump would run on restore); pass "
        "--allow-unsigned to restore it anyway"
    )


def _check_entries(manifest: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for entry in manifest["files"]:
        if not isinstance(entry, dict):
            raise BackupInvalid(f"a manifest file entry is not an object: {entry!r:.200}")
        check_path(entry.get("path"))
        size, digest = entry.get("size"), entry.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            problems.append(f"{entry['path']}: the manifest gives no size")
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _SHA256_HEX:
            problems.append(f"{entry['path']}: the manifest gives no SHA-256")
        if entry["path"] in (MANIFEST, SIGNATURE) or entry["path"] in seen:
            problems.append(f"{entry['path']} is listed twice or names the manifest")
        seen.add(entry["path"])
    return problems


def _check_parts(manifest: dict[str, Any]) -> list[str]:
    """Every part known, of a known kind, at a confined path of its own; a file part exactly
    its one listed file; every listed file in exactly one part."""
    problems: list[str] = []
    roots: dict[str, str] = {}
    listed = [e["path"] for e in manifest["files"]]
    for name, part in manifest["parts"].items():
        if name not in PART_SHAPES:
            problems.append(f"unknown part {name!r:.100}")
            continue
        if not isinstance(part, dict) or part.get("kind") not in PART_SHAPES[name]:
            problems.append(f"part {name} has no known kind")
            continue
        root = check_path(part.get("path"), f"the path of part {name}")
        roots[name] = root
        owned = [p for p in listed if p == root or p.startswith(root + "/")]
        if PART_SHAPES[name][part["kind"]] == "file" and owned != [root]:
            problems.append(f"part {name} must be exactly the one listed file {root}")
        if PART_SHAPES[name][part["kind"]] == "folder" and root in listed:
            problems.append(f"part {name} is a folder, but {root} is listed as a file")
        if name == "online_state" and part["kind"] == "redis":
            db, prefix = part.get("db"), part.get("prefix")
            if not isinstance(db, int) or isinstance(db, bool) or not 0 <= db < 1 << 16:
                problems.append("part online_state gives no Redis database number")
            if not isinstance(prefix, str) or not prefix or "*" in prefix:
                problems.append("part online_state gives no key prefix")
        if "root" in part and not isinstance(part["root"], str):
            problems.append(f"part {name}: its root is not a path")
    for a in roots:
        for b in roots:
            if a < b and (
                roots[a] == roots[b]
                or roots[b].startswith(roots[a] + "/")
                or roots[a].startswith(roots[b] + "/")
            ):
                problems.append(f"parts {a} and {b} overlap ({roots[a]}, {roots[b]})")
    for path in listed:
        if not any(path == r or path.startswith(r + "/") for r in roots.values()):
            problems.append(f"{path} belongs to no part")
    return problems


def verify(folder: Path, key: bytes | None = None, allow_unsigned: bool = True) -> dict[str, Any]:
    """The manifest, once it is signed as required (`check_signature`), its paths confined
    and bound to its parts, every file it lists is present with its size and checksum, and
    nothing else is there (no other file, no symlink, no special file); otherwise
    BackupInvalid naming each problem. `manifest["verified_signature"]` says whether it
    was signed."""
    folder = Path(folder)
    data = _manifest_bytes(folder)
    manifest = _parse(folder, data)  # format version first: no work on a foreign backup
    signed = check_signature(folder, data, key, allow_unsigned)
    problems = _check_entries(manifest)
    problems += _check_parts(manifest)
    if problems:
        raise BackupInvalid(f"backup {folder} is refused: " + "; ".join(problems))
    listed = {e["path"] for e in manifest["files"]}
    for relative, info in _walk(folder):
        if stat.S_ISDIR(info.st_mode):
            continue
        if not stat.S_ISREG(info.st_mode):
            problems.append(
                f"{relative} is {_kind(info.st_mode)} (refused: a backup holds files only)"
            )
        elif relative not in listed and relative not in (MANIFEST, SIGNATURE):
            problems.append(f"{relative} is not in the manifest")
    for entry in manifest["files"]:
        relative = entry["path"]
        try:
            with open_inside(folder, relative) as handle:
                size = os.fstat(handle.fileno()).st_size
                if size != entry["size"]:
                    problems.append(
                        f"{relative} is {size} bytes, the manifest says {entry['size']}"
                        + (" (truncated)" if size < entry["size"] else "")
                    )
                    continue
                digest = hashlib.sha256()
                while block := handle.read(1 << 20):
                    digest.update(block)
        except BackupInvalid as exc:
            problems.append(str(exc))
            continue
        if digest.hexdigest() != entry["sha256"]:
            problems.append(f"{relative}: checksum mismatch (SHA-256 differs from the manifest)")
    if problems:
        raise BackupInvalid(f"backup {folder} is damaged: " + "; ".join(problems))
    return {**manifest, "verified_signature": signed}
