"""Training: LightGBM on delay-aware time windows, early stopping and threshold on validation."""

from __future__ import annotations

from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import pandas as pd

from pipelines.evaluate import choose_threshold, evaluate_scores, known_compromised
from pipelines.features import build_features
from pipelines.model import FraudScorer
from pipelines.settings import (
    FeatureSettings,
    Settings,
    TrainingSettings,
    check_lightgbm_parameters,
)
from pipelines.split import Period, TrainingWindows, day_after_last, layout_windows


@dataclass
class LabelledPeriod:
    """Raw rows of one period with their features (index-aligned)."""

    raw: pd.DataFrame
    features: pd.DataFrame

    @property
    def labels(self) -> np.ndarray:
        return self.raw["tx_fraud"].to_numpy()


@dataclass
class TrainingResult:
    scorer: FraudScorer
    windows: TrainingWindows
    best_iteration: int
    params: dict[str, object]
    validation_metrics: dict[str, float]
    test_metrics: dict[str, float]
    row_counts: dict[str, int]
    test: LabelledPeriod
    test_scores: np.ndarray
    reference: pd.DataFrame = field(repr=False)


def featurize(transactions: pd.DataFrame, settings: FeatureSettings) -> pd.DataFrame:
    """Features for labelled raw transactions (every row keeps its index)."""
    if "tx_fraud" not in transactions:
        raise ValueError("training data needs the label column tx_fraud")
    return build_features(transactions, settings)


def select_period(raw: pd.DataFrame, features: pd.DataFrame, period: Period) -> LabelledPeriod:
    mask = period.mask(raw["tx_datetime"]).to_numpy()
    return LabelledPeriod(raw.loc[mask], features.loc[mask])


def positive_weight(labels: np.ndarray, power: float) -> float:
    """Weight of a fraud row: (negatives / positives) ** power, tempering the class imbalance."""
    positives = float(np.sum(labels == 1))
    negatives = float(np.sum(labels == 0))
    if positives == 0:
        raise ValueError("the training period holds no fraud: cannot learn a fraud model")
    return (negatives / positives) ** power


def lightgbm_params(settings: TrainingSettings) -> dict[str, object]:
    """What `lgb.train` gets: fraudflow's fixed parameters and the allowed configured ones
    (checked again here, the one place parameters reach LightGBM)."""
    params = {"objective": "binary", "metric": "average_precision", "verbosity": -1}
    params.update(check_lightgbm_parameters(settings.lightgbm))
    return params


def fit_booster(
    train: LabelledPeriod, validation: LabelledPeriod, settings: TrainingSettings
) -> lgb.Booster:
    """Fit with positive-class weighting and early stopping on validation average precision."""
    weight = positive_weight(train.labels, settings.imbalance_power)
    train_set = lgb.Dataset(
        train.features.to_numpy(np.float64),
        label=train.labels,
        weight=np.where(train.labels == 1, weight, 1.0),
        feature_name=list(train.features.columns),
        free_raw_data=True,
    )
    valid_set = lgb.Dataset(
        validation.features.to_numpy(np.float64), label=validation.labels, reference=train_set
    )
    return lgb.train(
        lightgbm_params(settings),
        train_set,
        num_boost_round=settings.max_rounds,
        valid_sets=[valid_set],
        valid_names=["validation"],
        callbacks=[lgb.early_stopping(settings.early_stopping_rounds, verbose=False)],
    )


def held_out_test_period(
    raw: pd.DataFrame,
    features: pd.DataFrame,
    windows: TrainingWindows,
    delay_days: int,
    known_cards_days: int | None = None,
) -> LabelledPeriod:
    """The test period without cards already known to be compromised (the handbook protocol):
    a fraud from the training window's start on (or from `known_cards_days` before the test
    period) whose label had matured by the test day."""
    test = select_period(raw, features, windows.test)
    since = windows.train.start
    if known_cards_days is not None:
        since = windows.test.start - pd.Timedelta(days=known_cards_days)
    history = raw.loc[(raw["tx_datetime"] >= since).to_numpy()]
    known = known_compromised(test.raw["customer_id"], test.raw["tx_datetime"], history, delay_days)
    return LabelledPeriod(test.raw.loc[~known], test.features.loc[~known])


def train_model(
    transactions: pd.DataFrame, settings: Settings, features: pd.DataFrame | None = None
) -> TrainingResult:
    """Split, featurize, fit, choose the threshold and evaluate on the held-out test period.

    `features` may be given precomputed for all of `transactions` (the backtest does, once for
    every fold): being point-in-time, a row's features do not depend on the rows after it.
    Their columns are the model's inputs (the ablation gives other sets than the configured).
    """
    delay = settings.features.label_delay_days
    windows = layout_windows(
        transactions["tx_datetime"].min(),
        day_after_last(transactions["tx_datetime"]),
        settings.training,
        delay,
    )
    in_scope = (transactions["tx_datetime"] < windows.test.end).to_numpy()
    history = transactions.loc[in_scope]
    if features is None:
        features = featurize(history, settings.features)
    else:
        features = features.loc[in_scope]
    train = select_period(history, features, windows.train)
    validation = select_period(history, features, windows.validation)
    test = held_out_test_period(
        history, features, windows, delay, settings.training.known_cards_days
    )
    for name, period in (("train", train), ("validation", validation), ("test", test)):
        if len(period.raw) == 0:
            raise ValueError(f"the {name} period {getattr(windows, name)} holds no transaction")

    booster = fit_booster(train, validation, settings.training)
    threads = settings.batch.resolved_threads
    scorer = FraudScorer(booster, tuple(train.features.columns), 0.5)
    validation_scores = scorer.predict_proba(validation.features, threads)
    threshold = choose_threshold(validation.labels, validation_scores, settings.training.threshold)
    scorer = FraudScorer(booster, scorer.features, threshold)
    k = settings.training.card_precision_k
    test_scores = scorer.predict_proba(test.features, threads)
    reference = validation.features.assign(
        fraud_probability=validation_scores, tx_fraud=validation.labels
    )
    if len(reference) > settings.training.reference_sample_rows:
        reference = reference.sample(settings.training.reference_sample_rows, random_state=0)
    return TrainingResult(
        scorer=scorer,
        windows=windows,
        best_iteration=int(booster.best_iteration or booster.current_iteration()),
        params=lightgbm_params(settings.training),
        validation_metrics=evaluate_scores(validation.raw, validation_scores, threshold, k),
        test_metrics=evaluate_scores(test.raw, test_scores, threshold, k),
        row_counts={
            "rows_train": len(train.raw),
            "rows_validation": len(validation.raw),
            "rows_test": len(test.raw),
            "frauds_train": int(train.labels.sum()),
            "frauds_validation": int(validation.labels.sum()),
            "frauds_test": int(test.labels.sum()),
        },
        test=test,
        test_scores=test_scores,
        reference=reference,
    )
