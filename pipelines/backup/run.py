"""`fraudflow backup` and `fraudflow restore`: every store of a deployment into one numbered,
checksummed backup folder, and back into a store of the same shape, all or nothing.

A backup is made in a hidden folder and renamed to backup-NNNNNN once its manifest is written,
so a numbered backup is always complete; older ones beyond `backup.keep` are then deleted. A
symlink or special file in a live folder is never followed: it is skipped and reported. With
`integrity.backup_key` the manifest is signed. A restore checks the signature (required unless
--allow-unsigned), the manifest and every file, and every target (empty, or --force; never in
use by a running API), before it changes anything; it builds each part beside its target from
the manifest's own list of that part's files and renames it into place.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.backup import artifacts, live, postgres, redis_snapshot
from pipelines.backup.confined import copy_tree, skipped_entry
from pipelines.backup.manifest import (
    MANIFEST,
    PART_SHAPES,
    copy_listed,
    part_entries,
    verify,
    write_manifest,
)
from pipelines.backup.sqlite_files import (
    backup_sqlite,
    check_integrity,
    is_empty_sqlite,
    replace_text,
)
from pipelines.integrity import read_key
from pipelines.log.record import log_folder
from pipelines.log.snapshot import snapshot_log
from pipelines.mlflow import artifacts as server_artifacts
from pipelines.settings import Settings

log = logging.getLogger("fraudflow.backup")

PARTS = tuple(PART_SHAPES)
NAME = re.compile(r"^backup-(\d{6})$")


class RestoreRefused(ValueError):
    """The target cannot take the backup (not empty, in use); nothing was changed.
    `not_empty`: the targets that hold data, which a restore with `force` replaces."""

    def __init__(self, message: str, not_empty: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.not_empty = list(not_empty)


@dataclass(frozen=True)
class Layout:
    """Where a deployment's stores are, as its settings say."""

    tracking: str  # "embedded" (SQLite + local artifacts) or "server"
    database: str  # sqlite:///... or postgresql://...
    artifact_root: Path | None  # the local artifact folder (embedded)
    state: Path | None  # the SQLite online state (None: Redis)
    state_url: str | None  # the Redis online state
    prediction_log: Path
    reports: Path


def layout(settings: Settings) -> Layout:
    uri = settings.mlflow.tracking_uri
    if not uri:
        tracking, database = "embedded", settings.tracking_uri
        artifact_root: Path | None = settings.artifact_root
    elif uri.startswith(("http://", "https://")):
        tracking, database, artifact_root = "server", settings.backup.mlflow_database or "", None
        if not database:
            raise ValueError(
                "the registry is a tracking server: set backup.mlflow_database (its PostgreSQL "
                "database, FRAUDFLOW__BACKUP__MLFLOW_DATABASE) to back it up or restore it"
            )
    else:
        raise ValueError(
            "backup needs the embedded store or a tracking server (http://), not "
            f"{uri.split(':')[0]}"
        )
    if not database.startswith(("sqlite:///", "postgresql")):
        raise ValueError("backup.mlflow_database must be a postgresql:// or sqlite:/// URI")
    redis_state = settings.state.backend == "redis"
    return Layout(
        tracking,
        database,
        artifact_root,
        None if redis_state else settings.under_workdir(settings.state.sqlite_path).resolve(),
        settings.state.url if redis_state else None,
        log_folder(settings).resolve(),
        settings.under_workdir(settings.monitoring.reports_dir).resolve(),
    )


def _sqlite_path(uri: str) -> Path:
    return Path(uri[len("sqlite:///") :]).resolve()


def _redacted(uri: str) -> str:
    return postgres.without_password(uri) if "://" in uri else uri


def _source(settings: Settings, where: Layout) -> dict[str, Any]:
    dumped = settings.model_dump(mode="json")
    if dumped["mlflow"]["tracking_uri"]:
        dumped["mlflow"]["tracking_uri"] = _redacted(dumped["mlflow"]["tracking_uri"])
    if dumped["backup"]["mlflow_database"]:
        dumped["backup"]["mlflow_database"] = _redacted(dumped["backup"]["mlflow_database"])
    if dumped["state"]["url"]:
        dumped["state"]["url"] = _redacted(dumped["state"]["url"])
    return {
        "tracking": where.tracking,
        "database": _redacted(where.database),
        "artifact_root": str(where.artifact_root) if where.artifact_root else None,
        "settings": dumped,
    }


@dataclass(frozen=True)
class BackupResult:
    folder: Path
    total_bytes: int
    files: int
    seconds: float
    parts: dict[str, dict[str, Any]]
    pruned: list[Path] = field(default_factory=list)
    signed: bool = False
    # symlinks and special files found in the live folders: skipped, never followed
    skipped: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "total_bytes": self.total_bytes,
            "files": self.files,
            "seconds": round(self.seconds, 3),
            "parts": self.parts,
            "pruned": [str(p) for p in self.pruned],
            "signed": self.signed,
            "skipped": self.skipped,
        }


def numbered(root: Path) -> list[tuple[int, Path]]:
    """The complete backups under `root`, oldest first."""
    if not Path(root).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(root).iterdir() if (m := NAME.match(p.name))]
    return sorted(found)


def backup_root(settings: Settings, output: str | Path | None) -> Path:
    return Path(output) if output else settings.under_workdir(settings.backup.root)


def make_backup(settings: Settings, output: str | Path | None = None) -> BackupResult:
    """Back up every store into the next backup-NNNNNN under the backup root (`output` or
    `backup.root`), while the API keeps serving; then prune to `backup.keep` backups."""
    started = time.perf_counter()
    where = layout(settings)
    key = read_key(settings.integrity.backup_key, "integrity.backup_key")
    root = backup_root(settings, output)
    root.mkdir(parents=True, exist_ok=True)
    work = root / f".partial-{uuid.uuid4().hex}"
    work.mkdir()
    try:
        parts, skipped = _copy_stores(settings, where, work)
        for entry in skipped:
            log.warning("not backed up: %s is a %s (never followed)", entry["path"], entry["what"])
        manifest = write_manifest(work, parts, _source(settings, where), key, skipped)
        folder = _rename_numbered(work, root)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    pruned = prune(root, settings.backup.keep)
    return BackupResult(
        folder,
        manifest["total_bytes"],
        len(manifest["files"]),
        time.perf_counter() - started,
        parts,
        pruned,
        key is not None,
        skipped,
    )


def _copy_stores(
    settings: Settings, where: Layout, work: Path
) -> tuple[dict[str, dict[str, Any]], list[dict[str, str]]]:
    """Every store into `work`: the parts, and what was skipped (symlinks, special files)."""
    parts: dict[str, dict[str, Any]] = {}
    skipped: list[dict[str, str]] = []
    if where.database.startswith("sqlite:///"):
        database = _sqlite_path(where.database)
        if not database.is_file():
            raise FileNotFoundError(f"no MLflow store at {database}: nothing to back up")
        backup_sqlite(database, work / "mlflow" / "mlflow.db")
        parts["mlflow_store"] = {"kind": "sqlite", "path": "mlflow/mlflow.db"}
    else:
        postgres.dump(where.database, work / "mlflow" / "mlflow.pgdump")
        parts["mlflow_store"] = {"kind": "postgresql", "path": "mlflow/mlflow.pgdump"}
    # after the database: every artifact it names is already written (MLflow logs files first)
    if where.artifact_root is not None:
        skipped += artifacts.copy_local(where.artifact_root, work / "artifacts", "artifacts")
        parts["artifacts"] = {
            "kind": "local",
            "path": "artifacts",
            "root": str(where.artifact_root),
        }
    else:
        server_artifacts.download_from_server(settings, work / "artifacts")
        parts["artifacts"] = {"kind": "server", "path": "artifacts"}
    if where.state is not None and where.state.is_file():
        backup_sqlite(where.state, work / "online_state" / "state.sqlite")
        parts["online_state"] = {"kind": "sqlite", "path": "online_state/state.sqlite"}
    elif where.state_url:
        redis_snapshot.snapshot(where.state_url, work / "online_state" / "state.rdb")
        parts["online_state"] = {
            "kind": "redis",
            "path": "online_state/state.rdb",
            "db": redis_snapshot.database_index(where.state_url),
            "prefix": settings.state.key_prefix,
        }
    not_regular: list[Path] = []
    copied = snapshot_log(where.prediction_log, work / "prediction_log", not_regular)
    skipped += [
        skipped_entry(f"prediction_log/{p.name}", "symlink or special file") for p in not_regular
    ]
    parts["prediction_log"] = {"kind": "files", "path": "prediction_log", "files": len(copied)}
    skipped += copy_tree(where.reports, work / "reports", "reports")
    parts["reports"] = {"kind": "files", "path": "reports"}
    return parts, skipped


def _rename_numbered(work: Path, root: Path) -> Path:
    """Give the finished backup the next free number (a concurrent backup takes another)."""
    while True:
        last = numbered(root)
        folder = root / f"backup-{(last[-1][0] if last else 0) + 1:06d}"
        try:
            work.rename(folder)  # fails if a concurrent backup took the name first
            return folder
        except OSError:
            if not folder.exists():
                raise


def prune(root: Path, keep: int) -> list[Path]:
    """Delete the oldest complete backups beyond the newest `keep`."""
    old = [path for _, path in numbered(root)][:-keep]
    for path in old:
        shutil.rmtree(path)
    return old


# ------------------------------------------------------------------------------- restore


def resolve_input(path: Path) -> Path:
    """The backup to restore: `path` itself, or the newest backup-NNNNNN under it."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no backup at {path}")
    if (path / MANIFEST).is_file() or not numbered(path):
        return path
    return numbered(path)[-1][1]


@dataclass(frozen=True)
class RestoreResult:
    folder: Path
    parts: list[str]
    seconds: float
    replaced: list[str]
    signed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup": str(self.folder),
            "parts": self.parts,
            "seconds": round(self.seconds, 3),
            "replaced": self.replaced,
            "signed": self.signed,
        }


def restore_backup(
    settings: Settings,
    source: str | Path,
    force: bool = False,
    only: list[str] | None = None,
    allow_unsigned: bool = False,
) -> RestoreResult:
    """Restore the backup at `source` into the stores the settings name. Refused (nothing
    changed) when the backup is not signed with `integrity.backup_key` (unless
    `allow_unsigned`), escapes its folder or is damaged, a target is in use, or not empty
    without `force`."""
    started = time.perf_counter()
    unknown = sorted(set(only or []) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown parts {unknown}; known: {list(PARTS)}")
    key = read_key(settings.integrity.backup_key, "integrity.backup_key")
    folder = resolve_input(Path(source))
    manifest = verify(folder, key, allow_unsigned)
    where = layout(settings)
    wanted = [p for p in PARTS if p in manifest["parts"] and (not only or p in only)]
    _check_kinds(manifest, where, wanted)
    _check_targets(settings, where, wanted, force)
    replaced = _restore_parts(settings, where, folder, manifest, wanted)
    signed = manifest["verified_signature"]
    return RestoreResult(folder, wanted, time.perf_counter() - started, replaced, signed)


def _check_kinds(manifest: dict[str, Any], where: Layout, wanted: list[str]) -> None:
    parts = manifest["parts"]
    target_db = "sqlite" if where.database.startswith("sqlite:///") else "postgresql"
    if "mlflow_store" in wanted and parts["mlflow_store"]["kind"] != target_db:
        raise RestoreRefused(
            f"the backup holds a {parts['mlflow_store']['kind']} MLflow store; the target "
            f"is {target_db} ({_redacted(where.database)})"
        )
    target_artifacts = "local" if where.artifact_root is not None else "server"
    if "artifacts" in wanted and parts["artifacts"]["kind"] != target_artifacts:
        raise RestoreRefused(
            f"the backup holds {parts['artifacts']['kind']} artifacts; the target's are "
            f"{target_artifacts}: restore into a deployment of the same shape"
        )
    target_state = "redis" if where.state_url else "sqlite"
    if "online_state" in wanted and parts["online_state"]["kind"] != target_state:
        raise RestoreRefused(
            f"the backup holds a {parts['online_state']['kind']} online state; the target's "
            f"is {target_state} (state.backend)"
        )


def _local_targets(where: Layout, wanted: list[str]) -> dict[str, Path]:
    targets: dict[str, Path] = {}
    if "mlflow_store" in wanted and where.database.startswith("sqlite:///"):
        targets["mlflow_store"] = _sqlite_path(where.database)
    if "artifacts" in wanted and where.artifact_root is not None:
        targets["artifacts"] = where.artifact_root
    if "online_state" in wanted and where.state is not None:
        targets["online_state"] = where.state
    if "prediction_log" in wanted:
        targets["prediction_log"] = where.prediction_log
    if "reports" in wanted:
        targets["reports"] = where.reports
    return targets


def _holds_data(part: str, path: Path) -> bool:
    if part in ("mlflow_store", "online_state"):
        return not is_empty_sqlite(path)
    return path.is_dir() and any(path.iterdir())


def _check_targets(settings: Settings, where: Layout, wanted: list[str], force: bool) -> None:
    """Refuse, before anything changes, a target in use or one holding data (without force)."""
    targets = _local_targets(where, wanted)
    # every API worker holds its metrics files open from its start, before any request
    watched = {**targets, "serving metrics": settings.under_workdir(settings.serving.metrics_dir)}
    in_use = live.holders([path.resolve() for path in watched.values()])
    problems = [
        f"{part} at {path} is live: in use by process(es) {in_use[str(path.resolve())]} (stop "
        "the API and the jobs using this store first)"
        for part, path in watched.items()
        if str(path.resolve()) in in_use
    ]
    full = [f"{part} at {path}" for part, path in targets.items() if _holds_data(part, path)]
    if "mlflow_store" in wanted and not where.database.startswith("sqlite:///"):
        shown = _redacted(where.database)
        if postgres.other_sessions(where.database):
            problems.append(
                f"mlflow_store {shown} is live: other sessions are connected (stop the "
                "tracking server first)"
            )
        if postgres.table_count(where.database):
            full.append(f"mlflow_store {shown}")
    if "artifacts" in wanted and where.artifact_root is None:
        if server_artifacts.server_holds_artifacts(settings):
            full.append(f"artifacts of {_redacted(settings.tracking_uri)}")
    if "online_state" in wanted and where.state_url:
        shown = _redacted(where.state_url)
        if redis_snapshot.other_clients(where.state_url):
            problems.append(
                f"online_state {shown} is live: other clients are connected (stop the API first)"
            )
        if redis_snapshot.key_count(where.state_url, settings.state.key_prefix):
            full.append(f"online_state {shown}")
    refused_full = full if not force else []
    if refused_full:
        problems.append("not empty: " + ", ".join(refused_full))
    if problems:
        raise RestoreRefused(
            "restore refused, nothing changed: " + "; ".join(problems), refused_full
        )


def _restore_parts(
    settings: Settings, where: Layout, folder: Path, manifest: dict[str, Any], wanted: list[str]
) -> list[str]:
    """Stage every local part beside its target, then swap them all in; the database and
    server artifacts go last, each in one step (one transaction; uploads)."""
    parts = manifest["parts"]
    targets = _local_targets(where, wanted)
    staged: dict[str, Path] = {}
    try:
        for part, target in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            stage = target.parent / f".restore-{uuid.uuid4().hex}-{target.name}"
            staged[part] = stage
            _stage(part, folder, manifest, stage, where)
        replaced = _swap(staged, targets)
    finally:
        for stage in staged.values():
            if stage.is_dir():
                shutil.rmtree(stage, ignore_errors=True)
            else:
                stage.unlink(missing_ok=True)
    # the database, server artifacts and Redis state are read by tools from a private copy
    # of the part's listed files, checked as it is made
    with tempfile.TemporaryDirectory(prefix="fraudflow-restore-") as private:
        if "mlflow_store" in wanted and not where.database.startswith("sqlite:///"):
            dump = _private_copy(folder, manifest, "mlflow_store", Path(private))
            clean = postgres.table_count(where.database) > 0
            postgres.restore(where.database, dump, clean)
            replaced += ["mlflow_store"] if clean else []
        if "artifacts" in wanted and where.artifact_root is None:
            uploads = _private_copy(folder, manifest, "artifacts", Path(private))
            uploads.mkdir(parents=True, exist_ok=True)
            server_artifacts.upload_to_server(settings, uploads)
        if "online_state" in wanted and where.state_url:
            state = parts["online_state"]
            rdb = _private_copy(folder, manifest, "online_state", Path(private))
            prefix = settings.state.key_prefix
            if redis_snapshot.key_count(where.state_url, prefix):
                redis_snapshot.delete_keys(where.state_url, prefix)
                replaced.append("online_state")
            redis_snapshot.restore(where.state_url, rdb, state["db"], prefix)
    return replaced


def _copy_part(folder: Path, manifest: dict[str, Any], part: str, target: Path) -> None:
    """The part's files as the manifest lists them (no other file, no link), checked as
    they are copied: a file part becomes `target`, a folder part the folder `target`."""
    root = manifest["parts"][part]["path"]
    for entry in part_entries(manifest, part):
        relative = entry["path"][len(root) + 1 :]
        copy_listed(folder, entry, target / relative if relative else target)


def _private_copy(folder: Path, manifest: dict[str, Any], part: str, private: Path) -> Path:
    target = private / part
    _copy_part(folder, manifest, part, target)
    return target


def _stage(part: str, folder: Path, manifest: dict[str, Any], stage: Path, where: Layout) -> None:
    parts = manifest["parts"]
    if part in ("mlflow_store", "online_state"):
        _copy_part(folder, manifest, part, stage)
        check_integrity(stage)
        old_root = parts.get("artifacts", {}).get("root")
        if part == "mlflow_store" and old_root and where.artifact_root is not None:
            if old_root != str(where.artifact_root):
                replace_text(stage, old_root, str(where.artifact_root))
    else:
        stage.mkdir()
        _copy_part(folder, manifest, part, stage)
        old_root = parts.get("artifacts", {}).get("root")
        if part == "artifacts" and old_root and old_root != str(where.artifact_root):
            artifacts.relocate_files(stage, old_root, str(where.artifact_root))


def _swap(staged: dict[str, Path], targets: dict[str, Path]) -> list[str]:
    """Move each old target aside and each staged part into place; undo on failure."""
    aside: dict[str, list[tuple[Path, Path]]] = {}
    placed: list[str] = []
    try:
        for part, stage in staged.items():
            target = targets[part]
            moves: list[tuple[Path, Path]] = []
            aside[part] = moves
            siblings = [target] + [target.with_name(target.name + s) for s in ("-wal", "-shm")]
            for old in siblings:
                if old.exists():
                    kept = old.with_name(f".replaced-{uuid.uuid4().hex}-{old.name}")
                    old.rename(kept)
                    moves.append((old, kept))
            stage.rename(target)
            placed.append(part)
    except BaseException:
        for part in placed:
            target = targets[part]
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        for moves in aside.values():
            for old, kept in moves:
                kept.rename(old)
        raise
    replaced = []
    for part, moves in aside.items():
        for old, kept in moves:
            shutil.rmtree(kept) if kept.is_dir() else kept.unlink()
        if any(old == targets[part] for old, _ in moves):
            replaced.append(part)
    return replaced


def describe(result: BackupResult) -> str:
    lines = [
        f"backup {result.folder}: {result.files} files, {result.total_bytes / 1e6:.1f} MB "
        f"in {result.seconds:.1f} s, "
        + ("signed" if result.signed else "UNSIGNED (no integrity.backup_key)")
        + (f"; deleted {len(result.pruned)} older backup(s)" if result.pruned else "")
    ]
    lines += [
        f"  not backed up: {entry['path']} is a {entry['what']} (never followed)"
        for entry in result.skipped
    ]
    return "\n".join(lines)
