"""The monitor's champion-against-challenger section: when the window's log holds
transactions the champion and a challenger both scored, their live comparison."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from pipelines.live_evidence import challenger_beside, compare_live, shared_rows
from pipelines.mlflow import store
from pipelines.mlflow.registry import challenger_version
from pipelines.settings import Settings

log = logging.getLogger("fraudflow.monitor")


def registry_challenger(settings: Settings) -> str | None:
    """The registry's challenger, preferred when the log holds more than one beside the
    champion (it was moved in the window); None when there is none or it cannot be read."""
    try:
        found = challenger_version(store.client(settings), settings)
    except Exception as exc:  # the log alone still names the challenger it holds
        log.warning("cannot read the challenger alias: %s", exc)
        return None
    return None if found is None else str(found.version)


def live_section(
    current: pd.DataFrame, champion: str, settings: Settings, preferred: str | None
) -> dict[str, Any] | None:
    """The comparison of the champion with the challenger scored beside it in the window (the
    registry's challenger, `preferred`, when the log holds it), labels as they have arrived;
    None when no row of the window was scored by both."""
    challenger = challenger_beside(current, champion, preferred)
    if challenger is None:
        return None
    shared = shared_rows(current, champion, challenger)
    comparison = compare_live(
        shared,
        champion,
        challenger,
        settings.training.card_precision_k,
        settings.promotion.live_evidence,
    )
    return comparison.as_dict()
