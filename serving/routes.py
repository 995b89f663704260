"""HTTP routes: they validate, call the predictor or the state, and format. Errors are JSON."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from pipelines.log import record, writer
from pipelines.state.protocol import StateUnavailable
from serving.auth import METRICS_ENDPOINT, ROUTE_SCOPES, bearer
from serving.mlflow_payload import PayloadError, feature_matrix
from serving.openapi import openapi_document
from serving.schemas import MAX_JSON_DEPTH, LabelIn, TransactionIn, json_too_deep
from serving.service import service

api = Blueprint("api", __name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, details: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.status, self.message, self.details = status, message, details or []


@api.app_errorhandler(ApiError)
def _api_error(error: ApiError) -> tuple[Response, int]:
    body: dict[str, Any] = {"error": error.message}
    if error.details:
        body["details"] = error.details
    response = jsonify(body)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="fraudflow"'
    return response, error.status


@api.app_errorhandler(HTTPException)
def _http_error(error: HTTPException) -> tuple[Response, int]:
    """werkzeug's errors as JSON, with the headers they carry (a 405's `Allow`, RFC 9110)."""
    response = jsonify({"error": error.description or error.name})
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response, error.code or 500


@api.app_errorhandler(StateUnavailable)
def _state_unavailable(error: StateUnavailable) -> tuple[Response, int]:
    """The state's server is down or restarting: nothing was scored or stored, retry later."""
    response = jsonify({"error": str(error)})
    response.headers["Retry-After"] = "1"
    return response, 503


@api.app_errorhandler(Exception)
def _server_error(error: Exception) -> tuple[Response, int]:
    current_app.logger.exception("unhandled error")
    return jsonify({"error": f"internal error: {type(error).__name__}"}), 500


@api.before_app_request
def _authenticate() -> None:
    """Scoped bearer tokens on the scoring and labelling routes, the metrics secret on
    /metrics; the caller's name is kept for the access log."""
    credentials = service().credentials
    if request.endpoint == METRICS_ENDPOINT:
        if not credentials.metrics_allowed(bearer(request.headers.get("Authorization"))):
            raise ApiError(401, "/metrics needs 'Authorization: Bearer <metrics token>'")
        if credentials.metrics is not None:
            g.caller = "metrics"
        return
    scope = ROUTE_SCOPES.get(request.endpoint or "")
    if scope is None or credentials.anonymous:
        return
    presented = bearer(request.headers.get("Authorization"))
    if presented is None:
        raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
    caller = credentials.identify(presented)
    if caller is None:
        raise ApiError(401, "invalid bearer token")
    g.caller = caller.name
    if scope not in caller.scopes:
        raise ApiError(403, f"token {caller.name!r} lacks the scope {scope!r} this route needs")


def _json_body() -> Any:
    if request.mimetype != "application/json":
        raise ApiError(415, f"content type must be application/json, not {request.mimetype!r}")
    raw = request.get_data(cache=False)
    if not raw:
        raise ApiError(400, "the request body is empty; send a JSON document")
    depth = json_too_deep(raw)
    if depth is not None:
        raise ApiError(
            400,
            f"the request body nests arrays and objects {depth:,} levels deep; at most "
            f"{MAX_JSON_DEPTH} are accepted",
        )
    try:
        return json.loads(raw)
    except RecursionError:  # the depth check makes it unreachable; still a client's fault
        raise ApiError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from exc


def _items(body: Any, limit: int) -> tuple[list[Any], bool]:
    """One object or a list of them; returns the items and whether a list was sent."""
    if isinstance(body, dict):
        return [body], False
    if isinstance(body, list):
        if not body:
            raise ApiError(422, "the list is empty")
        if len(body) > limit:
            raise ApiError(413, f"batch of {len(body)} exceeds the limit of {limit}")
        return body, True
    raise ApiError(422, "the body must be a JSON object or a list of objects")


def _validate(model: type, items: list[Any], as_list: bool) -> list[Any]:
    parsed, details = [], []
    for index, item in enumerate(items):
        try:
            parsed.append(model.model_validate(item))
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "body"
                where = f"[{index}].{field}" if as_list else field
                details.append({"field": where, "message": err["msg"]})
    if details:
        fields = ", ".join(sorted({d["field"] for d in details}))
        raise ApiError(422, f"invalid request: {fields}", details)
    return parsed


def _model_or_503():
    holder = service().holder
    model = holder.model
    if model is None:
        if holder.status.failed_version is not None:
            raise ApiError(
                503,
                f"no model to serve: version {holder.status.failed_version} at "
                f"{holder.target_uri} failed to load: {holder.status.load_error} (fix or "
                "replace that version; fraudflow_model_reload_failures_total counts the tries)",
            )
        if not holder.status.reachable:
            raise ApiError(
                503,
                "no model to serve: the registry is unreachable and this replica has no usable "
                "cached model; it serves once the registry answers (the server log says why)",
            )
        raise ApiError(
            503,
            f"no model to serve: nothing is at {holder.target_uri} in the registry yet; train "
            "one and promote it (fraudflow promote --version N --stage Production)",
        )
    return model


def _explain() -> bool:
    """The `explain` query parameter of /predict: reasons for every transaction, approvals too."""
    if not request.query_string:  # the usual request: no query string to parse
        return False
    value = request.args.get("explain", "false")
    if value not in ("true", "false"):
        raise ApiError(
            400,
            f"query parameter 'explain' must be true or false, not {value[:50]!r}",
            [{"field": "explain", "message": "must be true or false"}],
        )
    return value == "true"


@api.post("/predict")
def predict() -> Response:
    started = time.perf_counter()
    svc = service()
    body = _json_body()
    items, as_list = _items(body, svc.settings.serving.max_batch)
    transactions = _validate(TransactionIn, items, as_list)
    explain = _explain()
    model = _model_or_503()
    challenger = svc.challenger_model(model)
    predictions = svc.predictor.predict(
        transactions, model, explain, challenger, svc.canary(challenger)
    )
    latency_ms = (time.perf_counter() - started) * 1000
    if challenger is not None:
        svc.count_canary(predictions, latency_ms)
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    records = []
    for tx, prediction in zip(transactions, predictions):
        svc.metrics.scored(
            prediction.decision,
            prediction.fraud_probability,
            prediction.lookup_seconds,
            prediction.model_role,
        )
        if prediction.challenger is not None:
            svc.metrics.shadowed(prediction)
        records.append(
            record.record(
                logged_at=now,
                transaction_id=tx.transaction_id,
                tx_datetime=tx.tx_datetime,
                customer_id=tx.customer_id,
                terminal_id=tx.terminal_id,
                tx_amount=tx.tx_amount,
                feature_names=model.scorer.features,
                feature_values=prediction.features.tolist(),
                fraud_probability=prediction.fraud_probability,
                decision=prediction.decision,
                model_name=prediction.model_name,
                model_version=prediction.model_version,
                latency_ms=latency_ms,
                resent=prediction.already_seen,
                model_role=prediction.model_role,
                champion=prediction.champion,
                challenger=prediction.challenger,
            )
        )
    try:
        svc.log.write(records)
    except writer.PredictionLogError as exc:
        current_app.logger.error("prediction log unavailable: %s", exc)
        reason = os.strerror(exc.errno) if exc.errno else "write failed"  # no path, no detail
        raise ApiError(503, f"prediction log unavailable: {reason}") from exc
    responses = [p.response() for p in predictions]
    return jsonify({"predictions": responses} if as_list else responses[0])


@api.post("/feedback")
def feedback() -> Response:
    svc = service()
    items, as_list = _items(_json_body(), svc.settings.serving.max_batch)
    labels = _validate(LabelIn, items, as_list)
    known = svc.state.add_labels(
        [(label.transaction_id, label.tx_fraud) for label in labels], int(time.time() * 1000)
    )
    for label in labels:
        svc.metrics.feedback.labels(label=str(label.tx_fraud)).inc()
    return jsonify({"received": len(labels), "known_transactions": known})


@api.post("/invocations")
def invocations() -> Response:
    svc = service()
    body = _json_body()
    model = _model_or_503()
    try:
        matrix = feature_matrix(body, model.scorer.features, svc.settings.serving.max_batch)
    except PayloadError as error:
        raise ApiError(error.status, error.message, error.details) from error
    return jsonify({"predictions": model.online.probabilities(matrix)})


@api.get("/health")
def health() -> tuple[Response, int]:
    """200 while this replica can serve or can still come to: a registry outage or no version
    in the registry yet is not this process's fault (/ready tells the load balancer). 503 when
    the registry serves a version that failed to load and nothing is served: a restart or a
    new version is needed, so the orchestrator must see it."""
    holder = service().holder
    status = holder.status
    failing = holder.failing
    body = {
        "status": "failing" if failing else "ok",
        "registry": "ok" if status.reachable else "unreachable",
        "model_loaded": holder.model is not None,
        "model_version": holder.model.version if holder.model else None,
        "model_source": holder.model.source if holder.model else None,
        # never a reason for 503: the champion answers whatever the challenger does
        "challenger": service().describe_challenger(holder.model),
    }
    if failing:
        body["failed_version"] = status.failed_version
        body["load_error"] = status.load_error
    return jsonify(body), 503 if failing else 200


@api.get("/ready")
def ready() -> tuple[Response, int]:
    holder = service().holder
    if holder.model is None:
        return jsonify({"ready": False, "reason": f"no model loaded from {holder.target_uri}"}), 503
    try:
        service().state.check()
    except StateUnavailable as exc:
        return jsonify({"ready": False, "reason": str(exc)}), 503
    return jsonify({"ready": True, "model_version": holder.model.version}), 200


@api.get("/model")
def model_info() -> Response:
    svc = service()
    model = _model_or_503()
    status = svc.holder.status
    return jsonify(
        {
            **model.describe(),
            "source": svc.holder.target_uri,
            "registry": "ok" if status.reachable else "unreachable",
            "reloads": status.reloads,
            "reload_failures": status.reload_failures,
            "failed_version": status.failed_version,
            "load_error": status.load_error,
            "markers": svc.holder.describe_markers(),
            "challenger": svc.describe_challenger(model),
        }
    )


@api.get("/openapi.json")
def openapi() -> Response:
    svc = service()
    return jsonify(openapi_document(svc.settings, svc.credentials))
