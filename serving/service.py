"""What a request handler needs, built once per app (per gunicorn worker)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from pipelines.log.writer import PredictionLogWriter
from pipelines.settings import Settings
from pipelines.state.protocol import OnlineState
from serving.auth import Credentials
from serving.metrics import ServiceMetrics
from serving.model_holder import ModelHolder
from serving.predictor import Predictor

EXTENSION = "fraudflow"


@dataclass
class Service:
    settings: Settings
    holder: ModelHolder
    state: OnlineState
    predictor: Predictor
    log: PredictionLogWriter
    metrics: ServiceMetrics
    credentials: Credentials


def service() -> Service:
    """The service of the app handling the current request."""
    return current_app.extensions[EXTENSION]
