"""gunicorn settings for `gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()'`.

Read by the gunicorn master before it forks: settings come from conf/default.yaml,
$FRAUDFLOW_CONFIG and the environment; gunicorn's own command-line flags still win.
"""

import os
import shutil

from pipelines.settings import load_settings

_settings = load_settings(os.environ.get("FRAUDFLOW_CONFIG") or None)
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
accesslog = None
errorlog = "-"
loglevel = "info"


def on_starting(server):
    """A fresh multiprocess directory: files of earlier runs would be summed in. The embedded
    SQLite store is created here, once: workers creating it together race on its schema."""
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)
    if _settings.tracking_uri.startswith("sqlite:"):
        from pipelines.tracking import client as tracking_client

        client = tracking_client(_settings)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
        _close_sqlite_connections()


def _close_sqlite_connections():
    """An SQLite connection must not cross fork() (sqlite.org/howtocorrupt.html, 2.6): MLflow
    keeps one engine per database URI per process, so every worker would otherwise go on
    using the connections the master opened above. Closed here, each process opens its own."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

    for store in (TrackingStore, RegistryStore):
        for engine in store._engine_map.values():
            engine.dispose()


def child_exit(server, worker):
    from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)
