"""Building the Evidently reports (the only module that calls Evidently's report API).

Drift: the champion's reference sample against the current window's features, one test per
feature (Evidently's defaults: normed Wasserstein distance for numbers, Jensen-Shannon for
few-valued columns, unless configured) and one for the predicted fraud probability.
Performance: where late labels exist, the labelled production rows against the labelled
reference, at the model's decision threshold.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import pandas as pd
from evidently import BinaryClassification, DataDefinition, Dataset, Report
from evidently.core.report import Snapshot
from evidently.metrics import ValueDrift
from evidently.presets import ClassificationPreset, DataDriftPreset

from pipelines.settings import MonitoringSettings

SCORE = "fraud_probability"
LABEL = "tx_fraud"
PREDICTED = "predicted_fraud"


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: Sequence[str],
    settings: MonitoringSettings,
) -> Snapshot:
    """Per-feature and score drift of `current` against `reference`."""
    columns = [*features, SCORE]
    definition = DataDefinition(numerical_columns=columns)
    preset = DataDriftPreset(
        columns=list(features),
        drift_share=settings.drift_share,
        num_method=settings.num_method,
        cat_method=settings.cat_method,
        threshold=settings.column_threshold,
    )
    score = ValueDrift(
        column=SCORE, method=settings.num_method, threshold=settings.column_threshold
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return Report([preset, score]).run(
            reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
            current_data=Dataset.from_pandas(current[columns], data_definition=definition),
        )


def performance_report(
    reference: pd.DataFrame, current: pd.DataFrame, threshold: float
) -> Snapshot:
    """Classification quality of labelled production rows next to the labelled reference."""
    definition = DataDefinition(
        numerical_columns=[SCORE],
        categorical_columns=[LABEL, PREDICTED],
        classification=[
            BinaryClassification(
                target=LABEL, prediction_labels=PREDICTED, prediction_probas=SCORE, pos_label=1
            )
        ],
    )

    def frame(data: pd.DataFrame) -> Dataset:
        labelled = pd.DataFrame(
            {
                SCORE: data[SCORE].to_numpy(float),
                LABEL: data[LABEL].to_numpy(int),
                PREDICTED: (data[SCORE].to_numpy(float) >= threshold).astype(int),
            }
        )
        return Dataset.from_pandas(labelled, data_definition=definition)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's zero-division warnings on tiny slices
        return Report([ClassificationPreset()]).run(
            reference_data=frame(reference), current_data=frame(current)
        )
