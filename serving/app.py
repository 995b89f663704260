"""Flask application factory: `gunicorn 'serving.app:create_app()'`. Nothing is built at import."""

from __future__ import annotations

import os
from dataclasses import dataclass

from flask import Flask, current_app

from pipelines.settings import Settings, load_settings
from pipelines.tracking import configure_tracking
from serving.metrics import ServiceMetrics, create_metrics
from serving.model_holder import ModelHolder
from serving.prediction_log import PredictionLog
from serving.predictor import Predictor
from serving.state import SqliteOnlineState
from serving.warm import open_state

CONFIG_ENV = "FRAUDFLOW_CONFIG"


@dataclass
class Service:
    """Everything a request handler needs, built once per app (per worker)."""

    settings: Settings
    holder: ModelHolder
    state: SqliteOnlineState
    predictor: Predictor
    log: PredictionLog
    metrics: ServiceMetrics


def service() -> Service:
    return current_app.extensions["fraudflow"]


def create_app(settings: Settings | None = None, start_polling: bool = True) -> Flask:
    """Build the API on the model the registry marks for service (stage or alias).

    Settings default to conf/default.yaml + $FRAUDFLOW_CONFIG + the environment.
    """
    from serving.routes import api

    settings = settings or load_settings(os.environ.get(CONFIG_ENV) or None)
    configure_tracking(settings)
    app = Flask(__name__)
    app.json.sort_keys = False
    state = open_state(settings)
    metrics = create_metrics(app, settings.monitor_latest)
    holder = ModelHolder(settings)
    holder.add_listener(metrics.on_model_event)
    app.extensions["fraudflow"] = Service(
        settings=settings,
        holder=holder,
        state=state,
        predictor=Predictor(settings, state),
        log=PredictionLog(settings.under_workdir(settings.serving.prediction_log_dir)),
        metrics=metrics,
    )
    app.register_blueprint(api)
    if start_polling:
        holder.start()
    else:
        holder.refresh()
    return app
