"""The online predictor: raw transaction -> online features -> probability, decision, reasons."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipelines.features import epoch_ms, features_from_history
from pipelines.log.record import RoleScore
from pipelines.settings import ServingSettings, Settings
from pipelines.state.protocol import OnlineState
from serving.model_holder import ServedModel
from serving.schemas import TransactionIn

log = logging.getLogger(__name__)


def decision(probability: float, threshold: float, serving: ServingSettings) -> str:
    """The API's decision on a probability: decline from `serving.decline_threshold`, review
    from the model's own `threshold` (or `serving.review_threshold`), approve below."""
    review = threshold if serving.review_threshold is None else serving.review_threshold
    if probability >= serving.decline_threshold:
        return "decline"
    return "review" if probability >= review else "approve"


@dataclass(frozen=True)
class Prediction:
    transaction_id: str
    fraud_probability: float
    decision: str
    reasons: list[dict[str, float | str]]
    model_name: str
    model_version: str
    features: np.ndarray
    already_seen: bool
    lookup_seconds: float
    # with a challenger served: the role that answered and what each model said (the
    # challenger's probability and decision are None when it failed to score)
    model_role: str = "champion"
    champion: RoleScore | None = None
    challenger: RoleScore | None = None
    # the challenger was to decide (canary) but failed, so the champion answered
    challenger_failed: bool = False

    def response(self) -> dict[str, object]:
        return {
            "transaction_id": self.transaction_id,
            "fraud_probability": self.fraud_probability,
            "decision": self.decision,
            "reasons": self.reasons,
            "model": {"name": self.model_name, "version": self.model_version},
        }


class Predictor:
    """One scoring path for /predict; the state and the model are passed in, never global."""

    def __init__(self, settings: Settings, state: OnlineState) -> None:
        self.settings = settings
        self.state = state

    def decide(self, probability: float, model: ServedModel) -> str:
        return decision(probability, model.scorer.threshold, self.settings.serving)

    def reasons(
        self, model: ServedModel, row: list[float], contributions: list[float]
    ) -> list[dict[str, float | str]]:
        """The features that pushed the score up most (LightGBM's per-feature contributions).

        Plain lists: for one row of ~20 values Python's sort costs less than numpy's calls."""
        order = sorted(range(len(contributions)), key=contributions.__getitem__, reverse=True)
        names = model.scorer.features
        return [
            {
                "feature": names[i],
                # NaN: unknown; an infinite value (an overflowing ratio) is not JSON
                "value": row[i] if math.isfinite(row[i]) else None,
                "contribution": round(contributions[i], 6),
            }
            for i in order[: self.settings.serving.reasons]
            if contributions[i] > 0
        ]

    def features(self, tx: TransactionIn, ts_ms: int) -> tuple[np.ndarray, bool, float]:
        """Store the transaction in the online state and compute its features from the rows
        stored before it; returns the features, whether it was re-sent, and the time taken."""
        start = time.perf_counter()
        history = self.state.observe(
            tx.transaction_id, tx.customer_id, tx.terminal_id, ts_ms, tx.tx_amount
        )
        row = features_from_history(
            tx.tx_datetime,
            tx.tx_amount,
            history.customer_times_ms,
            history.customer_amounts,
            history.terminal_times_ms,
            history.terminal_labels,
            self.settings.features,
        )
        return row, history.already_seen, time.perf_counter() - start

    def _challenger_scores(
        self, rows: list[np.ndarray], challenger: ServedModel
    ) -> tuple[list[float], list[str]] | None:
        """The challenger's probabilities and decisions of the rows; None when it fails: a
        challenger never takes the champion's answer down with it."""
        try:
            probabilities = challenger.online.probabilities(rows)
            return probabilities, [self.decide(p, challenger) for p in probabilities]
        except Exception:
            log.exception("challenger v%s failed to score", challenger.version)
            return None

    def predict(
        self,
        transactions: list[TransactionIn],
        model: ServedModel,
        explain: bool = False,
        challenger: ServedModel | None = None,
        canary: Callable[[str], bool] | None = None,
    ) -> list[Prediction]:
        """Score in order; each transaction is stored before the next one's features are read.

        The features are computed once. The champion (`model`) scores every transaction; a
        `challenger` scores them too, after the champion, off its answer: in shadow (no
        `canary`) it is only logged; with `canary`, the cards it selects get the challenger's
        answer (the champion's when the challenger fails).

        Reasons (TreeSHAP contributions, the costly part of scoring) are computed for review
        and decline decisions, by the model that answered, and for every transaction when
        `explain`; approvals otherwise get none."""
        rows, seen, lookups = [], [], []
        for tx in transactions:
            row, already, seconds = self.features(tx, epoch_ms(tx.tx_datetime))
            rows.append(row)
            seen.append(already)
            lookups.append(seconds)
        probabilities = model.online.probabilities(rows)
        decisions = [self.decide(p, model) for p in probabilities]
        if challenger is None:
            deciders = [model] * len(transactions)
            return self._predictions(
                transactions, rows, seen, lookups, explain, deciders, probabilities, decisions
            )
        scored = self._challenger_scores(rows, challenger)
        deciders, roles = [], []
        for i, tx in enumerate(transactions):
            wanted = canary is not None and canary(tx.customer_id)
            answers = wanted and scored is not None
            deciders.append(challenger if answers else model)
            roles.append(
                {
                    "model_role": "challenger" if answers else "champion",
                    "champion": RoleScore(model.version, probabilities[i], decisions[i]),
                    "challenger": RoleScore(
                        challenger.version,
                        scored[0][i] if scored else None,
                        scored[1][i] if scored else None,
                    ),
                    "challenger_failed": wanted and scored is None,
                }
            )
            if answers:
                probabilities[i], decisions[i] = scored[0][i], scored[1][i]
        return self._predictions(
            transactions, rows, seen, lookups, explain, deciders, probabilities, decisions, roles
        )

    def _predictions(
        self,
        transactions: list[TransactionIn],
        rows: list[np.ndarray],
        seen: list[bool],
        lookups: list[float],
        explain: bool,
        deciders: list[ServedModel],
        probabilities: list[float],
        decisions: list[str],
        roles: list[dict] | None = None,
    ) -> list[Prediction]:
        """The answers, each with the reasons of the model that gave it (`deciders`) and, beside
        a challenger, what each role said (`roles`)."""
        explained = [
            i
            for i, decision in enumerate(decisions)
            if self.settings.serving.reasons > 0 and (explain or decision != "approve")
        ]
        contributions: dict[int, list[float]] = {}
        for decider in {id(d): d for d in (deciders[i] for i in explained)}.values():
            mine = [i for i in explained if deciders[i] is decider]
            contributions.update(zip(mine, decider.online.contributions([rows[i] for i in mine])))
        return [
            Prediction(
                transaction_id=tx.transaction_id,
                fraud_probability=probabilities[i],
                decision=decisions[i],
                reasons=(
                    self.reasons(deciders[i], rows[i].tolist(), contributions[i])
                    if i in contributions
                    else []
                ),
                model_name=deciders[i].name,
                model_version=deciders[i].version,
                features=rows[i],
                already_seen=seen[i],
                lookup_seconds=lookups[i],
                **(roles[i] if roles else {}),
            )
            for i, tx in enumerate(transactions)
        ]
