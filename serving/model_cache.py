"""The last served model on this replica's own disk, so that a replica started while the
registry is unreachable can serve instead of answering 503 until it returns.

Layout of the cache folder (local to the replica, never shared between hosts):

    current.json          the entry served last, e.g. {"entry": "v7"} (replaced atomically)
    v7/booster.txt        the model's files, byte for byte as the registry holds them
    v7/meta.json
    v7/served.json        the manifest: name, version, stage, aliases, run id, the SHA-256
                          of both files and the version's signature (or null)
    .probed/<sha256>.json the pairs of model files a child process loaded and scored
                          (`serving.model_probe`), so each worker need not try them again
    .probed/<sha256>.lock taken by the worker probing that pair, so that the others wait

An entry is written into a temporary folder (each file through `pipelines.files`) and renamed
into place, so a reader sees all of it or none of it. Reading checks the manifest and the
hashes (and, through the caller's `check`, the signature), then loads the files with
`FraudScorer.load`, the check a registry load goes through;
anything that fails is refused with the reason. Only the entry served last and the one before
it are kept.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipelines.booster_check import BoosterLimits
from pipelines.files import replacing, sha256_file, write_json_atomic
from pipelines.model import BOOSTER_FILE, META_FILE, FraudScorer, check_model_files
from serving.model_probe import ModelProbe

log = logging.getLogger(__name__)

POINTER = "current.json"
PROBED = ".probed"
MANIFEST = "served.json"
FORMAT = 1
KEEP = 2  # the entry served last and the one before it
ENTRY = re.compile(r"^v[0-9]+$")
# a temporary folder older than this was left by a writer that died
STALE_TEMPORARY_S = 3600.0
MAX_MANIFEST_BYTES = 64 * 1024


class CacheError(ValueError):
    """A cache entry that cannot be served: missing, incomplete, altered or not a model."""


@dataclass(frozen=True)
class CachedModel:
    name: str
    version: str
    stage: str
    aliases: tuple[str, ...]
    run_id: str
    cached_at: str
    scorer: FraudScorer


def _copy(source: Path, target: Path) -> None:
    with replacing(target) as out, open(source, "rb") as handle:
        shutil.copyfileobj(handle, out)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise CacheError(f"{what} is over {MAX_MANIFEST_BYTES:,} bytes")
        payload = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CacheError(f"{what} is missing") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CacheError(f"{what} is not readable JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise CacheError(f"{what} is not a JSON object")
    return payload


class ModelCache:
    """Write and read the cache folder of one replica (every worker of it may use it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def save(
        self,
        booster: Path,
        meta: Path,
        *,
        name: str,
        version: str,
        stage: str,
        aliases: tuple[str, ...],
        run_id: str,
        signature: str | None = None,
    ) -> Path:
        """Keep the files of the model now served as the entry to serve from; returns it."""
        entry = self.folder / f"v{int(version)}"
        manifest = {
            "format": FORMAT,
            "name": name,
            "version": str(version),
            "stage": stage,
            "aliases": list(aliases),
            "run_id": run_id,
            "cached_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sha256": {BOOSTER_FILE: sha256_file(booster), META_FILE: sha256_file(meta)},
            "signature": signature,
        }
        if not self._holds(entry, manifest):
            self._write_entry(entry, booster, meta, manifest)
        write_json_atomic(self.folder / POINTER, {"entry": entry.name})
        self._prune(entry.name)
        return entry

    def load(
        self,
        name: str,
        limits: BoosterLimits = BoosterLimits(),
        check_features: Callable[[tuple[str, ...]], None] | None = None,
        probe: ModelProbe | None = None,
        check: Callable[[str, str, Path, Path, str | None], None] | None = None,
    ) -> CachedModel | None:
        """The model served last, checked; None when nothing was cached. Raises CacheError
        naming what is wrong with an entry that cannot be served (ModelArtifactError for files
        that are not a model, or that `check_features` or `probe` refuse). `check(name,
        version, booster, meta, signature)` runs first and raises to refuse the files.

        Nothing is parsed by LightGBM in this process before the hashes, `check`, the files'
        own checks (the booster text, `limits`), `check_features` and the `probe` passed."""
        pointer = self.folder / POINTER
        if not pointer.exists():
            return None
        entry_name = _read_json(pointer, POINTER).get("entry")
        if not isinstance(entry_name, str) or not ENTRY.match(entry_name):
            raise CacheError(f"{POINTER} names no entry (found {entry_name!r})")
        entry = self.folder / entry_name
        manifest = _read_json(entry / MANIFEST, f"{entry_name}/{MANIFEST}")
        if manifest.get("format") != FORMAT:
            raise CacheError(f"{entry_name}/{MANIFEST} has format {manifest.get('format')!r}")
        if manifest.get("name") != name:
            raise CacheError(f"{entry_name} holds model {manifest.get('name')!r}, not {name!r}")
        if f"v{manifest.get('version')}" != entry_name:
            raise CacheError(f"{entry_name}/{MANIFEST} says version {manifest.get('version')!r}")
        hashes = manifest.get("sha256")
        if not isinstance(hashes, dict):
            raise CacheError(f"{entry_name}/{MANIFEST} holds no file hashes")
        for file_name in (BOOSTER_FILE, META_FILE):
            path = entry / file_name
            if not path.is_file():
                raise CacheError(f"{entry_name}/{file_name} is missing")
            if sha256_file(path) != hashes.get(file_name):
                raise CacheError(f"{entry_name}/{file_name} differs from what was cached")
        booster, meta = entry / BOOSTER_FILE, entry / META_FILE
        if check is not None:
            signature = manifest.get("signature")
            check(
                name,
                str(manifest["version"]),
                booster,
                meta,
                signature if isinstance(signature, str) else None,
            )
        checked = check_model_files(booster, meta, limits, hashes)
        if check_features is not None:
            check_features(checked.features)
        if probe is not None:
            probe.require(booster, meta)
        scorer = FraudScorer.from_checked(checked)
        aliases = manifest.get("aliases") or []
        return CachedModel(
            name=name,
            version=str(manifest["version"]),
            stage=str(manifest.get("stage") or ""),
            aliases=tuple(str(a) for a in aliases) if isinstance(aliases, list) else (),
            run_id=str(manifest.get("run_id") or ""),
            cached_at=str(manifest.get("cached_at") or ""),
            scorer=scorer,
        )

    def entries(self) -> list[str]:
        """The names of the complete entries on disk."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if p.is_dir() and ENTRY.match(p.name))

    def _holds(self, entry: Path, manifest: dict[str, Any]) -> bool:
        """Whether `entry` already holds these files of this model, intact (another worker of
        this replica wrote it, or this version was served before)."""
        try:
            held = _read_json(entry / MANIFEST, MANIFEST)
            kept = ("format", "name", "version", "sha256", "signature")
            if any(held.get(k) != manifest[k] for k in kept):
                return False
            return all(sha256_file(entry / f) == h for f, h in manifest["sha256"].items())
        except (CacheError, OSError):
            return False

    def _write_entry(
        self, entry: Path, booster: Path, meta: Path, manifest: dict[str, Any]
    ) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        staging = self.folder / f".tmp-{entry.name}-{token}"
        replaced = self.folder / f".old-{entry.name}-{token}"
        staging.mkdir()
        try:
            _copy(booster, staging / BOOSTER_FILE)
            _copy(meta, staging / META_FILE)
            write_json_atomic(staging / MANIFEST, manifest)  # last: it completes the entry
            try:
                os.rename(entry, replaced)  # an incomplete or other entry of that version
            except FileNotFoundError:
                pass
            try:
                os.rename(staging, entry)
            except OSError:
                if not self._holds(entry, manifest):  # not another worker's copy of the same
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(replaced, ignore_errors=True)

    def _prune(self, current: str) -> None:
        """Keep the current entry and the newest other one; drop leftovers of dead writers."""
        try:
            others = [
                p
                for p in self.folder.iterdir()
                if p.is_dir() and ENTRY.match(p.name) and p.name != current
            ]
            others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
            for old in others[KEEP - 1 :]:
                shutil.rmtree(old, ignore_errors=True)
            now = time.time()
            for leftover in self.folder.glob(".*-v*-*"):
                if leftover.is_dir() and now - leftover.stat().st_mtime > STALE_TEMPORARY_S:
                    shutil.rmtree(leftover, ignore_errors=True)
        except OSError as exc:  # pruning again at the next save is enough
            log.warning("pruning the model cache at %s failed: %s", self.folder, exc)
