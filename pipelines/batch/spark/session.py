"""A Spark session for fraudflow's jobs: UTC timestamps, quiet logs, stopped when done.

The master is checked before the JVM starts where that can be done cheaply (a `spark://` URL
must accept a TCP connection), so an unreachable cluster is a clear error naming it instead of
a job that retries for minutes; any other failure to start names the master too.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

DEFAULT_MASTER = "local[*]"
CONNECT_TIMEOUT_S = 10.0


class SparkUnavailable(RuntimeError):
    """The Spark master cannot be reached or the session cannot start."""


def check_master(master: str) -> None:
    """Raise SparkUnavailable unless `master` looks usable: every host of a `spark://` URL must
    accept a connection; other schemes (local, yarn, k8s://) are left to Spark to judge."""
    if not master or not master.strip():
        raise SparkUnavailable("the Spark master URL is empty")
    if not master.startswith("spark://"):
        return
    hosts = master.removeprefix("spark://").split(",")
    for host_port in hosts:
        host, sep, port = host_port.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise SparkUnavailable(f"Spark master {master!r}: {host_port!r} is not host:port")
        try:
            with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
                pass
        except OSError as exc:
            raise SparkUnavailable(f"Spark master {master} cannot be reached: {exc}") from exc


def _is_local(master: str) -> bool:
    return master == "local" or master.startswith("local[") or master.startswith("local-cluster")


@contextmanager
def spark_session(
    master: str = DEFAULT_MASTER,
    app_name: str = "fraudflow",
    config: Mapping[str, str] | None = None,
) -> Iterator[SparkSession]:
    """A new Spark session on `master`, stopped (and its JVM with it) when the block ends.

    Timestamps are read and written in UTC, as the rest of fraudflow does; non-ANSI casts turn
    unparsable values into nulls that the input checks report. On a local master, the Python
    workers run this interpreter. Other Spark settings come from `config` or Spark's own
    configuration (SPARK_CONF_DIR/spark-defaults.conf).
    """
    check_master(master)
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.ansi.enabled", "false")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        # pandas writes nanosecond timestamps, which Spark reads only as longs (see read.py)
        .config("spark.sql.legacy.parquet.nanosAsLong", "true")
    )
    if _is_local(master):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
    for key, value in (config or {}).items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # py4j and pyspark raise many kinds here; all mean "no session"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SparkUnavailable(f"Spark master {master!r} could not be used: {first}") from exc
    session.sparkContext.setLogLevel("WARN")
    log.info("Spark %s session on %s", session.version, master)
    try:
        yield session
    finally:
        session.stop()
        stop_jvm()


def stop_jvm(timeout_s: float = 60.0) -> None:
    """End the JVM that pyspark started for this process (session.stop() leaves it running,
    holding its heap, until the process exits); a later session starts a new one."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    if gateway is None:
        return
    process = getattr(gateway, "proc", None)
    try:
        gateway.shutdown()
    except Exception as exc:  # a JVM that is already gone
        log.debug("the Spark gateway did not shut down cleanly: %s", exc)
    if process is not None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
    SparkContext._gateway = None
    SparkContext._jvm = None


class SparkJobFailed(ValueError):
    """A Spark job failed (an executor error, a file that broke mid-read); the message is
    Spark's first line, which names the file or the stage."""


@contextmanager
def spark_errors(what: str) -> Iterator[None]:
    """Turn Spark's and py4j's exceptions raised in the block into SparkJobFailed."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    try:
        yield
    except (PySparkException, Py4JError) as exc:
        text = str(exc).strip()
        lines = [line for line in text.splitlines() if line.strip()]
        summary = next((line for line in lines if "Exception" in line), lines[0] if lines else "")
        raise SparkJobFailed(f"{what} failed: {summary.strip()[:500]}") from exc
