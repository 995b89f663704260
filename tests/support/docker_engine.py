"""A Docker engine for the container tests, and the local base image they build on.

No registry serves base images here, so the tests build their own: a Debian 12 (bookworm)
minbase with Python 3.11 made by debootstrap and imported into the engine, which the
Dockerfile takes as its PYTHON_IMAGE build argument.

The engine: an engine that already answers (DOCKER_HOST, or the default socket) is used as it
is; otherwise a private `dockerd --iptables=false --bridge=none` is started with its own data
root, exec root and socket under CACHE (overlay2 first, vfs when overlay2 cannot start). One
such dockerd per machine: every session (and every pytest-xdist worker) that wants it takes a
shared lock on CACHE/engine.users, the first starts it under CACHE/engine.lock, the others use
it, and the last one whose `stop()` finds no other user stops it. Its data root lives on
between runs, so the base image and the build cache are built once per machine. The engine
and debootstrap are Debian packages (`docker.io`, `debootstrap`) that
scripts/install-system-deps.sh installs when absent.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.support import REPO

CACHE = Path(os.environ.get("FRAUDFLOW_DOCKER_CACHE", Path.home() / ".cache" / "fraudflow-docker"))
BASE_IMAGE = "fraudflow-base:bookworm-py311"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SOCKET = Path("/var/run/docker.sock")
PACKAGED_CLIENT = "/usr/bin/docker"
STORAGE_DRIVERS = ("overlay2", "vfs")


class EngineError(RuntimeError):
    """Docker cannot run here: the message says what is missing or what failed."""


@dataclass
class Engine:
    """A Docker engine the tests talk to through `docker` with DOCKER_HOST = `host`."""

    host: str
    storage_driver: str
    process: subprocess.Popen | None = None
    log: Path | None = None
    started: bool = field(default=False)
    # our shared lock on CACHE/engine.users while we use the private engine (None: not private)
    users: IO[str] | None = field(default=None, repr=False)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DOCKER_HOST"] = self.host
        env.pop("DOCKER_CONTEXT", None)
        return env

    def run(
        self, *args: str, check: bool = True, timeout: float = 600, input: bytes | None = None
    ) -> subprocess.CompletedProcess:
        """`docker ARGS` against this engine; output captured as text (bytes with `input`)."""
        result = subprocess.run(
            [docker_client(), *args],
            env=self.env,
            capture_output=True,
            timeout=timeout,
            input=input,
            text=input is None,
        )
        if check and result.returncode != 0:
            raise EngineError(
                f"docker {' '.join(args[:3])}... failed ({result.returncode}): "
                f"{_text(result.stderr)[-3000:]}"
            )
        return result

    def build(
        self, context: Path, tag: str, build_args: dict[str, str], timeout: float = 3600
    ) -> None:
        """`docker build --network host` with BuildKit (the engine's own: stages the target
        does not need, such as the Dockerfile's pinned-base stage, are skipped, so nothing is
        pulled); its output goes to CACHE/build-TAG.log."""
        args = [
            arg for key, value in build_args.items() for arg in ("--build-arg", f"{key}={value}")
        ]
        log = CACHE / f"build-{tag.replace('/', '-').replace(':', '-')}.log"
        with open(log, "wb") as out:
            result = subprocess.run(
                [docker_client(), "build", "--network", "host", "--progress", "plain", *args]
                + ["--tag", tag, str(context)],
                env={**self.env, "DOCKER_BUILDKIT": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        if result.returncode != 0:
            raise EngineError(
                f"docker build failed ({result.returncode}): {log.read_text()[-4000:]}"
            )

    def has_image(self, name: str) -> bool:
        return self.run("image", "inspect", name, check=False, timeout=60).returncode == 0

    def stop(self) -> None:
        """Let go of the private engine; the last of its users stops it (and the containers it
        still runs). An engine that was already running elsewhere is left alone."""
        if self.users is None:
            return
        self.users.close()  # our shared lock goes with it
        self.users = None
        with _lock(CACHE / "engine.lock"), open(CACHE / "engine.users", "a") as users:
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another session or worker still uses it
            _stop_dockerd(self.process)


def _stop_dockerd(process: subprocess.Popen | None) -> None:
    """SIGTERM to the private dockerd (ours, or the one its pid file names), SIGKILL after 60 s."""
    if process is not None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
    else:
        try:
            pid = int((CACHE / "dockerd.pid").read_text().strip())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            pid = 0
        deadline = time.monotonic() + 60
        while pid and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.5)
        else:
            if pid:
                os.kill(pid, signal.SIGKILL)
    _unmount_under(CACHE / "exec")


def _unmount_under(folder: Path) -> None:
    """Unmount what a stopped dockerd left mounted under `folder` (its default network
    namespace, `exec/netns/default`, stays bound after a clean stop)."""
    prefix = f"{folder}/"
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", point], capture_output=True, timeout=30)


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""


def docker_client() -> str:
    """The docker.io package's client (it matches the engine and builds with the engine's
    BuildKit without a buildx plugin), else the `docker` on PATH."""
    if Path(PACKAGED_CLIENT).is_file():
        return PACKAGED_CLIENT
    client = shutil.which("docker")
    if client is None:
        raise EngineError("no `docker` client (Debian package docker.io)")
    return client


def install_engine() -> None:
    """Install the engine and debootstrap (scripts/install-system-deps.sh) when absent."""
    if shutil.which("dockerd") and shutil.which("debootstrap"):
        return
    script = REPO / "scripts" / "install-system-deps.sh"
    result = subprocess.run([str(script)], capture_output=True, text=True, timeout=1800)
    if result.returncode != 0 or not shutil.which("dockerd") or not shutil.which("debootstrap"):
        raise EngineError(
            "cannot install the Docker engine (docker.io) and debootstrap with "
            f"{script}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
        )


def _answers(host: str) -> bool:
    try:
        result = subprocess.run(
            [docker_client(), "version", "--format", "{{.Server.Version}}"],
            env={**os.environ, "DOCKER_HOST": host},
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def _driver(host: str) -> str:
    result = subprocess.run(
        [docker_client(), "info", "--format", "{{.Driver}}"],
        env={**os.environ, "DOCKER_HOST": host},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stdout.strip()


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """One session at a time starts the engine or builds the base on this machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _start_dockerd(driver: str, timeout: float) -> Engine | None:
    """A private dockerd with `driver`; None when it exits or does not answer in `timeout`."""
    socket = CACHE / "docker.sock"
    host = f"unix://{socket}"
    log = CACHE / f"dockerd-{driver}.log"
    command = [
        shutil.which("dockerd") or "dockerd",
        "--iptables=false",
        "--ip-masq=false",
        "--bridge=none",
        f"--storage-driver={driver}",
        f"--data-root={CACHE / 'data'}",
        f"--exec-root={CACHE / 'exec'}",
        f"--pidfile={CACHE / 'dockerd.pid'}",
        f"--host={host}",
    ]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None
        if _answers(host):
            return Engine(host, driver, process, log, started=True)
        time.sleep(0.5)
    process.kill()
    process.wait(10)
    return None


def ensure_engine(timeout: float = 120.0) -> Engine:
    """An engine that answers: one already running, else a private dockerd started here."""
    for host in (os.environ.get("DOCKER_HOST"), f"unix://{DEFAULT_SOCKET}"):
        if host and _answers(host):
            return Engine(host, _driver(host))
    install_engine()
    with _lock(CACHE / "engine.lock"):
        users = open(CACHE / "engine.users", "a")
        fcntl.flock(users, fcntl.LOCK_SH)  # held until stop(): the engine stays up for us
        own = f"unix://{CACHE / 'docker.sock'}"
        if _answers(own):  # another session's or worker's engine on the same cache: share it
            return Engine(own, _driver(own), users=users)
        tried = []
        for driver in STORAGE_DRIVERS:
            engine = _start_dockerd(driver, timeout)
            if engine is not None:
                engine.users = users
                return engine
            tried.append(f"{driver} (log: {CACHE / f'dockerd-{driver}.log'})")
        users.close()
    raise EngineError(f"dockerd did not start with any storage driver: {', '.join(tried)}")


def ensure_base_image(engine: Engine, name: str = BASE_IMAGE) -> str:
    """The local Debian 12 + Python 3.11 base image `name`, built once (debootstrap minbase,
    the host's CA bundle copied in so pip trusts the package registry as the host does)."""
    if engine.has_image(name):
        return name
    with _lock(CACHE / "base.lock"):
        if engine.has_image(name):
            return name
        root = CACHE / "rootfs"
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)
        try:
            result = subprocess.run(
                [
                    shutil.which("debootstrap") or "debootstrap",
                    "--variant=minbase",
                    f"--include={BASE_PACKAGES}",
                    DEBIAN_SUITE,
                    str(root),
                ],
                capture_output=True,
                text=True,
                timeout=1800,
            )
            if result.returncode != 0:
                raise EngineError(
                    f"debootstrap failed: {result.stdout[-2000:]}{result.stderr[-2000:]}"
                )
            if HOST_CA_BUNDLE.is_file():
                target = root / "etc" / "ssl" / "certs" / "ca-certificates.crt"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(HOST_CA_BUNDLE, target)
            shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
            tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run(
                [docker_client(), "import", "-c", f"ENV PATH={BASE_PATH}", "-", name],
                env=engine.env,
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                timeout=1800,
            )
            tar.wait(60)
            if imported.returncode != 0:
                raise EngineError(f"docker import of the base failed: {imported.stderr[-2000:]}")
        finally:
            _unmount_under(root)  # a debootstrap that failed half-way leaves /proc mounted
            shutil.rmtree(root, ignore_errors=True)
    return name
