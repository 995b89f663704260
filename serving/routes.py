"""HTTP routes: they validate, call the predictor or the state, and format. Errors are JSON."""

from __future__ import annotations

import hmac
import json
import math
import os
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from pipelines import prediction_log
from serving.openapi import openapi_document
from serving.schemas import LabelIn, TransactionIn
from serving.service import service

api = Blueprint("api", __name__)
PROTECTED = {"api.predict", "api.feedback", "api.invocations"}


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
    return jsonify({"error": error.description or error.name}), error.code or 500


@api.app_errorhandler(Exception)
def _server_error(error: Exception) -> tuple[Response, int]:
    current_app.logger.exception("unhandled error")
    return jsonify({"error": f"internal error: {type(error).__name__}"}), 500


@api.before_app_request
def _authenticate() -> None:
    tokens = service().settings.serving.auth_tokens
    if not tokens or request.endpoint not in PROTECTED:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
    matches = [hmac.compare_digest(presented.encode(), t.encode()) for t in tokens]
    if not any(matches):
        raise ApiError(401, "invalid bearer token")


def _json_body() -> Any:
    if request.mimetype != "application/json":
        raise ApiError(415, f"content type must be application/json, not {request.mimetype!r}")
    raw = request.get_data(cache=False)
    if not raw:
        raise ApiError(400, "the request body is empty; send a JSON document")
    try:
        return json.loads(raw)
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
        if holder.status.reload_failures:
            raise ApiError(
                503,
                f"no model to serve: the version at {holder.target_uri} failed to load; the "
                "server log and the metric fraudflow_model_reload_failures_total say why",
            )
        raise ApiError(
            503,
            f"no model to serve: nothing is at {holder.target_uri} in the registry yet; train "
            "one and promote it (fraudflow promote --version N --stage Production)",
        )
    return model


@api.post("/predict")
def predict() -> Response:
    started = time.perf_counter()
    svc = service()
    body = _json_body()
    items, as_list = _items(body, svc.settings.serving.max_batch)
    transactions = _validate(TransactionIn, items, as_list)
    model = _model_or_503()
    predictions = svc.predictor.predict(transactions, model)
    latency_ms = (time.perf_counter() - started) * 1000
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    records = []
    for tx, prediction in zip(transactions, predictions):
        svc.metrics.scored(
            prediction.decision, prediction.fraud_probability, prediction.lookup_seconds
        )
        records.append(
            prediction_log.record(
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
                model_name=model.name,
                model_version=model.version,
                latency_ms=latency_ms,
                resent=prediction.already_seen,
            )
        )
    try:
        svc.log.write(records)
    except prediction_log.PredictionLogError as exc:
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


def _feature_matrix(body: Any, features: tuple[str, ...], limit: int) -> np.ndarray:
    """MLflow's scoring protocol (dataframe_split, dataframe_records, inputs/instances)."""
    if not isinstance(body, dict):
        raise ApiError(
            422, "expected a JSON object with dataframe_split, dataframe_records or inputs"
        )
    keys = [k for k in ("dataframe_split", "dataframe_records", "inputs", "instances") if k in body]
    if len(keys) != 1:
        raise ApiError(
            422, "give exactly one of dataframe_split, dataframe_records, inputs, instances"
        )
    payload = body[keys[0]]
    if keys[0] == "dataframe_split":
        if not isinstance(payload, dict) or "data" not in payload or "columns" not in payload:
            raise ApiError(422, "dataframe_split needs 'columns' and 'data'")
        columns, rows = payload["columns"], payload["data"]
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise ApiError(422, "dataframe_split.data must be a list of rows")
        records = [dict(zip(columns, row)) for row in rows]
    elif isinstance(payload, dict):  # columnar inputs: {"col": [values]}
        lengths = {len(v) if isinstance(v, list) else -1 for v in payload.values()}
        if len(lengths) != 1 or -1 in lengths:
            raise ApiError(422, f"{keys[0]} columns must be lists of equal length")
        count = lengths.pop()
        records = [{k: v[i] for k, v in payload.items()} for i in range(count)]
    elif isinstance(payload, list) and all(isinstance(r, list) for r in payload):
        records = [
            dict(zip(features, row)) if len(row) == len(features) else None for row in payload
        ]
        if any(r is None for r in records):
            raise ApiError(422, f"each row must hold {len(features)} values in feature order")
    elif isinstance(payload, list) and all(isinstance(r, dict) for r in payload):
        records = payload
    else:
        raise ApiError(422, f"{keys[0]} must be records, rows or columns")
    if not records:
        raise ApiError(422, "no rows to score")
    if len(records) > limit:
        raise ApiError(413, f"batch of {len(records)} exceeds the limit of {limit}")
    matrix = np.empty((len(records), len(features)))
    for i, record in enumerate(records):
        for j, name in enumerate(features):
            if name not in record:
                raise ApiError(
                    422,
                    f"missing feature column {name!r}",
                    [{"field": name, "message": "required"}],
                )
            value = record[name]
            if value is None:
                value = math.nan
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ApiError(
                    422,
                    f"feature {name!r} must be a number",
                    [{"field": name, "message": "not a number"}],
                )
            elif math.isinf(value):
                raise ApiError(
                    422, f"feature {name!r} is infinite", [{"field": name, "message": "infinite"}]
                )
            matrix[i, j] = value
    return matrix


@api.post("/invocations")
def invocations() -> Response:
    svc = service()
    body = _json_body()
    model = _model_or_503()
    matrix = _feature_matrix(body, model.scorer.features, svc.settings.serving.max_batch)
    return jsonify({"predictions": model.scorer.predict_rows(matrix).tolist()})


@api.get("/health")
def health() -> Response:
    holder = service().holder
    status = holder.status
    return jsonify(
        {
            "status": "ok",
            "registry": "ok" if status.reachable else "unreachable",
            "model_loaded": holder.model is not None,
            "model_version": holder.model.version if holder.model else None,
        }
    )


@api.get("/ready")
def ready() -> tuple[Response, int]:
    holder = service().holder
    if holder.model is None:
        return jsonify({"ready": False, "reason": f"no model loaded from {holder.target_uri}"}), 503
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
        }
    )


@api.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document(service().settings))
