"""HMAC-SHA256 signatures made with a key from a secret: who wrote a backup's manifest, who
promoted a model version's files. A checksum proves a file is what a manifest says; only a
keyed signature proves the manifest (or the version) came from a holder of the key.

The keys come from `integrity.backup_key` and `integrity.model_key` (a file or an environment
variable, read when needed, never at import). A key that is configured but cannot be read is an
error, never "no key": a deployment that means to check signatures fails closed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from pipelines.files import sha256_file
from pipelines.settings import KeySource

ALGORITHM = "hmac-sha256"
MIN_KEY_BYTES = 32
MAX_KEY_BYTES = 4096
# the version tag that carries a promoted version's signature
MODEL_SIGNATURE_TAG = "fraudflow.signature"
_MODEL_DOMAIN = b"fraudflow-model-signature-v1"
_MANIFEST_DOMAIN = b"fraudflow-backup-manifest-v1"


class IntegrityError(ValueError):
    """A signature that is missing, malformed or does not match, or a key that is unusable."""


class KeyUnavailable(IntegrityError):
    """A key is configured but cannot be read, or is too short to be a key."""


def read_key(source: KeySource | None, what: str) -> bytes | None:
    """The key `source` names (surrounding whitespace dropped), or None when none is
    configured; KeyUnavailable when it is configured but missing, empty or short."""
    if source is None:
        return None
    if source.file is not None:
        where = f"{what} file {source.file}"
        try:
            with open(source.file, "rb") as handle:
                raw = handle.read(MAX_KEY_BYTES + 1)
        except OSError as exc:
            raise KeyUnavailable(f"{where} cannot be read: {exc.strerror or exc}") from exc
    else:
        where = f"{what} environment variable {source.env}"
        if source.env not in os.environ:
            raise KeyUnavailable(f"{where} is not set")
        raw = os.environ[source.env].encode()
    key = raw.strip()
    if len(key) > MAX_KEY_BYTES:
        raise KeyUnavailable(f"{where} holds over {MAX_KEY_BYTES} bytes: not a key")
    if len(key) < MIN_KEY_BYTES:
        raise KeyUnavailable(
            f"{where} holds {len(key)} bytes; a key needs at least {MIN_KEY_BYTES} "
            "(e.g. openssl rand -hex 32)"
        )
    return key


def _sign(key: bytes, domain: bytes, message: bytes) -> str:
    digest = hmac.new(key, domain + b"\n" + message, hashlib.sha256).hexdigest()
    return f"{ALGORITHM}:{digest}"


def _matches(key: bytes, domain: bytes, message: bytes, signature: str) -> bool:
    return hmac.compare_digest(_sign(key, domain, message).encode(), signature.strip().encode())


def sign_manifest(key: bytes, manifest: bytes) -> str:
    """The signature of a backup manifest's exact bytes."""
    return _sign(key, _MANIFEST_DOMAIN, manifest)


def manifest_signed_by(key: bytes, manifest: bytes, signature: str) -> bool:
    return _matches(key, _MANIFEST_DOMAIN, manifest, signature)


def _model_message(name: str, version: str, booster: Path, meta: Path) -> bytes:
    """What a model signature covers: the version's name and number (a signature cannot be
    carried to another version) and the SHA-256 of its booster and meta files."""
    fields = [name, str(version), sha256_file(booster), sha256_file(meta)]
    if any("\n" in field for field in fields):
        raise IntegrityError("a model name or version holds a line break")
    return "\n".join(fields).encode()


def sign_model(key: bytes, name: str, version: str, booster: Path, meta: Path) -> str:
    """The signature of version `version` of model `name` with these booster and meta files."""
    return _sign(key, _MODEL_DOMAIN, _model_message(name, version, booster, meta))


def check_model(
    key: bytes, name: str, version: str, booster: Path, meta: Path, signature: str | None
) -> None:
    """Raise IntegrityError unless `signature` is the key's signature of these files as that
    version: an unsigned version, or one whose files changed after it was signed, is refused."""
    if not signature:
        raise IntegrityError(
            f"{name} v{version} is unsigned (no {MODEL_SIGNATURE_TAG} tag) and this service "
            "requires signed versions: promote it with `fraudflow promote`, which signs it"
        )
    if not _matches(key, _MODEL_DOMAIN, _model_message(name, version, booster, meta), signature):
        raise IntegrityError(
            f"{name} v{version} does not match its signature: its booster or meta changed "
            "after it was signed, or it was signed with another key"
        )
