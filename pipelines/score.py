"""Batch scoring of raw transactions, features computed from the input's own history."""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipelines.features import build_features
from pipelines.model import FraudScorer
from pipelines.settings import FeatureSettings


def score_transactions(
    transactions: pd.DataFrame,
    scorer: FraudScorer,
    settings: FeatureSettings,
    chunk_rows: int = 200_000,
    progress: bool = False,
) -> pd.DataFrame:
    """`transaction_id` and `fraud_probability` for every input row, in input order."""
    features = build_features(transactions, settings)
    scores = np.empty(len(features))
    with tqdm(total=len(features), unit="tx", disable=not progress, desc="scoring") as bar:
        for start in range(0, len(features), chunk_rows):
            chunk = features.iloc[start : start + chunk_rows]
            scores[start : start + len(chunk)] = scorer.predict_proba(chunk)
            bar.update(len(chunk))
    return pd.DataFrame(
        {"transaction_id": transactions["transaction_id"].to_numpy(), "fraud_probability": scores}
    )
