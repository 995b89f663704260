"""The online predictor: raw transaction -> online features -> probability, decision, reasons."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from pipelines.features import epoch_ms, features_from_history
from pipelines.settings import Settings
from pipelines.state.protocol import OnlineState
from serving.model_holder import ServedModel
from serving.schemas import TransactionIn


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
        serving = self.settings.serving
        review = serving.review_threshold
        review = model.scorer.threshold if review is None else review
        if probability >= serving.decline_threshold:
            return "decline"
        return "review" if probability >= review else "approve"

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

    def predict(
        self, transactions: list[TransactionIn], model: ServedModel, explain: bool = False
    ) -> list[Prediction]:
        """Score in order; each transaction is stored before the next one's features are read.

        Reasons (TreeSHAP contributions, the costly part of scoring) are computed for review
        and decline decisions, and for every transaction when `explain`; approvals otherwise
        get none."""
        rows, seen, lookups = [], [], []
        for tx in transactions:
            row, already, seconds = self.features(tx, epoch_ms(tx.tx_datetime))
            rows.append(row)
            seen.append(already)
            lookups.append(seconds)
        probabilities = model.online.probabilities(rows)
        decisions = [self.decide(p, model) for p in probabilities]
        explained = [
            i
            for i, decision in enumerate(decisions)
            if self.settings.serving.reasons > 0 and (explain or decision != "approve")
        ]
        contributions = (
            dict(zip(explained, model.online.contributions([rows[i] for i in explained])))
            if explained
            else {}
        )
        predictions = []
        for i, tx in enumerate(transactions):
            reasons = (
                self.reasons(model, rows[i].tolist(), contributions[i])
                if i in contributions
                else []
            )
            predictions.append(
                Prediction(
                    transaction_id=tx.transaction_id,
                    fraud_probability=probabilities[i],
                    decision=decisions[i],
                    reasons=reasons,
                    model_name=model.name,
                    model_version=model.version,
                    features=rows[i],
                    already_seen=seen[i],
                    lookup_seconds=lookups[i],
                )
            )
        return predictions
