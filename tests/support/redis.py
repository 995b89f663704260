"""A real Redis server for tests: Debian's `redis-server` on a loopback port, in a temp folder,
started and stopped (or killed, or restarted on the same port) by the test."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.support.processes import clean_env, free_port, poll_until, system_tool


class RedisServer:
    """One redis-server process; `start` again after `stop`/`kill` reuses port and folder."""

    def __init__(
        self,
        root: Path,
        appendonly: bool,
        host: str = "127.0.0.1",
        also_bind: tuple = (),
        password: str | None = None,
        appendfsync: str = "always",
    ) -> None:
        self.root, self.appendonly, self.host = root, appendonly, host
        self.appendfsync = appendfsync
        self.bind, self.password = [host, *also_bind], password
        self.port = free_port()
        self.url = self.url_on(host)
        self.binary = system_tool("redis-server")
        self.process: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)

    def url_on(self, address: str) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{address}:{self.port}/0"

    def start(self, timeout: float = 60.0) -> None:
        command = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            *self.bind,
            "--dir",
            str(self.root),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,  # always (the kill test: what Redis acknowledged is on disk)
            "--daemonize",
            "no",
        ]
        if self.password:  # protected mode refuses clients beyond loopback without one
            command += ["--requirepass", self.password]
        with open(self.root / "redis.log", "ab") as out:
            self.process = subprocess.Popen(
                command,
                env=clean_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)

        def answers() -> tuple[bool, object]:
            try:
                return bool(client.ping()), "PONG"
            except redis.RedisError as exc:  # refused, or still loading its AOF
                return False, exc

        try:
            poll_until(answers, f"redis-server on {self.url}", timeout, self.process)
        finally:
            client.close()

    def _signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(30)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)


@contextmanager
def redis_server(
    root: Path,
    appendonly: bool = False,
    host: str = "127.0.0.1",
    also_bind: tuple = (),
    password: str | None = None,
    appendfsync: str = "always",
) -> Iterator[RedisServer]:
    """A running redis-server (no snapshots; AOF when `appendonly`), stopped at the end."""
    server = RedisServer(root, appendonly, host, also_bind, password, appendfsync)
    server.start()
    try:
        yield server
    finally:
        server.kill()
