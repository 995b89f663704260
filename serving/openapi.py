"""The OpenAPI 3 document of the service, built from the same pydantic schemas it validates with."""

from __future__ import annotations

from typing import Any

from pipelines.features import feature_names
from pipelines.mlflow.markers import GESTURES as MARKER_GESTURES
from pipelines.settings import Settings
from serving.auth import LABEL, SCORE, Credentials
from serving.schemas import LARGEST_NUMBER, MAX_JSON_DEPTH, LabelIn, TransactionIn

NUMBER = {"type": "number"}
STRING = {"type": "string"}
# a feature value: a finite double, or null (missing)
FEATURE_VALUE = {"type": ["number", "null"], "minimum": -LARGEST_NUMBER, "maximum": LARGEST_NUMBER}

ERROR = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": STRING,
        "details": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "additionalProperties": False,
                "properties": {"field": STRING, "message": STRING},
            },
        },
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """A closed object: every property required except `optional`, no other property."""
    return {
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
        "properties": properties,
    }


NULLABLE_STRING = {"type": ["string", "null"]}
# the challenger's part of /health and /model (serving.challenger; only the mode when it is off)
CHALLENGER = _object(
    {
        "mode": {"enum": ["off", "shadow", "canary"]},
        "alias": STRING,
        "version": NULLABLE_STRING,
        "threshold": {"type": ["number", "null"]},
        "loaded_at": NULLABLE_STRING,
        "scored": {"type": "boolean"},
        "registry": {"enum": ["ok", "unreachable"]},
        "failed_version": NULLABLE_STRING,
        "load_error": NULLABLE_STRING,
        "canary_percent": {"type": "number", "minimum": 0, "maximum": 100},
        # canary mode: whether this worker sends cards to it now, and the stop record if the
        # canary guard stopped it
        "canary": _object({"open": {"type": "boolean"}, "stopped": {"type": ["object", "null"]}}),
    },
    optional=(
        "alias",
        "version",
        "threshold",
        "loaded_at",
        "scored",
        "registry",
        "failed_version",
        "load_error",
        "canary_percent",
        "canary",
    ),
)


def _batch(items: dict[str, Any], limit: int) -> dict[str, Any]:
    return {"type": "array", "items": items, "minItems": 1, "maxItems": limit}


def _one_or_many(name: str, limit: int) -> dict[str, Any]:
    return {"oneOf": [_ref(name), _batch(_ref(name), limit)]}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: f"body is not JSON, or nests arrays and objects deeper than {MAX_JSON_DEPTH} levels",
        401: "missing or invalid bearer token",
        403: "the token lacks the scope this route needs",
        413: "more items than serving.max_batch, or a body over serving.max_body_bytes",
        415: "content type is not application/json",
        422: "a field is missing, misspelt, of the wrong type or out of range",
        503: "no model loaded, or the online state is unavailable",
    }
    return {str(c): {"description": text[c], **_json(_ref("Error"))} for c in codes}


def _components(features: list[str], limit: int) -> dict[str, Any]:
    prediction = _object(
        {
            "transaction_id": STRING,
            "fraud_probability": {"type": "number", "minimum": 0, "maximum": 1},
            "decision": {"type": "string", "enum": ["approve", "review", "decline"]},
            "reasons": {
                "type": "array",
                "items": _object(
                    {"feature": STRING, "value": FEATURE_VALUE, "contribution": NUMBER}
                ),
            },
            "model": _object({"name": STRING, "version": STRING}),
        }
    )
    split = _object(
        {
            "columns": {
                "description": "the model's features, each once, in any order",
                "type": "array",
                "items": {"type": "string", "enum": features},
                "uniqueItems": True,
                "minItems": len(features),
                "maxItems": len(features),
            },
            "data": _batch(_ref("FeatureRow"), limit),
        }
    )
    return {
        "Transaction": TransactionIn.model_json_schema(),
        "Label": LabelIn.model_json_schema(),
        "Prediction": prediction,
        "PredictionBatch": _object({"predictions": _batch(_ref("Prediction"), limit)}),
        "Error": ERROR,
        "FeatureRecord": _object({name: FEATURE_VALUE for name in features}),
        "FeatureRow": {
            "description": "one value per feature, in the model's feature order",
            "type": "array",
            "items": FEATURE_VALUE,
            "minItems": len(features),
            "maxItems": len(features),
        },
        "Invocation": {
            "description": "MLflow's scoring protocol: exactly one of these keys",
            "oneOf": [
                _object({"dataframe_split": split}),
                _object({"dataframe_records": _batch(_ref("FeatureRecord"), limit)}),
                *(
                    _object(
                        {
                            key: {
                                "oneOf": [
                                    _batch(_ref("FeatureRecord"), limit),
                                    _batch(_ref("FeatureRow"), limit),
                                ]
                            }
                        }
                    )
                    for key in ("inputs", "instances")
                ),
            ],
        },
    }


def _security(scheme: str, scopes: list[str], required: bool) -> list[dict[str, list[str]]]:
    """OpenAPI 3.1 lets a bearer requirement list the roles (here: scopes) it needs."""
    return [{scheme: scopes}] if required else []


def openapi_document(settings: Settings, credentials: Credentials | None = None) -> dict[str, Any]:
    """The document /openapi.json serves: exact request and response schemas, so that a
    schema-valid request is accepted and every answer matches what is declared.
    `credentials`: the API's tokens (None: none), which decide the security of each route."""
    limit = settings.serving.max_batch
    features = feature_names(settings.features)
    tokens = credentials is not None and not credentials.anonymous
    metrics_token = credentials is not None and credentials.metrics is not None
    components = _components(features, limit)
    return {
        "openapi": "3.1.0",
        "info": {"title": "fraudflow scoring API", "version": "1"},
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API token; its scopes: score (/predict, /invocations), "
                    "label (/feedback)",
                },
                "metricsBearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the metrics token (serving.metrics_token)",
                },
            },
        },
        "paths": {
            "/predict": {
                "post": {
                    "summary": "Score raw transactions with online features",
                    "security": _security("bearer", [SCORE], tokens),
                    "parameters": [
                        {
                            "name": "explain",
                            "in": "query",
                            "required": False,
                            "description": "reasons for every transaction; without it only "
                            "review and decline decisions get reasons, approvals get []",
                            "schema": {"type": "boolean", "default": False},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        **_json(_one_or_many("Transaction", limit)),
                    },
                    "responses": {
                        "200": {
                            "description": "one prediction, or {predictions: [...]} for a list",
                            **_json({"oneOf": [_ref("Prediction"), _ref("PredictionBatch")]}),
                        },
                        **_errors(400, 401, 403, 413, 415, 422, 503),
                    },
                }
            },
            "/feedback": {
                "post": {
                    "summary": "Late fraud labels (idempotent)",
                    "security": _security("bearer", [LABEL], tokens),
                    "requestBody": {"required": True, **_json(_one_or_many("Label", limit))},
                    "responses": {
                        "200": {
                            "description": "labels stored",
                            **_json(
                                _object(
                                    {
                                        "received": {"type": "integer", "minimum": 1},
                                        "known_transactions": {"type": "integer", "minimum": 0},
                                    }
                                )
                            ),
                        },
                        **_errors(400, 401, 403, 413, 415, 422, 503),
                    },
                }
            },
            "/invocations": {
                "post": {
                    "summary": "MLflow scoring protocol on feature vectors",
                    "security": _security("bearer", [SCORE], tokens),
                    "requestBody": {"required": True, **_json(_ref("Invocation"))},
                    "responses": {
                        "200": {
                            "description": "fraud probabilities, one per row",
                            **_json(
                                _object(
                                    {
                                        "predictions": _batch(
                                            {"type": "number", "minimum": 0, "maximum": 1}, limit
                                        )
                                    }
                                )
                            ),
                        },
                        **_errors(400, 401, 403, 413, 415, 422, 503),
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Liveness and registry health",
                    "responses": {
                        "200": {
                            "description": "alive",
                            **_json(
                                _object(
                                    {
                                        "status": {"const": "ok"},
                                        "registry": {"enum": ["ok", "unreachable"]},
                                        "model_loaded": {"type": "boolean"},
                                        "model_version": {"type": ["string", "null"]},
                                        "model_source": {"enum": ["registry", "cache", None]},
                                        "challenger": CHALLENGER,
                                    }
                                )
                            ),
                        },
                        "503": {
                            "description": "the version the registry serves failed to load and "
                            "no model is served: this replica cannot score until it is fixed",
                            **_json(
                                _object(
                                    {
                                        "status": {"const": "failing"},
                                        "registry": {"enum": ["ok", "unreachable"]},
                                        "model_loaded": {"const": False},
                                        "model_version": {"type": "null"},
                                        "model_source": {"type": "null"},
                                        "failed_version": STRING,
                                        "load_error": STRING,
                                        "challenger": CHALLENGER,
                                    }
                                )
                            ),
                        },
                    },
                }
            },
            "/ready": {
                "get": {
                    "summary": "Readiness: a model is loaded and the online state answers",
                    "responses": {
                        "200": {
                            "description": "ready",
                            **_json(_object({"ready": {"const": True}, "model_version": STRING})),
                        },
                        "503": {
                            "description": "no model yet, or the online state is down",
                            **_json(_object({"ready": {"const": False}, "reason": STRING})),
                        },
                    },
                }
            },
            "/model": {
                "get": {
                    "summary": "The model in service",
                    "responses": {
                        "200": {
                            "description": "name, version, stage, run, threshold",
                            **_json(
                                _object(
                                    {
                                        "name": STRING,
                                        "version": STRING,
                                        "stage": STRING,
                                        "aliases": {"type": "array", "items": STRING},
                                        "run_id": STRING,
                                        "threshold": {"type": "number"},
                                        "features": {"type": "array", "items": STRING},
                                        "loaded_at": STRING,
                                        "model_source": {"enum": ["registry", "cache"]},
                                        "source": STRING,
                                        "registry": {"enum": ["ok", "unreachable"]},
                                        "reloads": {"type": "integer", "minimum": 0},
                                        "reload_failures": {"type": "integer", "minimum": 0},
                                        "failed_version": {"type": ["string", "null"]},
                                        "load_error": {"type": ["string", "null"]},
                                        "markers": {
                                            "oneOf": [
                                                {"type": "null"},
                                                _object(
                                                    {
                                                        "alias": {"type": ["string", "null"]},
                                                        "production": {
                                                            "type": "array",
                                                            "items": STRING,
                                                        },
                                                        "agree": {"type": "boolean"},
                                                        "followed": {"type": ["string", "null"]},
                                                        "by": {"enum": list(MARKER_GESTURES)},
                                                    }
                                                ),
                                            ]
                                        },
                                        "challenger": CHALLENGER,
                                    }
                                )
                            ),
                        },
                        **_errors(503),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": _security("metricsBearer", [], metrics_token),
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": STRING}},
                        },
                        **(_errors(401) if metrics_token else {}),
                    },
                }
            },
        },
    }
