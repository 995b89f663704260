"""Which cards a canary challenger decides for: a stable hash of the card.

The share is a function of `customer_id` alone (BLAKE2b, not Python's per-process `hash`), so
every worker of every host sends all of one card's transactions to the same model, and a card
inside a 5 % canary is inside a 10 % one too."""

from __future__ import annotations

import hashlib

_SPAN = float(1 << 64)


def card_share(customer_id: str) -> float:
    """The card's place in [0, 100), uniform over cards."""
    digest = hashlib.blake2b(customer_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SPAN * 100.0


def in_canary(customer_id: str, percent: float) -> bool:
    """True when the card's transactions go to the canary challenger at `percent` %."""
    return card_share(customer_id) < percent
