"""gunicorn settings for `gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()'`.

Read by the gunicorn master before it forks: settings come from conf/default.yaml,
$FRAUDFLOW_CONFIG and the environment; gunicorn's own command-line flags still win.
"""

import multiprocessing
import os
import shutil
import subprocess
import sys

from pipelines.settings import CONFIG_ENV, load_settings

_settings = load_settings(os.environ.get(CONFIG_ENV) or None)
_serving = _settings.serving

# LightGBM's OpenMP threads spin on small machines and starve the workers: one thread each.
os.environ["OMP_NUM_THREADS"] = "1"
# A registry outage must be noticed in seconds, not after MLflow's minutes of retries; the
# poller simply tries again at its next interval.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
_metrics_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", str(_settings.under_workdir(_serving.metrics_dir).resolve())
)

bind = os.environ.get("FRAUDFLOW_BIND", f"{_serving.host}:{_serving.port}")
workers = _serving.workers
worker_class = "sync"
threads = 1
timeout = _serving.timeout_s
graceful_timeout = 10
keepalive = 5
# gunicorn's control socket would go to $HOME (a data volume in containers), shared by every
# server of the user; nothing here uses it
control_socket_disable = True
accesslog = None
errorlog = "-"
loglevel = "info"


def on_starting(server):
    """Before anything listens: an API without tokens (or without its metrics token) on an
    address other hosts can reach is refused (the master exits with 1 and says why), and the
    workers are told the addresses bound, which they check again when they build their app.

    A fresh multiprocess directory: files of earlier runs would be summed in. The embedded
    SQLite store is created here, once: workers creating it together race on its schema.

    The serving stack (Flask, MLflow, LightGBM, pandas) is imported here, once, so that every
    worker starts from the master's copy of it: workers that imported it themselves spent more
    CPU on each /predict (see benchmarks/README.md, "The restructure").
    Importing opens no connection and builds no app; each worker still builds its own."""
    from serving.auth import LISTEN_ENV, load_credentials, require_tokens_when_exposed

    addresses = list(server.cfg.bind)
    credentials = load_credentials(_serving)
    require_tokens_when_exposed(credentials, addresses, _serving.allow_anonymous)
    os.environ[LISTEN_ENV] = ",".join(addresses)
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)
    import serving.app  # noqa: F401

    if _settings.tracking_uri.startswith("sqlite:"):
        _create_store_in_a_child()
    _probe_served_model_in_a_child()
    if _settings.registry_sync.with_api:
        _start_registry_sync(server)


_registry_sync = None


def _start_registry_sync(server):
    """The registry sync beside the API (`registry_sync.with_api`, the embedded default): after
    a promotion in the MLflow UI it brings the other marker into line (README, "Promote from
    the MLflow UI"). Its own process, which stops when this master is gone."""
    global _registry_sync
    command = [sys.executable, "-m", "fraudflow.cli", "registry-sync", "--parent", str(os.getpid())]
    _registry_sync = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    server.log.info("registry sync started (pid %s)", _registry_sync.pid)


def on_exit(server):
    """Stop the registry sync this master started."""
    if _registry_sync is not None and _registry_sync.poll() is None:
        _registry_sync.terminate()
        try:
            _registry_sync.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _registry_sync.kill()


def _create_store_in_a_child():
    """Create the embedded store in a short-lived child process: an SQLite connection must not
    cross fork() (sqlite.org/howtocorrupt.html, 2.6), and MLflow keeps its connections open for
    the life of a process, so the master itself never opens one for its workers to inherit."""
    child = multiprocessing.get_context("fork").Process(
        target=_create_store, args=(_settings,), name="create-store"
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"creating the MLflow store failed (exit code {child.exitcode})")


def _create_store(settings):
    from pipelines.mlflow.store import client as tracking_client

    client = tracking_client(settings)
    client.search_experiments(max_results=1)
    client.search_registered_models(max_results=1)


def _probe_served_model_in_a_child():
    """Load the version in service once, as a worker would, in a short-lived child of the
    master: the model probe (a grandchild that loads and scores the files) then runs here,
    outside gunicorn's worker timeout, and leaves its verdict and the files in the model cache,
    so that booting workers find them and parse a model that already survived. Any failure is
    left for the workers to report: they load the same version and say why."""
    child = multiprocessing.get_context("fork").Process(
        target=_probe_served_model, args=(_settings,), name="probe-model"
    )
    child.start()
    child.join()


def _probe_served_model(settings):
    from serving.model_holder import ChallengerHolder, ModelHolder

    try:
        ModelHolder(settings).refresh()
        if settings.serving.challenger.mode != "off":
            ChallengerHolder(settings).refresh()
    finally:
        os._exit(0)  # no teardown of MLflow's or LightGBM's threads in a forked child


def child_exit(server, worker):
    from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)
