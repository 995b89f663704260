"""Request bodies, validated with pydantic: a 4xx naming the field, never a 5xx."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator


def _identifier(value: object) -> object:
    """Ids may be sent as JSON strings or integers; they are compared as text."""
    if isinstance(value, bool):
        raise ValueError("must be a string or an integer")
    if isinstance(value, int):
        return str(value)
    return value


Identifier = Annotated[
    str, BeforeValidator(_identifier), Field(min_length=1, max_length=128, strict=True)
]


class TransactionIn(BaseModel):
    """One raw transaction (the raw transaction contract: id, time, card, terminal, amount)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transaction_id: Identifier
    tx_datetime: datetime = Field(strict=False)
    customer_id: Identifier
    terminal_id: Identifier
    tx_amount: float = Field(ge=0, allow_inf_nan=False, strict=True)

    @field_validator("tx_datetime", mode="before")
    @classmethod
    def _iso_text(cls, value: object) -> object:
        if not isinstance(value, str):
            raise ValueError("must be an ISO-8601 date-time string")
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
