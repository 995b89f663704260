"""Evaluation figures logged with each training run."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
)

from pipelines.model import FraudScorer  # noqa: E402


def evaluation_figures(
    labels: np.ndarray, scores: np.ndarray, scorer: FraudScorer
) -> dict[str, Figure]:
    """PR and ROC curves, gain importance and the confusion matrix at the model's threshold."""
    figures: dict[str, Figure] = {}

    fig, ax = plt.subplots(figsize=(6, 5))
    PrecisionRecallDisplay.from_predictions(labels, scores, ax=ax, name="test")
    ax.set_title("Precision-recall (test period)")
    figures["precision_recall_curve.png"] = fig

    fig, ax = plt.subplots(figsize=(6, 5))
    RocCurveDisplay.from_predictions(labels, scores, ax=ax, name="test")
    ax.set_title("ROC (test period)")
    figures["roc_curve.png"] = fig

    gains = scorer.booster.feature_importance(importance_type="gain")
    order = np.argsort(gains)
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(order) + 1.5))
    ax.barh(np.array(scorer.features)[order], gains[order])
    ax.set_xlabel("total gain")
    ax.set_title("Feature importance")
    fig.tight_layout()
    figures["feature_importance.png"] = fig

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ConfusionMatrixDisplay.from_predictions(
        labels.astype(int),
        (scores >= scorer.threshold).astype(int),
        labels=[0, 1],  # both rows and columns even when the model flags all or nothing
        display_labels=["genuine", "fraud"],
        ax=ax,
        colorbar=False,
    )
    ax.set_title(f"Confusion matrix at threshold {scorer.threshold:.3f}")
    figures["confusion_matrix.png"] = fig
    return figures
