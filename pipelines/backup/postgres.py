"""A PostgreSQL MLflow backend store: dumped with `pg_dump -Fc` (a consistent snapshot, taken
while the tracking server runs) and restored with `pg_restore` into an empty database."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PostgresError(RuntimeError):
    """pg_dump, pg_restore or psql failed; the message carries their error."""


def libpq_uri(uri: str) -> str:
    """The URI as libpq reads it: SQLAlchemy's driver suffix (postgresql+psycopg2) dropped."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(scheme="postgresql"))


def _passwordless(uri: str) -> tuple[str, dict[str, str]]:
    """The libpq URI without its password, and the environment that carries it (PGPASSWORD): on
    the command line of pg_dump, psql or pg_restore it would be readable in /proc/*/cmdline."""
    parts = urlsplit(libpq_uri(uri))
    env = dict(os.environ)
    if parts.password is None:
        return urlunsplit(parts), env
    env["PGPASSWORD"] = unquote(parts.password)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}@{hostport}")), env


def without_password(uri: str) -> str:
    """The URI for a manifest or a message: user, host, port and database, no password."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _tool(name: str) -> str:
    found = shutil.which(name) or (str(PG_BIN / name) if (PG_BIN / name).exists() else None)
    if not found:
        raise PostgresError(f"{name} not found: run scripts/install-system-deps.sh")
    return found


def _run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise PostgresError(f"{Path(command[0]).name} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def dump(uri: str, target: Path) -> Path:
    """`pg_dump -Fc` of the database to `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    database, env = _passwordless(uri)
    _run([_tool("pg_dump"), "-Fc", "--no-owner", "--no-acl", "-f", str(target), database], env)
    return target


def _query(uri: str, sql: str) -> str:
    database, env = _passwordless(uri)
    return _run(
        [_tool("psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, database], env
    ).strip()


def table_count(uri: str) -> int:
    """Tables in the database's public schema (0: an empty database)."""
    return int(
        _query(
            uri, "SELECT count(*) FROM information_schema.tables " "WHERE table_schema = 'public'"
        )
    )


def other_sessions(uri: str) -> int:
    """Sessions connected to the database besides this check's own (a live server's pool)."""
    return int(
        _query(
            uri,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = "
            "current_database() AND pid <> pg_backend_pid()",
        )
    )


def restore(uri: str, source: Path, clean: bool) -> None:
    """`pg_restore` of a dump into the database, in one transaction (all or nothing); `clean`
    drops the objects the dump holds first (restore --force onto a non-empty database)."""
    database, env = _passwordless(uri)
    command = [
        _tool("pg_restore"),
        "--no-owner",
        "--no-acl",
        "--single-transaction",
        "--exit-on-error",
        "-d",
        database,
    ]
    if clean:
        command += ["--clean", "--if-exists"]
    _run(command + [str(source)], env)
