"""Production traffic for monitoring tests: prediction-log records exactly as the API writes
them (the same record builder and writer), with features computed by the offline path (proven
equal to the online one in test_serving_gunicorn)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from pipelines.features import build_features
from pipelines.log.record import RoleScore, log_folder, record
from pipelines.log.writer import PredictionLogWriter
from pipelines.model import FraudScorer
from pipelines.settings import RAW_COLUMNS, Settings
from serving.predictor import decision

# one request body for /predict (a card's purchase on a June day of the small world)
ONE_TRANSACTION = {
    "transaction_id": "t1",
    "tx_datetime": "2018-06-20T10:15:00",
    "customer_id": "c1",
    "terminal_id": "m1",
    "tx_amount": 480.0,
}


def api_transaction(i: int, prefix: str) -> dict:
    """The `i`-th of a stream of /predict bodies: ids `<prefix><i>`, a few cards and terminals
    that come back, amounts spread over 5..254."""
    return {
        "transaction_id": f"{prefix}{i}",
        "tx_datetime": f"2018-06-21T{8 + i % 12:02d}:{i % 60:02d}:00",
        "customer_id": f"c{i % 17}",
        "terminal_id": f"m{i % 11}",
        "tx_amount": float(5 + (i * 37) % 250),
    }


def log_traffic(
    settings: Settings,
    history: pd.DataFrame,
    traffic: pd.DataFrame,
    scorer: FraudScorer,
    model_version: str,
    logged_at: datetime | None = None,
    challenger: tuple[str, FraudScorer] | None = None,
    canary_cards: Collection[str] = (),
) -> pd.DataFrame:
    """Score `traffic` after `history` and append it to the prediction log; returns the
    traffic with its features and probabilities. With `challenger` (its version and scorer),
    both models score every transaction, as the API does beside a challenger: the challenger
    answers for the cards in `canary_cards` (canary), the champion (`scorer`) for the rest."""
    combined = pd.concat([history, traffic], ignore_index=True)
    features = build_features(combined, settings.features).iloc[len(history) :]
    features.index = traffic.index
    features = features[list(scorer.features)]
    probabilities = scorer.predict_proba(features)
    other = None if challenger is None else challenger[1].predict_proba(features)
    canary = traffic["customer_id"].astype(str).isin(set(canary_cards)).to_numpy()
    answers = probabilities if other is None else np.where(canary, other, probabilities)
    when = (logged_at or datetime.now(timezone.utc)).isoformat(timespec="milliseconds")
    records = []
    for i, ((_, tx), (_, row)) in enumerate(zip(traffic.iterrows(), features.iterrows())):
        roles = {}
        answer_scorer, answer_version = scorer, model_version
        if challenger is not None:
            roles = {
                "model_role": "challenger" if canary[i] else "champion",
                "champion": RoleScore(
                    model_version,
                    float(probabilities[i]),
                    decision(probabilities[i], scorer.threshold, settings.serving),
                ),
                "challenger": RoleScore(
                    challenger[0],
                    float(other[i]),
                    decision(other[i], challenger[1].threshold, settings.serving),
                ),
            }
            if canary[i]:
                answer_version, answer_scorer = challenger
        records.append(
            record(
                logged_at=when,
                transaction_id=str(tx["transaction_id"]),
                tx_datetime=tx["tx_datetime"].to_pydatetime(),
                customer_id=str(tx["customer_id"]),
                terminal_id=str(tx["terminal_id"]),
                tx_amount=float(tx["tx_amount"]),
                feature_names=list(row.index),
                feature_values=row.astype(float).tolist(),
                fraud_probability=float(answers[i]),
                decision=decision(answers[i], answer_scorer.threshold, settings.serving),
                model_name=settings.mlflow.model_name,
                model_version=answer_version,
                latency_ms=1.0,
                resent=False,
                **roles,
            )
        )
    log = PredictionLogWriter(log_folder(settings))
    log.write(records)
    log.close()
    scored = traffic.assign(fraud_probability=probabilities)
    return scored if other is None else scored.assign(challenger_probability=other)


def split_days(transactions: pd.DataFrame, days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """History up to the last `days` days, and those days (the production traffic)."""
    cut = transactions["tx_datetime"].max().normalize() - pd.Timedelta(days=days - 1)
    later = (transactions["tx_datetime"] >= cut).to_numpy()
    columns = [*RAW_COLUMNS, "tx_fraud"]
    return (
        transactions.loc[~later, columns].reset_index(drop=True),
        transactions.loc[later, columns].reset_index(drop=True),
    )
