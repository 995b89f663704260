"""Request bodies, validated with pydantic: a 4xx naming the field, never a 5xx."""

from __future__ import annotations

import math
import re
import sys
from datetime import datetime, timezone
from decimal import Decimal
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

# integer ids: those of a signed 64-bit column
LARGEST_ID = 2**63 - 1
# an amount above a trillion is a unit or parsing error upstream (and would let a card's
# windowed sums overflow): refused
LARGEST_AMOUNT = 1e12
# feature values (/invocations) are doubles: a JSON number past the largest one is refused,
# never rounded. An integer is compared with the bound's decimal text, as JSON Schema
# validators read `maximum` (the double itself is a little larger).
LARGEST_NUMBER = sys.float_info.max
LARGEST_INTEGER = int(Decimal(repr(LARGEST_NUMBER)))


# JSON bodies nest at most this deep (every accepted payload nests 4 levels or less): a deeper
# one is refused before it is parsed, since the parser recurses once per level
MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_too_deep(raw: bytes) -> int | None:
    """How deep a JSON text's arrays and objects nest, when deeper than MAX_JSON_DEPTH (else
    None), computed without parsing it (brackets inside strings do not count); exact for valid
    JSON. Linear and C-speed: cheap next to the parse it guards."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return None  # too few brackets to nest too deep
    brackets = np.frombuffer(_JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS), np.uint8)
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)
    depth = int(np.cumsum(steps).max(initial=0))
    return depth if depth > MAX_JSON_DEPTH else None


def within_double(value: int | float) -> bool:
    """Whether a JSON number is a finite double within the range the document declares."""
    if isinstance(value, int):
        return -LARGEST_INTEGER <= value <= LARGEST_INTEGER
    return math.isfinite(value)


# ISO-8601 date-time text: RFC 3339 (Z or an offset), or without an offset (read as UTC).
# The first and last day a datetime holds are refused (an offset could move them out of
# range), and so is a leap second (Python's datetime has none).
DATETIME_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?")
DATETIME_REFUSED = r"^(?!0001-01-01|9999-12-31)(?!.{17}60)"


def _identifier(value: object) -> object:
    """Ids may be sent as JSON strings or integers (0 to 2**63 - 1; 6.0 is the integer 6, as
    in JSON Schema); they are compared as text."""
    if isinstance(value, bool):
        raise ValueError("must be a string or an integer")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if not 0 <= value <= LARGEST_ID:
            raise ValueError(f"an integer id must be between 0 and {LARGEST_ID}")
        return str(value)
    return value


Identifier = Annotated[
    str,
    BeforeValidator(_identifier),
    Field(min_length=1, max_length=128, strict=True),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": 128},
                {"type": "integer", "minimum": 0, "maximum": LARGEST_ID},
            ]
        }
    ),
]


class TransactionIn(BaseModel):
    """One raw transaction (the raw transaction contract: id, time, card, terminal, amount)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transaction_id: Identifier
    tx_datetime: datetime = Field(
        strict=False,
        json_schema_extra={
            "format": "date-time",
            "pattern": DATETIME_REFUSED,
            "description": "RFC 3339; a time without an offset is read as UTC",
        },
    )
    customer_id: Identifier
    terminal_id: Identifier
    tx_amount: float = Field(ge=0, le=LARGEST_AMOUNT, allow_inf_nan=False, strict=True)

    @field_validator("tx_datetime", mode="before")
    @classmethod
    def _iso_text(cls, value: object) -> object:
        if not isinstance(value, str) or not DATETIME_TEXT.fullmatch(value):
            raise ValueError("must be an ISO-8601 date-time string (2018-06-21T08:30:00Z)")
        if not re.match(DATETIME_REFUSED, value):
            raise ValueError("must not fall on 0001-01-01 or 9999-12-31, nor on a leap second")
        return value

    @field_validator("tx_amount", mode="before")
    @classmethod
    def _double(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool) and value > LARGEST_AMOUNT:
            raise ValueError(f"must be at most {LARGEST_AMOUNT:.0e}")  # before float() rounds
        return value

    @field_validator("tx_datetime")
    @classmethod
    def _naive_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value


class LabelIn(BaseModel):
    """A late fraud label for a transaction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transaction_id: Identifier
    tx_fraud: Literal[0, 1]

    @field_validator("tx_fraud", mode="before")
    @classmethod
    def _integer_label(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be the integer 0 or 1")
        return value
