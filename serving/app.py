"""Flask application factory: `gunicorn 'serving.app:create_app()'`. Nothing is built at import."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from flask import Flask

from pipelines.log.record import log_folder
from pipelines.log.writer import PredictionLogWriter
from pipelines.settings import CONFIG_ENV, Settings, load_settings
from pipelines.state.factory import open_state
from serving import access_log
from serving.auth import listen_addresses, load_credentials, require_tokens_when_exposed
from serving.canary_guard import CanaryGuard
from serving.metrics import ServiceMetrics, create_metrics
from serving.model_holder import ChallengerHolder, ModelHolder, ServedModel
from serving.predictor import Predictor
from serving.routes import api
from serving.service import EXTENSION, Service
from serving.storage_metrics import StorageCollector


def create_app(
    settings: Settings | None = None,
    start_polling: bool = True,
    listen: Sequence[str] | None = None,
) -> Flask:
    """Build the API on the model the registry marks for service (stage or alias); the model
    is loaded before the app is returned, so a gunicorn worker that accepts requests already
    holds the model the registry served when it booted.

    Settings default to conf/default.yaml + $FRAUDFLOW_CONFIG + the environment. `listen`:
    the addresses the server binds (default: what gunicorn's master bound, else
    serving.host:port); without API tokens or without the metrics token, an address other
    hosts can reach is refused (AuthConfigError) unless serving.allow_anonymous is set.
    """
    settings = settings or load_settings(os.environ.get(CONFIG_ENV) or None)
    credentials = load_credentials(settings.serving)
    require_tokens_when_exposed(
        credentials,
        listen if listen is not None else listen_addresses(settings.serving, os.environ),
        settings.serving.allow_anonymous,
    )
    app = Flask(__name__)
    app.json.sort_keys = False
    app.config["MAX_CONTENT_LENGTH"] = settings.serving.max_body_bytes
    state = open_state(settings)
    storage = StorageCollector(log_folder(settings), state)
    metrics = create_metrics(app, settings.monitor_latest, storage)
    if settings.serving.access_log == "json":
        access_log.install(app)
    holder = ModelHolder(settings)
    holder.add_listener(metrics.on_model_event)
    challenger, guard = None, None
    if settings.serving.challenger.mode != "off":
        challenger = ChallengerHolder(settings)
        challenger.add_listener(metrics.on_challenger_event)
    if challenger is not None and settings.serving.challenger.mode == "canary":
        guard = CanaryGuard(settings.serving.challenger.rollback, state)
        guard.add_listener(metrics.on_canary_event)
        guard.add_listener(metrics.canary_share(settings.serving.challenger.canary_percent))
        challenger.add_listener(
            _watched_by(guard, metrics, settings.serving.challenger.canary_percent)
        )
    app.extensions[EXTENSION] = Service(
        settings=settings,
        holder=holder,
        state=state,
        predictor=Predictor(settings, state),
        log=PredictionLogWriter(log_folder(settings)),
        metrics=metrics,
        credentials=credentials,
        challenger=challenger,
        guard=guard,
    )
    app.register_blueprint(api)
    for each in (holder, challenger):
        if each is None:
            continue
        if start_polling:
            each.start()
        else:
            each.refresh()
    if guard is not None:
        if start_polling:
            guard.start()
        else:
            guard.check()
    return app


def _watched_by(
    guard: CanaryGuard, metrics: ServiceMetrics, percent: float
) -> Callable[[str, ServedModel | None], None]:
    """A challenger listener: the guard reads the ledger for each version loaded, so that its
    canary opens at the next check (or stays closed if it was stopped anywhere); until then
    this worker sends it no card."""

    def listener(event: str, model: ServedModel | None) -> None:
        if event in ("reload", "unloaded"):
            metrics.canary_percent.set(0.0)
        if event == "reload" and model is not None and guard.is_open(model.version):
            metrics.canary_percent.set(percent)  # open already: no new "open" event comes

    return listener
