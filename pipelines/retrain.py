"""Retraining: the latest labelled data, the champion's configuration, a registered challenger
compared with the champion on the same most recent labelled period.

Runs: a parent `retrain` run (tagged with what triggered it) holding the nested training run
that registers the challenger (and, with `retraining.search`, one nested run per tried
configuration). The gated decision is recorded in the promotion experiment as usual.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml

from pipelines.features import build_features
from pipelines.production import (
    attach_labels,
    labels_from_file,
    labels_from_state,
    read_predictions,
)
from pipelines.registry import PromotionDecision, champion_version, promote_if_better
from pipelines.settings import RAW_COLUMNS, Settings
from pipelines.tracking import (
    configure_tracking,
    data_description,
    ensure_experiment,
    log_training_run,
)
from pipelines.train import TrainingResult, train_model

# params that train.lightgbm_params adds itself; everything else logged as lgbm_* is config
_FIXED_PARAMS = {"objective", "metric", "verbosity"}
_TRAINING_PARAMS = ("imbalance_power", "max_rounds", "early_stopping_rounds")


@dataclass(frozen=True)
class RetrainResult:
    run_id: str
    training_run_id: str
    version: str
    decision: PromotionDecision
    trigger: dict[str, str]
    rows: dict[str, int]
    trials: list[dict[str, Any]] = field(default_factory=list)

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
        }


def label_sources(settings: Settings, extra_files: Sequence[Path] = ()) -> list[pd.DataFrame]:
    """Late labels: /feedback's (in the online state), then the configured label files, then
    `extra_files` (a later source corrects an earlier one)."""
    sources = [labels_from_state(settings.under_workdir(settings.serving.state_path))]
    files = [settings.under_workdir(f) for f in settings.monitoring.label_files]
    files += [Path(f) for f in extra_files]
    return sources + [labels_from_file(f, settings.data.columns) for f in files]


def production_transactions(
    settings: Settings, extra_label_files: Sequence[Path] = ()
) -> pd.DataFrame:
    """Every logged production transaction whose label has arrived, in the raw schema."""
    logged = read_predictions(settings.under_workdir(settings.serving.prediction_log_dir), None, ())
    if logged.empty:
        return pd.DataFrame(columns=[*RAW_COLUMNS, "tx_fraud"])
    sources = label_sources(settings, extra_label_files)
    labelled = attach_labels(logged, sources)
    labelled = labelled.loc[labelled["tx_fraud"].notna().to_numpy(), [*RAW_COLUMNS, "tx_fraud"]]
    return labelled.astype({"tx_fraud": int})


def assemble(history: pd.DataFrame, production: pd.DataFrame) -> pd.DataFrame:
    """History plus labelled production rows it does not hold yet, in time order."""
    columns = [*RAW_COLUMNS, "tx_fraud"]
    new = production.loc[~production["transaction_id"].isin(history["transaction_id"])]
    if new.empty:  # an empty frame's object columns would turn the labels into objects
        return history[columns].sort_values("tx_datetime", kind="stable").reset_index(drop=True)
    new = new[columns].astype(history[columns].dtypes.to_dict())
    combined = pd.concat([history[columns], new], ignore_index=True)
    return combined.sort_values("tx_datetime", kind="stable").reset_index(drop=True)


def _parse(value: str) -> Any:
    return yaml.safe_load(value)


def champion_configuration(settings: Settings) -> tuple[Settings, str | None]:
    """The settings with the champion run's LightGBM and training parameters (the configured
    ones when there is no champion yet)."""
    client = configure_tracking(settings)
    champion = champion_version(client, settings.mlflow.model_name, settings.mlflow.champion_alias)
    if champion is None:
        return settings, None
    params = client.get_run(champion.run_id).data.params
    lightgbm = {
        key.removeprefix("lgbm_"): _parse(value)
        for key, value in params.items()
        if key.startswith("lgbm_") and key.removeprefix("lgbm_") not in _FIXED_PARAMS
    }
    training = {name: _parse(params[name]) for name in _TRAINING_PARAMS if name in params}
    if "threshold_rule" in params:
        training["threshold"] = settings.training.threshold.model_copy(
            update={"rule": params["threshold_rule"]}
        )
    updated = settings.training.model_copy(
        update={"lightgbm": lightgbm or settings.training.lightgbm, **training}
    )
    return settings.model_copy(update={"training": updated}), str(champion.version)


def with_lightgbm(settings: Settings, overlay: Mapping[str, Any]) -> Settings:
    lightgbm = {**settings.training.lightgbm, **overlay}
    return settings.model_copy(
        update={"training": settings.training.model_copy(update={"lightgbm": lightgbm})}
    )


def _search(
    data: pd.DataFrame, features: pd.DataFrame, base: Settings, experiment_id: str
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
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"trial-{number}", nested=True):
            mlflow.set_tags({"fraudflow.step": "retrain-trial"})
            mlflow.log_params({f"lgbm_{k}": v for k, v in result.params.items()})
            mlflow.log_metrics(
                {f"validation_{k}": float(v) for k, v in result.validation_metrics.items()}
            )
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
    promote it only if it passes the gates and beats the champion by the configured margin."""
    client = configure_tracking(settings)
    data = assemble(history, production)
    base, champion = champion_configuration(settings)
    rows = {
        "history_rows": len(history),
        "production_rows": len(production),
        "new_production_rows": len(data) - len(history),
        "training_data_rows": len(data),
    }
    trigger = {k: str(v) for k, v in trigger.items()}
    experiment_id = ensure_experiment(settings, settings.mlflow.experiment)
    tags = {"fraudflow.step": "retrain", "champion_version": champion or "", **trigger}
    with mlflow.start_run(experiment_id=experiment_id, run_name="retrain", tags=tags) as parent:
        mlflow.log_params(
            {**rows, "data_path": data_path, "search_size": len(base.retraining.search)}
        )
        features = build_features(data, base.features)
        result, chosen, trials = _search(data, features, base, experiment_id)
        description = data_description(data_path, data)
        version_tags = {**trigger, "retrain_run_id": parent.info.run_id}
        training_run_id, version = log_training_run(result, chosen, description, version_tags)
    name = settings.mlflow.model_name
    client.transition_model_version_stage(name, version.version, "Staging")
    decision = promote_if_better(
        settings,
        data,
        actor="fraudflow retrain",
        candidate_version=str(version.version),
        auto_promote=settings.retraining.auto_promote,
        features=features,
    )
    client.set_tag(parent.info.run_id, "challenger_version", str(version.version))
    client.set_tag(parent.info.run_id, "promoted", str(decision.promoted).lower())
    client.set_tag(parent.info.run_id, "decision", decision.reason[:4000])
    return RetrainResult(
        run_id=parent.info.run_id,
        training_run_id=training_run_id,
        version=str(version.version),
        decision=decision,
        trigger=trigger,
        rows=rows,
        trials=trials,
    )
