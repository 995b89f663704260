"""Hostile backups and a hostile data volume: a crafted backup is refused with a message naming
what is wrong and the target's files unchanged; a link planted in the live data is never
followed, and the backup says so. The crafted backups that need a valid signature to get past
it are re-signed with the key, as if its holder had crafted them: confinement does not rest on
the signature alone."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from pipelines.backup.manifest import MANIFEST, SIGNATURE, BackupInvalid, check_path
from pipelines.backup.run import restore_backup
from pipelines.integrity import sign_manifest
from pipelines.log.record import log_folder
from pipelines.settings import Settings
from tests.support.settings import make_settings, write_config
from tests.test_backup import BACKUP_KEY, cli, fingerprint, small_store, source  # noqa: F401

pytestmark = pytest.mark.backup
KEY = BACKUP_KEY["FRAUDFLOW_TEST_BACKUP_KEY"].encode()
SECRET = "a secret outside the backup"


def keyed_target(tmp_path: Path, key: bytes = KEY) -> Settings:
    """An empty deployment to restore into, holding `key` in a file (a mounted secret)."""
    key_file = tmp_path / "backup-key"
    key_file.write_bytes(key + b"\n")
    return make_settings(tmp_path / "restored", integrity={"backup_key": {"file": str(key_file)}})


def outside(tmp_path: Path) -> Path:
    """A file outside the backup a crafted manifest points at."""
    folder = tmp_path / "outside"
    folder.mkdir(exist_ok=True)
    (folder / "secret.txt").write_text(SECRET)
    return folder / "secret.txt"


def entry_for(path: Path, name: str) -> dict:
    data = path.read_bytes()
    return {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def rewrite(backup: Path, change, sign: bool = True) -> None:
    """Change the manifest (a function of it) and, with `sign`, sign it again with the key."""
    manifest = json.loads((backup / MANIFEST).read_text())
    change(manifest)
    (backup / MANIFEST).write_text(json.dumps(manifest))
    if sign:
        (backup / SIGNATURE).write_text(sign_manifest(KEY, (backup / MANIFEST).read_bytes()))


def craft_absolute_path(backup: Path, tmp_path: Path) -> str:
    secret = outside(tmp_path)
    rewrite(backup, lambda m: m["files"].append(entry_for(secret, str(secret))))
    return f"'{secret}' is absolute"


def craft_dot_dot(backup: Path, tmp_path: Path) -> str:
    secret = outside(tmp_path)
    name = "reports/../../outside/secret.txt"
    rewrite(backup, lambda m: m["files"].append(entry_for(secret, name)))
    return f"'{name}' contains '..'"


def craft_part_outside(backup: Path, tmp_path: Path) -> str:
    outside(tmp_path)

    def change(manifest: dict) -> None:
        manifest["parts"]["reports"]["path"] = "../outside"

    rewrite(backup, change)
    return "the path of part reports '../outside' contains '..'"


def craft_symlinked_folder(backup: Path, tmp_path: Path) -> str:
    secret = outside(tmp_path)
    (backup / "artifacts" / "linked").symlink_to(secret.parent, target_is_directory=True)
    rewrite(backup, lambda m: m["files"].append(entry_for(secret, "artifacts/linked/secret.txt")))
    return "artifacts/linked is a symlink"


def craft_symlinked_file(backup: Path, tmp_path: Path) -> str:
    latest = backup / "reports" / "latest.json"
    copy = tmp_path / "outside-latest.json"
    shutil.copyfile(latest, copy)  # same bytes: its checksum still matches
    latest.unlink()
    latest.symlink_to(copy)
    return "reports/latest.json is a symlink"


def craft_fifo(backup: Path, tmp_path: Path) -> str:
    os.mkfifo(backup / "reports" / "pipe")
    return "reports/pipe is a named pipe"


def craft_extra_file_in_a_part(backup: Path, tmp_path: Path) -> str:
    (backup / "reports" / "planted.json").write_text("{}")
    return "reports/planted.json is not in the manifest"


def craft_file_of_no_part(backup: Path, tmp_path: Path) -> str:
    (backup / "elsewhere").mkdir()
    planted = backup / "elsewhere" / "x.txt"
    planted.write_text("listed, but in no part")
    rewrite(backup, lambda m: m["files"].append(entry_for(planted, "elsewhere/x.txt")))
    return "elsewhere/x.txt belongs to no part"


def craft_file_part_with_two_files(backup: Path, tmp_path: Path) -> str:
    second = backup / "mlflow" / "second.db"
    second.write_bytes(b"SQLite format 3\x00")

    def change(manifest: dict) -> None:
        manifest["files"].append(entry_for(second, "mlflow/second.db"))
        manifest["parts"]["mlflow_store"]["path"] = "mlflow"

    rewrite(backup, change)
    return "part mlflow_store must be exactly the one listed file mlflow"


def craft_altered_after_signing(backup: Path, tmp_path: Path) -> str:
    """A crafted database put in, its size and checksum written into the manifest: all the
    manifest's checks pass, only the signature tells."""
    database = backup / "mlflow" / "mlflow.db"
    database.write_bytes(database.read_bytes() + b"\x00" * 4096)
    entry = entry_for(database, "mlflow/mlflow.db")

    def change(manifest: dict) -> None:
        manifest["files"] = [e if e["path"] != entry["path"] else entry for e in manifest["files"]]

    rewrite(backup, change, sign=False)
    return "manifest.json of " + str(backup) + " does not match its signature (manifest.hmac)"


def craft_unsigned(backup: Path, tmp_path: Path) -> str:
    (backup / SIGNATURE).unlink()
    return f"{backup} is unsigned (no manifest.hmac): nothing proves who wrote it"


CRAFTED = [
    craft_absolute_path,
    craft_dot_dot,
    craft_part_outside,
    craft_symlinked_folder,
    craft_symlinked_file,
    craft_fifo,
    craft_extra_file_in_a_part,
    craft_file_of_no_part,
    craft_file_part_with_two_files,
    craft_altered_after_signing,
    craft_unsigned,
]


@pytest.mark.parametrize("craft", CRAFTED)
def test_a_crafted_backup_is_refused_naming_the_hole_and_nothing_changes(
    source, tmp_path, craft  # noqa: F811
) -> None:
    _, _, backup = source
    crafted = tmp_path / "crafted"
    shutil.copytree(backup, crafted)
    expected = craft(crafted, tmp_path)
    settings = keyed_target(tmp_path)
    before = fingerprint(tmp_path)
    with pytest.raises(BackupInvalid) as refused:
        restore_backup(settings, crafted)
    assert expected in str(refused.value)
    after = fingerprint(tmp_path)
    assert after == before and not settings.workdir.exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith((".restore", ".repl"))]


def test_the_cli_refuses_an_unsigned_backup_without_allow_unsigned(
    source, tmp_path  # noqa: F811
) -> None:
    _, _, backup = source
    unsigned = tmp_path / "unsigned"
    shutil.copytree(backup, unsigned)
    (unsigned / SIGNATURE).unlink()
    settings = make_settings(tmp_path / "restored")
    config = write_config(tmp_path / "restored.yaml", settings)
    refused = cli("restore", "--config", str(config), "--input", str(unsigned))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "is unsigned (no manifest.hmac)" in refused.stderr
    assert "--allow-unsigned" in refused.stderr and "Traceback" not in refused.stderr
    assert not settings.workdir.exists()
    allowed = cli("restore", "--config", str(config), "--input", str(unsigned), "--allow-unsigned")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "signature was NOT checked (--allow-unsigned)" in allowed.stdout


def test_a_signed_backup_without_the_key_needs_allow_unsigned(source, tmp_path) -> None:  # noqa
    _, _, backup = source
    settings = make_settings(tmp_path / "restored")  # no integrity.backup_key
    with pytest.raises(BackupInvalid, match="no integrity.backup_key is configured to check"):
        restore_backup(settings, backup)
    assert not settings.workdir.exists()
    assert restore_backup(settings, backup, allow_unsigned=True).signed is False


def test_another_key_is_refused_even_with_allow_unsigned(source, tmp_path) -> None:  # noqa
    _, _, backup = source
    settings = keyed_target(tmp_path, key=b"k" * 64)
    for allow in (False, True):
        with pytest.raises(BackupInvalid, match="does not match its signature"):
            restore_backup(settings, backup, allow_unsigned=allow)
    assert not settings.workdir.exists()


def test_a_signed_backup_restores_with_its_key(source, tmp_path) -> None:  # noqa: F811
    _, _, backup = source
    settings = keyed_target(tmp_path)
    result = restore_backup(settings, backup)
    assert result.signed and "mlflow_store" in result.parts
    reports = settings.under_workdir(settings.monitoring.reports_dir)
    assert (reports / "latest.json").read_text() == '{"verdict": "ok"}\n'


def test_a_configured_key_that_cannot_be_read_stops_the_backup(tmp_path) -> None:
    settings, config = small_store(tmp_path / "work")
    done = cli(
        "backup",
        "--config",
        str(config),
        "--output",
        str(tmp_path / "bk"),
        env={"FRAUDFLOW_TEST_BACKUP_KEY": "too short"},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "integrity.backup_key environment variable FRAUDFLOW_TEST_BACKUP_KEY holds 9 bytes" in (
        done.stderr
    )
    assert not (tmp_path / "bk").exists() or not any((tmp_path / "bk").iterdir())


def test_links_planted_in_the_live_data_are_not_followed_and_the_backup_says_so(tmp_path):
    settings, config = small_store(tmp_path / "work")
    secret = outside(tmp_path)
    reports = settings.under_workdir(settings.monitoring.reports_dir)
    (reports / "x").symlink_to("/proc/self/environ")  # the job's own secrets
    (reports / "folder").symlink_to(secret.parent, target_is_directory=True)
    os.mkfifo(reports / "pipe")  # a naive copy would block on it for ever
    (settings.artifact_root / "planted").symlink_to(secret)
    (log_folder(settings) / "predictions-1999-01-01.jsonl").symlink_to(secret)
    done = cli("backup", "--config", str(config), "--output", str(tmp_path / "bk"))
    assert done.returncode == 0, done.stdout + done.stderr
    backup = tmp_path / "bk" / "backup-000001"
    shown = {
        "reports/x": "symlink",
        "reports/folder": "symlink",
        "reports/pipe": "named pipe",
        "artifacts/planted": "symlink",
    }
    for path, what in shown.items():
        assert f"not backed up: {path} is a {what} (never followed)" in done.stdout
    manifest = json.loads((backup / MANIFEST).read_text())
    skipped = {entry["path"] for entry in manifest["skipped"]}
    assert skipped == set(shown) | {"prediction_log/predictions-1999-01-01.jsonl"}
    key = BACKUP_KEY["FRAUDFLOW_TEST_BACKUP_KEY"]
    for path in backup.rglob("*"):
        assert not path.is_symlink()
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data and key.encode() not in data, path
    assert (backup / "reports" / "latest.json").is_file()  # the rest is backed up


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "a/../b", "..", "a//b", "./a", "a/.", "a\\b", "", "a\x00b", 7, None],
)
def test_a_manifest_path_must_be_plain_and_relative(path) -> None:
    with pytest.raises(BackupInvalid):
        check_path(path)


def test_a_plain_relative_path_passes() -> None:
    assert check_path("artifacts/1/abc/model/MLmodel") == "artifacts/1/abc/model/MLmodel"
