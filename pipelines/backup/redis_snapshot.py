"""The Redis online state: backed up as an RDB snapshot (`redis-cli --rdb`: Redis forks and
writes a point-in-time copy while it serves), restored by loading that snapshot into a private
redis-server and copying the state's keys (DUMP / RESTORE, time-to-live kept) into the target."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

import redis

BATCH = 500


class RedisBackupError(RuntimeError):
    """redis-cli or the private redis-server failed; the message carries why."""


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise RedisBackupError(f"{name} not found: install Debian's redis-tools / redis-server")
    return found


def database_index(url: str) -> int:
    parts = urlsplit(url)
    path = parts.path.strip("/")
    return int(path) if path.isdigit() else 0


def snapshot(url: str, target: Path) -> Path:
    """`redis-cli --rdb`: the server's own point-in-time snapshot, streamed to `target`. The
    password goes through the environment (REDISCLI_AUTH), never the command line."""
    parts = urlsplit(url)
    command = [_tool("redis-cli")]
    if parts.scheme == "unix":
        command += ["-s", parts.path]
    else:
        command += ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
        if parts.scheme == "rediss":
            command.append("--tls")
    if parts.username:
        command += ["--user", unquote(parts.username)]
    env = dict(os.environ)
    if parts.password:
        env["REDISCLI_AUTH"] = unquote(parts.password)
    target.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        command + ["--rdb", str(target)], capture_output=True, text=True, env=env, timeout=3600
    )
    if done.returncode != 0 or not target.is_file():
        raise RedisBackupError(f"redis-cli --rdb failed: {(done.stderr or done.stdout).strip()}")
    return target


def key_count(url: str, prefix: str) -> int:
    with redis.Redis.from_url(url) as client:
        return sum(1 for _ in client.scan_iter(match=f"{prefix}*", count=1000))


def delete_keys(url: str, prefix: str) -> int:
    """Delete the state's keys (restore --force onto a Redis that holds a state)."""
    deleted = 0
    with redis.Redis.from_url(url) as client:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= BATCH:
                deleted += client.delete(*batch)
                batch = []
        deleted += client.delete(*batch) if batch else 0
    return deleted


def other_clients(url: str) -> int:
    """Connections to the server besides this one (an API's pool): 0 when not allowed to ask."""
    with redis.Redis.from_url(url) as client:
        try:
            return len(client.client_list()) - 1
        except redis.exceptions.ResponseError:
            return 0


@contextmanager
def _private_server(rdb: Path, db: int) -> Iterator[redis.Redis]:
    """A redis-server of our own on a unix socket, loaded from a copy of `rdb` (a client of
    its database `db`)."""
    folder = Path(tempfile.mkdtemp(prefix="fraudflow-redis-restore-"))
    shutil.copyfile(rdb, folder / "dump.rdb")
    socket = folder / "redis.sock"
    command = [
        _tool("redis-server"),
        "--port",
        "0",
        "--unixsocket",
        str(socket),
        "--dir",
        str(folder),
        "--dbfilename",
        "dump.rdb",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(unix_socket_path=str(socket), db=db)
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RedisBackupError(f"redis-server could not load {rdb} ({process.returncode})")
            try:
                if client.ping():
                    break
            except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise RedisBackupError(f"redis-server did not load {rdb} in 120 s")
                time.sleep(0.1)
        yield client
        client.close()
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


def restore(url: str, rdb: Path, source_db: int, prefix: str) -> int:
    """Copy every `prefix` key of database `source_db` in the snapshot into the Redis at `url`
    (an existing key of the same name is replaced); returns the number of keys."""
    copied = 0
    with _private_server(rdb, source_db) as source, redis.Redis.from_url(url) as target:
        keys: list[bytes] = []
        for key in source.scan_iter(match=f"{prefix}*", count=1000):
            keys.append(key)
            if len(keys) >= BATCH:
                copied += _copy(source, target, keys)
                keys = []
        copied += _copy(source, target, keys)
    return copied


def _copy(source: redis.Redis, target: redis.Redis, keys: list[bytes]) -> int:
    if not keys:
        return 0
    read = source.pipeline(transaction=False)
    for key in keys:
        read.dump(key)
        read.pttl(key)
    answers = read.execute()
    write = target.pipeline(transaction=False)
    for key, data, ttl in zip(keys, answers[::2], answers[1::2]):
        if data is not None and ttl != -2:
            write.restore(key, max(ttl, 0), data, replace=True)
    write.execute()
    return len(keys)
