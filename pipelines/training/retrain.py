"""Retraining: the latest labelled data, the champion's configuration, a registered challenger
compared with the champion on the same most recent labelled period.

Runs: a parent `retrain` run (tagged with what triggered it) holding the nested training run
that registers the challenger (and, with `retraining.params: search`, a nested `tune` run with
one nested run per trial). Where the parameters came from (`retraining.params`: the champion's,
the last search's, a search now) is a param and a tag of the run; the promotion gates decide as
for any challenger. The gated decision is recorded in the promotion experiment as usual.

A new version that passes the offline gates but is not promoted (automatic promotion off, or
live evidence required: then retraining never promotes) becomes the challenger
(`mlflow.challenger_alias`), scored beside the champion until a person or its live record
decides.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from pipelines.features import build_features
from pipelines.mlflow import runs, store
from pipelines.mlflow.promotion import PromotionDecision, promote_if_better, set_challenger
from pipelines.mlflow.registry import place, served_version
from pipelines.mlflow.tuning import last_search
from pipelines.settings import RAW_COLUMNS, Settings
from pipelines.training import record
from pipelines.training.train import train_model
from pipelines.training.tune import tune

log = logging.getLogger(__name__)


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
    # where the model configuration came from: champion, configured, last_search or search
    params_source: str = "champion"
    # the search run it came from (last_search, search)
    tune_run_id: str | None = None

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
            "params_source": self.params_source,
            "tune_run_id": self.tune_run_id,
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


@dataclass(frozen=True)
class Configuration:
    """The settings a retraining trains with, and where their model configuration came from."""

    settings: Settings
    source: str
    tune_run_id: str | None = None


def starting_configuration(settings: Settings) -> tuple[Configuration, str | None]:
    """The champion's configuration, or with `retraining.params: last_search` the newest
    finished search's (the champion's, said in the log, when there is none); and the champion's
    version."""
    base, champion = champion_configuration(settings)
    source = "champion" if base is not settings else "configured"
    if settings.retraining.params != "last_search":
        return Configuration(base, source), champion
    found = last_search(settings)
    if found is None:
        log.warning(
            "retraining.params is last_search, but experiment %r holds no finished tune run: "
            "retraining with the %s parameters",
            settings.mlflow.experiment,
            source,
        )
        return Configuration(base, source), champion
    run_id, training = found
    log.info("retraining with the best parameters of tune run %s", run_id)
    return (
        Configuration(settings.model_copy(update={"training": training}), "last_search", run_id),
        champion,
    )


def searched_configuration(
    data: pd.DataFrame, features: pd.DataFrame, start: Configuration, data_path: str
) -> tuple[Configuration, list[dict[str, Any]]]:
    """With `retraining.params: search`, a search from `start` on the retraining's data within
    retraining.search_budget, as a `tune` run nested in the retraining run; the resolved
    configuration and the trials. Its objective sees validation periods only: the test period
    the challenger is measured on stays out of the choice."""
    settings = start.settings
    result = tune(
        [(data_path or "retraining data", data)],
        settings,
        budget=settings.retraining.search_budget,
        features=[features],
        tags={"params_start": start.source},
    )
    trials = [
        {"number": t.number, "params": t.params, "validation_average_precision": t.value}
        for t in result.trials
    ]
    chosen = settings.model_copy(update={"training": result.training})
    return Configuration(chosen, "search", result.run_id), trials


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
    start, champion = starting_configuration(settings)
    base = start.settings
    rows = {
        "history_rows": len(history),
        "production_rows": len(production),
        "new_production_rows": len(data) - len(history),
        "training_data_rows": len(data),
    }
    trigger = {k: str(v) for k, v in trigger.items()}
    tags = {"fraudflow.step": "retrain", "champion_version": champion or "", **trigger}
    params = {**rows, "data_path": data_path, "retraining_params": settings.retraining.params}
    with runs.retraining_run(settings, tags, params) as run_id:
        features = build_features(data, base.features)
        chosen, trials = start, []
        if settings.retraining.params == "search":
            chosen, trials = searched_configuration(data, features, start, data_path)
        result = train_model(data, chosen.settings, features)
        description = record.data_description(data_path, data)
        version_tags = {**trigger, "retrain_run_id": run_id, **_source_tags(chosen)}
        training_run_id, version = record.log_training_run(
            result, chosen.settings, description, version_tags
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
            **_source_tags(chosen),
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
        params_source=chosen.source,
        tune_run_id=chosen.tune_run_id,
    )


def _source_tags(configuration: Configuration) -> dict[str, str]:
    tags = {"params_source": configuration.source}
    if configuration.tune_run_id:
        tags["tune_run_id"] = configuration.tune_run_id
    return tags
