"""The OpenAPI 3 document of the service, built from the same pydantic schemas it validates with."""

from __future__ import annotations

from typing import Any

from pipelines.features import feature_names
from pipelines.settings import Settings
from serving.schemas import LabelIn, TransactionIn

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "details": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def _one_or_many(ref: str, limit: int) -> dict[str, Any]:
    return {
        "oneOf": [
            {"$ref": ref},
            {"type": "array", "items": {"$ref": ref}, "minItems": 1, "maxItems": limit},
        ]
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "body is not JSON",
        401: "missing or invalid bearer token",
        413: "batch too large",
        415: "content type is not application/json",
        422: "a field is missing, misspelt, of the wrong type or out of range",
        503: "no model loaded",
    }
    return {
        str(c): {"description": text[c], **_json({"$ref": "#/components/schemas/Error"})}
        for c in codes
    }


def openapi_document(settings: Settings) -> dict[str, Any]:
    limit = settings.serving.max_batch
    prediction = {
        "type": "object",
        "properties": {
            "transaction_id": {"type": "string"},
            "fraud_probability": {"type": "number", "minimum": 0, "maximum": 1},
            "decision": {"type": "string", "enum": ["approve", "review", "decline"]},
            "reasons": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "feature": {"type": "string"},
                        "value": {"type": ["number", "null"]},
                        "contribution": {"type": "number"},
                    },
                },
            },
            "model": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
            },
        },
    }
    features = {name: {"type": ["number", "null"]} for name in feature_names(settings.features)}
    secured = [{"bearer": []}] if settings.serving.auth_tokens else []
    transaction = TransactionIn.model_json_schema()
    label = LabelIn.model_json_schema()
    return {
        "openapi": "3.1.0",
        "info": {"title": "fraudflow scoring API", "version": "1"},
        "components": {
            "schemas": {
                "Transaction": transaction,
                "Label": label,
                "Prediction": prediction,
                "Error": ERROR,
                "FeatureRecord": {
                    "type": "object",
                    "properties": features,
                    "required": list(features),
                },
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/predict": {
                "post": {
                    "summary": "Score raw transactions with online features",
                    "security": secured,
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
                        **_json(_one_or_many("#/components/schemas/Transaction", limit)),
                    },
                    "responses": {
                        "200": {
                            "description": "one prediction, or {predictions: [...]} for a list",
                            **_json(
                                {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/Prediction"},
                                        {
                                            "type": "object",
                                            "properties": {
                                                "predictions": {
                                                    "type": "array",
                                                    "items": {
                                                        "$ref": "#/components/schemas/Prediction"
                                                    },
                                                }
                                            },
                                        },
                                    ]
                                }
                            ),
                        },
                        **_errors(400, 401, 413, 415, 422, 503),
                    },
                }
            },
            "/feedback": {
                "post": {
                    "summary": "Late fraud labels (idempotent)",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        **_json(_one_or_many("#/components/schemas/Label", limit)),
                    },
                    "responses": {
                        "200": {
                            "description": "labels stored",
                            **_json(
                                {
                                    "type": "object",
                                    "properties": {
                                        "received": {"type": "integer"},
                                        "known_transactions": {"type": "integer"},
                                    },
                                }
                            ),
                        },
                        **_errors(400, 401, 413, 415, 422),
                    },
                }
            },
            "/invocations": {
                "post": {
                    "summary": "MLflow scoring protocol on feature vectors",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        **_json(
                            {
                                "type": "object",
                                "properties": {
                                    "dataframe_split": {
                                        "type": "object",
                                        "properties": {
                                            "columns": {
                                                "type": "array",
                                                "items": {"type": "string"},
                                            },
                                            "data": {"type": "array", "items": {"type": "array"}},
                                        },
                                    },
                                    "dataframe_records": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/FeatureRecord"},
                                    },
                                    "inputs": {},
                                    "instances": {},
                                },
                            }
                        ),
                    },
                    "responses": {
                        "200": {
                            "description": "fraud probabilities",
                            **_json(
                                {
                                    "type": "object",
                                    "properties": {
                                        "predictions": {
                                            "type": "array",
                                            "items": {"type": "number"},
                                        }
                                    },
                                }
                            ),
                        },
                        **_errors(400, 401, 413, 415, 422, 503),
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Liveness and registry health",
                    "responses": {"200": {"description": "alive"}},
                }
            },
            "/ready": {
                "get": {
                    "summary": "Readiness: a model is loaded",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "no model yet"},
                    },
                }
            },
            "/model": {
                "get": {
                    "summary": "The model in service",
                    "responses": {
                        "200": {"description": "name, version, stage, run, threshold"},
                        **_errors(503),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text format"}},
                }
            },
        },
    }
