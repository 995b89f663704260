"""Retraining: the latest labelled data, the champion's configuration, a registered challenger
compared with the champion on the same most recent labelled period.

Runs: a parent `retrain` run (tagged with what triggered it) holding the nested training run
that registers the challenger (and, with `retraining.search`, one nested run per tried
configuration). The gated decision is recorded in the promotion experiment as usual.

A new version that passes the offline gates but is not promoted (automatic promotion off, or
live evidence required: then retraining never promotes) becomes the challenger
(`mlflow.challenger_alias`), scored beside the champion until a person or its live record
decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from pipelines.features import build_features
from pipelines.mlflow import runs, store
from pipelines.mlflow.promotion import PromotionDecision, promote_if_better, set_challenger
from pipelines.mlflow.registry import place, served_version
from pipelines.settings import RAW_COLUMNS, Settings
from pipelines.training import record
from pipelines.training.train import TrainingResult, train_model


@dataclass(frozen=True)
class RetrainResult:
    run_id: str
    training_run_id: str
    version: str
    decision: PromotionDecision
    trigger: dict[str, str]
    rows: dict[str, int]
    trials: list[dict[str, Any]] = field(default_factory=list)
    # the new version was made the challenger (scored beside the champion)
    challenger: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "training_run_id": self.training_run_id,
            "challenger_version": self.version,
            "promoted": self.decision.promoted,
            "stage": self.decision.stage,
            "reason": self.decision.reason,
            "champion_before": self.decision.champion_before,
            "challenger_metrics": self.decision.candidate_metrics,
            "champion_metrics": self.decision.champion_metrics,
            "eval_window": self.decision.eval_window,
            "trigger": self.trigger,
            "rows": self.rows,
            "trials": self.trials,
            "challenger": self.challenger,
        }


def assemble(history: pd.DataFrame, production: pd.DataFrame) -> pd.DataFrame:
    """History plus labelled production rows it does not hold yet, in time order."""
    columns = [*RAW_COLUMNS, "tx_fraud"]
    new = production.loc[~production["transaction_id"].isin(history["transaction_id"])]
    if new.empty:  # an empty frame's object columns would turn the labels into objects
        return history[columns].sort_values("tx_datetime", kind="stable").reset_index(drop=True)
    new = new[columns].astype(history[columns].dtypes.to_dict())
    combined = pd.concat([history[columns], new], ignore_index=True)
    return combined.sort_values("tx_datetime", kind="stable").reset_index(drop=True)


def champion_configuration(settings: Settings) -> tuple[Settings, str | None]:
    """The settings with the training configuration the served version's run logged (the
    configured one when nothing is served yet, or its run logged none)."""
    champion = served_version(store.client(settings), settings)
    if champion is None:
        return settings, None
    training = runs.training_configuration(settings, champion.run_id)
    if training is None:
        return settings, str(champion.version)
    return settings.model_copy(update={"training": training}), str(champion.version)


def with_lightgbm(settings: Settings, overlay: Mapping[str, Any]) -> Settings:
    lightgbm = {**settings.training.lightgbm, **overlay}
    return settings.model_copy(
        update={"training": settings.training.model_copy(update={"lightgbm": lightgbm})}
    )


def _search(
    data: pd.DataFrame, features: pd.DataFrame, base: Settings
) -> tuple[TrainingResult, Settings, list[dict[str, Any]]]:
    """With `retraining.search`, train the base configuration and each overlay as nested runs;
    the best on validation average precision wins (the test period stays untouched by the
    choice). Without it, the base configuration alone, with no trial runs."""
    if not base.retraining.search:
        return train_model(data, base, features), base, []
    tried = []
    for number, overlay in enumerate([{}, *base.retraining.search]):
        settings = with_lightgbm(base, overlay)
        result = train_model(data, settings, features)
        runs.log_trial(base, number, result.params, result.validation_metrics)
        tried.append((overlay, result, settings))
    trials = [
        {
            "overlay": dict(o),
            "validation_average_precision": r.validation_metrics["average_precision"],
        }
        for o, r, _ in tried
    ]
    _, result, settings = max(tried, key=lambda t: t[1].validation_metrics["average_precision"])
    return result, settings, trials


def retrain(
    settings: Settings,
    history: pd.DataFrame,
    production: pd.DataFrame,
    trigger: Mapping[str, str],
    data_path: str = "",
) -> RetrainResult:
    """Retrain on history + labelled production data, register the challenger (Staging), and
    promote it only if it passes the gates and beats the champion by the configured margin;
    with live evidence required, or automatic promotion off, a version that qualifies becomes
    the challenger instead."""
    data = assemble(history, production)
    base, champion = champion_configuration(settings)
    rows = {
        "history_rows": len(history),
        "production_rows": len(production),
        "new_production_rows": len(data) - len(history),
        "training_data_rows": len(data),
    }
    trigger = {k: str(v) for k, v in trigger.items()}
    tags = {"fraudflow.step": "retrain", "champion_version": champion or "", **trigger}
    params = {**rows, "data_path": data_path, "search_size": len(base.retraining.search)}
    with runs.retraining_run(settings, tags, params) as run_id:
        features = build_features(data, base.features)
        result, chosen, trials = _search(data, features, base)
        description = record.data_description(data_path, data)
        version_tags = {**trigger, "retrain_run_id": run_id}
        training_run_id, version = record.log_training_run(
            result, chosen, description, version_tags
        )
    place(store.client(settings), settings, str(version.version), "Staging", False)
    live_required = settings.promotion.live_evidence.required
    decision = promote_if_better(
        settings,
        data,
        actor="fraudflow retrain",
        candidate_version=str(version.version),
        auto_promote=settings.retraining.auto_promote and not live_required,
        features=features,
        live_evidence=False,  # a version just trained has no live record yet
    )
    challenger = decision.qualified and not decision.promoted
    if challenger:
        set_challenger(
            settings,
            str(version.version),
            f"retrained and passes the offline gates: {decision.reason}",
            actor="fraudflow retrain",
            gesture="auto",
        )
    runs.tag_run(
        settings,
        run_id,
        {
            "challenger_version": str(version.version),
            "promoted": str(decision.promoted).lower(),
            "challenger": str(challenger).lower(),
            "decision": decision.reason[:4000],
        },
    )
    return RetrainResult(
        run_id=run_id,
        training_run_id=training_run_id,
        version=str(version.version),
        decision=decision,
        trigger=trigger,
        rows=rows,
        trials=trials,
        challenger=challenger,
    )
