"""What a request handler needs, built once per app (per gunicorn worker)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flask import current_app

from pipelines.log.writer import PredictionLogWriter
from pipelines.settings import Settings
from pipelines.state.protocol import OnlineState
from serving.auth import Credentials
from serving.canary import in_canary
from serving.canary_guard import CanaryGuard
from serving.metrics import ServiceMetrics
from serving.model_holder import ChallengerHolder, ModelHolder, ServedModel
from serving.predictor import Prediction, Predictor

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
    # the @challenger's holder; None with serving.challenger.mode off
    challenger: ChallengerHolder | None = None
    # stops the canary when the challenger leaves the band (serving.challenger.mode canary)
    guard: CanaryGuard | None = None

    def challenger_model(self, champion: ServedModel) -> ServedModel | None:
        """The challenger to score beside `champion` now: loaded, and another version."""
        if self.challenger is None:
            return None
        model = self.challenger.model
        if model is None or model.version == champion.version:
            return None
        return model

    def canary(self, challenger: ServedModel | None) -> Callable[[str], bool] | None:
        """Which cards the challenger decides for (canary mode, its canary not stopped)."""
        settings = self.settings.serving.challenger
        if challenger is None or settings.mode != "canary" or self.guard is None:
            return None
        if not self.guard.is_open(challenger.version):
            return None
        percent = settings.canary_percent
        return lambda customer_id: in_canary(customer_id, percent)

    def describe_challenger(self, champion: ServedModel | None) -> dict[str, object]:
        """The challenger's part of /model and /health: the mode, the version scored (if
        any), a load failure, and the canary's share."""
        settings = self.settings.serving.challenger
        body: dict[str, object] = {"mode": settings.mode}
        if self.challenger is None:
            return body
        status = self.challenger.status
        model = self.challenger.model
        scored = champion is not None and self.challenger_model(champion) is not None
        body.update(
            {
                "alias": self.settings.mlflow.challenger_alias,
                "version": model.version if model else None,
                "threshold": model.scorer.threshold if model else None,
                "loaded_at": model.loaded_at if model else None,
                # False while none is loaded, or the alias names the champion's version
                "scored": scored,
                "registry": "ok" if status.reachable else "unreachable",
                "failed_version": status.failed_version,
                "load_error": status.load_error,
            }
        )
        if settings.mode == "canary":
            body["canary_percent"] = settings.canary_percent
            if self.guard is not None and model is not None:
                body["canary"] = {
                    "open": scored and self.guard.is_open(model.version),
                    "stopped": self.guard.stop_record(model.version),
                }
        return body

    def count_canary(self, predictions: list[Prediction], latency_ms: float) -> None:
        """Tell the canary guard what each role decided in this request (canary mode)."""
        if self.guard is None or not predictions or predictions[0].challenger is None:
            return
        version = predictions[0].challenger.version
        tried = [p for p in predictions if p.model_role == "challenger" or p.challenger_failed]
        kept = [p for p in predictions if p.model_role == "champion" and not p.challenger_failed]
        for role, share in (("champion", kept), ("challenger", tried)):
            if share:
                self.guard.observe(
                    version,
                    role,
                    len(share),
                    sum(p.challenger_failed for p in share),
                    sum(p.decision == "decline" and p.model_role == role for p in share),
                    latency_ms,
                )


def service() -> Service:
    """The service of the app handling the current request."""
    return current_app.extensions[EXTENSION]
