"""MLflow's scoring payloads for /invocations, read strictly into a feature matrix.

Accepted (exactly what the OpenAPI document declares, see serving/openapi.py):
- `{"dataframe_split": {"columns": [...], "data": [[...], ...]}}`: the columns are the model's
  features, each once, in any order; every row holds one value per column;
- `{"dataframe_records": [{feature: value, ...}, ...]}`: every record holds every feature;
- `{"inputs": ...}` or `{"instances": ...}`: a list of such records, or a list of rows that
  hold one value per feature in the model's feature order.
Values are JSON numbers (finite doubles) or null (missing). Anything else, an unknown key or
column, or a payload of another shape is refused with a message naming it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from serving.schemas import within_double

FORMS = ("dataframe_split", "dataframe_records", "inputs", "instances")


class PayloadError(ValueError):
    """A payload the API refuses: the HTTP status, a message and per-field details."""

    def __init__(self, status: int, message: str, details: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.status, self.message, self.details = status, message, details or []


def _one_form(body: Any) -> tuple[str, Any]:
    forms = ", ".join(FORMS)
    if not isinstance(body, dict):
        raise PayloadError(422, f"expected a JSON object with exactly one of {forms}")
    unknown = sorted(k for k in body if k not in FORMS)
    if unknown:
        raise PayloadError(422, f"unknown key(s) {unknown}: give exactly one of {forms}")
    if len(body) != 1:
        raise PayloadError(422, f"give exactly one of {forms}, not {len(body)}")
    return next(iter(body.items()))


def _check_columns(names: list[Any], features: tuple[str, ...], where: str) -> None:
    missing = [name for name in features if name not in names]
    if missing:
        raise PayloadError(
            422,
            f"{where}: missing feature column {missing[0]!r}",
            [{"field": name, "message": "required"} for name in missing],
        )
    unknown = [name for name in names if name not in features]
    if unknown:
        raise PayloadError(
            422,
            f"{where}: unknown feature column {unknown[0]!r}",
            [{"field": str(name), "message": "not a feature of the model"} for name in unknown],
        )


def _split_rows(payload: Any, features: tuple[str, ...]) -> tuple[list[str], list[Any]]:
    if not isinstance(payload, dict) or set(payload) != {"columns", "data"}:
        raise PayloadError(422, "dataframe_split must be an object with 'columns' and 'data' only")
    columns, rows = payload["columns"], payload["data"]
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise PayloadError(422, "dataframe_split.columns must be a list of column names")
    if len(set(columns)) != len(columns):
        raise PayloadError(422, "dataframe_split.columns names a column twice")
    _check_columns(columns, features, "dataframe_split")
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise PayloadError(422, "dataframe_split.data must be a list of rows (lists)")
    if any(len(row) != len(columns) for row in rows):
        raise PayloadError(422, f"each dataframe_split row must hold {len(columns)} values")
    return columns, rows


def _records_rows(form: str, records: list[Any], features: tuple[str, ...]) -> list[list[Any]]:
    for index, record in enumerate(records):
        _check_columns(list(record), features, f"{form}[{index}]")
    return [[record[name] for name in features] for record in records]


def _list_rows(form: str, payload: Any, features: tuple[str, ...]) -> list[list[Any]]:
    if not isinstance(payload, list):
        raise PayloadError(
            422,
            f"{form} must be a list of feature records (objects) or of feature rows (lists); "
            "the columnar form {column: [values]} is not accepted",
        )
    if all(isinstance(r, dict) for r in payload):
        return _records_rows(form, payload, features)
    if form == "dataframe_records":
        raise PayloadError(422, "dataframe_records must be a list of objects")
    if not all(isinstance(r, list) for r in payload):
        raise PayloadError(422, f"{form} must be all records (objects) or all rows (lists)")
    if any(len(row) != len(features) for row in payload):
        raise PayloadError(
            422, f"each {form} row must hold {len(features)} values in feature order"
        )
    return payload


def _number(value: Any, name: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PayloadError(
            422, f"feature {name!r} must be a number", [{"field": name, "message": "not a number"}]
        )
    if not within_double(value):
        raise PayloadError(
            422,
            f"feature {name!r} must be a finite number within the range of a double",
            [{"field": name, "message": "not finite"}],
        )
    return float(value)


def _check_count(count: int, limit: int) -> None:
    if not count:
        raise PayloadError(422, "no rows to score")
    if count > limit:
        raise PayloadError(413, f"batch of {count} exceeds the limit of {limit}")


def feature_matrix(body: Any, features: tuple[str, ...], limit: int) -> np.ndarray:
    """The rows of an MLflow scoring payload as a float matrix in `features` order (NaN for
    null); raises PayloadError (422, or 413 past `limit` rows) for anything else."""
    form, payload = _one_form(body)
    if form == "dataframe_split":
        columns, rows = _split_rows(payload, features)
        _check_count(len(rows), limit)
        order = [columns.index(name) for name in features]
        rows = [[row[i] for i in order] for row in rows]
    else:
        if isinstance(payload, list):
            _check_count(len(payload), limit)
        rows = _list_rows(form, payload, features)
    matrix = np.empty((len(rows), len(features)))
    for i, row in enumerate(rows):
        for j, name in enumerate(features):
            matrix[i, j] = _number(row[j], name)
    return matrix
