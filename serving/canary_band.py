"""The band a canary challenger must stay in around the champion, as pure functions: a role's
figures from its summed counts (rates and a p99 from the merged latency histogram) and the
rule that says whether the challenger left the band (`CanaryRollbackSettings`)."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pipelines.settings import CanaryRollbackSettings
from pipelines.state.protocol import RoleCounts

# upper edges of the latency bins, in ms: 0.5 ms times 2^(i/4), so each bin is 19 % wide and
# 64 of them reach 27 s; latencies above the last edge fall into one more bin. Fixed, so that
# histograms from every worker and host add up bin by bin.
LATENCY_EDGES_MS: tuple[float, ...] = tuple(0.5 * 2 ** (i / 4) for i in range(64))


def latency_bin(latency_ms: float) -> int:
    """The bin of a latency: the first whose upper edge is at or above it."""
    return bisect_left(LATENCY_EDGES_MS, latency_ms)


def quantile_ms(bins: Mapping[int, int], q: float = 0.99) -> float:
    """The `q` quantile of a histogram, as the upper edge of the bin that holds it (an
    overflow reads as the last edge); 0.0 for an empty histogram."""
    total = sum(bins.values())
    if total <= 0:
        return 0.0
    rank = math.ceil(q * total)
    seen = 0
    for index in sorted(bins):
        seen += bins[index]
        if seen >= rank:
            return LATENCY_EDGES_MS[min(index, len(LATENCY_EDGES_MS) - 1)]
    return LATENCY_EDGES_MS[-1]


@dataclass(frozen=True)
class RoleFigures:
    """What the band compares of one role over the window."""

    transactions: int
    errors: int
    declines: int
    error_rate: float
    decline_rate: float
    p99_ms: float

    @classmethod
    def of(cls, counts: RoleCounts) -> RoleFigures:
        n = counts.transactions
        return cls(
            transactions=n,
            errors=counts.errors,
            declines=counts.declines,
            error_rate=counts.errors / n if n else 0.0,
            decline_rate=counts.declines / n if n else 0.0,
            p99_ms=quantile_ms(counts.latency_bins),
        )

    def as_record(self) -> dict[str, Any]:
        """The figures as the stop record keeps them (rates and p99 rounded for reading)."""
        figures = asdict(self)
        for name in ("error_rate", "decline_rate"):
            figures[name] = round(figures[name], 6)
        figures["p99_ms"] = round(figures["p99_ms"], 3)
        return figures


def band_breach(
    rule: CanaryRollbackSettings, champion: RoleFigures, challenger: RoleFigures
) -> str | None:
    """Why the challenger left the band, or None while it stays in it or while either role has
    decided fewer than `min_requests` transactions in the window (too few to judge)."""
    if min(champion.transactions, challenger.transactions) < rule.min_requests:
        return None
    reasons = []
    if challenger.error_rate > champion.error_rate + rule.error_rate_band:
        reasons.append(
            f"error rate {challenger.error_rate:.4f} above the champion's "
            f"{champion.error_rate:.4f} + {rule.error_rate_band:g}"
        )
    if abs(challenger.decline_rate - champion.decline_rate) > rule.decline_rate_band:
        reasons.append(
            f"decline rate {challenger.decline_rate:.4f} off the champion's "
            f"{champion.decline_rate:.4f} by more than {rule.decline_rate_band:g}"
        )
    if challenger.p99_ms > rule.p99_ratio * champion.p99_ms + rule.p99_slack_ms:
        reasons.append(
            f"p99 latency {challenger.p99_ms:.1f} ms above {rule.p99_ratio:g} x the "
            f"champion's {champion.p99_ms:.1f} ms + {rule.p99_slack_ms:g} ms"
        )
    return "; ".join(reasons) or None
