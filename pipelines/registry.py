"""Promotion: registry stage and champion alias together, gated, with a queryable history.

Aliases keep no history, so every promotion is also recorded as a run in the promotion
experiment (who, what, when, why, the metrics it was decided on) and as version tags.
"""

from __future__ import annotations

import getpass
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.evaluate import evaluate_scores, known_compromised
from pipelines.features import build_features
from pipelines.model import load_scorer
from pipelines.settings import Settings
from pipelines.split import day_after_last
from pipelines.tracking import configure_tracking, ensure_experiment

STAGES = ("Production", "Staging")


class PromotionError(ValueError):
    """A promotion request that cannot be carried out (unknown version, bad stage, no data)."""


@dataclass(frozen=True)
class PromotionDecision:
    version: str
    stage: str
    promoted: bool
    reason: str
    champion_before: str | None
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    eval_window: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise PromotionError(f"model {name!r} has no version {version}") from exc


def champion_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version the alias points to, or None when there is no champion yet."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def served_version(client: MlflowClient, settings: Settings) -> ModelVersion | None:
    """The version the API serves: the Production stage or the champion alias, as
    `serving.model_source` says; None when there is none. Registry outages raise."""
    name = settings.mlflow.model_name
    try:
        if settings.serving.model_source == "alias":
            return client.get_model_version_by_alias(name, settings.mlflow.champion_alias)
        latest = client.get_latest_versions(name, stages=["Production"])
        return latest[0] if latest else None
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def newest_version(client: MlflowClient, name: str) -> ModelVersion:
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise PromotionError(f"model {name!r} has no registered version: train one first")
    return max(versions, key=lambda v: int(v.version))


def set_stage(
    settings: Settings,
    version: str,
    stage: str,
    reason: str,
    actor: str | None = None,
) -> PromotionDecision:
    """Move a version to Staging or Production by hand (or from a script), recording why."""
    if stage not in STAGES:
        raise PromotionError(f"stage must be one of {STAGES}, not {stage!r}")
    client = configure_tracking(settings)
    name, alias = settings.mlflow.model_name, settings.mlflow.champion_alias
    target = get_version(client, name, version)
    before = champion_version(client, name, alias)
    decision = PromotionDecision(
        version=str(target.version),
        stage=stage,
        promoted=stage == "Production",
        reason=reason,
        champion_before=str(before.version) if before else None,
    )
    apply_decision(client, settings, decision, actor)
    return decision


def apply_decision(
    client: MlflowClient, settings: Settings, decision: PromotionDecision, actor: str | None
) -> None:
    """Production archives the previous Production version and moves the champion alias;
    Staging takes the alias away if the version held it."""
    name, alias = settings.mlflow.model_name, settings.mlflow.champion_alias
    client.transition_model_version_stage(
        name, decision.version, decision.stage, archive_existing_versions=decision.promoted
    )
    if decision.promoted:
        client.set_registered_model_alias(name, alias, decision.version)
    elif decision.champion_before == decision.version:
        client.delete_registered_model_alias(name, alias)
    record_promotion(client, settings, decision, actor)


def record_promotion(
    client: MlflowClient, settings: Settings, decision: PromotionDecision, actor: str | None
) -> None:
    """Write the decision to the version (tags, description) and to the promotion history."""
    name = settings.mlflow.model_name
    actor = actor or getpass.getuser()
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    client.set_model_version_tag(name, decision.version, "promotion.stage", decision.stage)
    client.set_model_version_tag(name, decision.version, "promotion.at", when)
    client.set_model_version_tag(name, decision.version, "promotion.by", actor)
    client.set_model_version_tag(name, decision.version, "promotion.reason", decision.reason[:4000])
    current = client.get_model_version(name, decision.version).description or ""
    line = f"[{when}] {decision.stage} by {actor}: {decision.reason}"
    client.update_model_version(name, decision.version, description=f"{current}\n{line}".strip())
    experiment_id = ensure_experiment(settings, settings.mlflow.promotion_experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"v{decision.version}") as run:
        mlflow.set_tags(
            {
                "fraudflow.step": "promote",
                "model_name": name,
                "model_version": decision.version,
                "stage": decision.stage,
                "promoted": str(decision.promoted).lower(),
                "actor": actor,
                "reason": decision.reason[:4000],
                "champion_before": decision.champion_before or "",
            }
        )
        metrics = {f"candidate_{k}": v for k, v in decision.candidate_metrics.items()}
        metrics.update({f"champion_{k}": v for k, v in decision.champion_metrics.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if pd.notna(v)})
        mlflow.log_dict(decision.as_dict(), "decision.json")
    client.set_model_version_tag(name, decision.version, "promotion.record_run", run.info.run_id)


def promotion_history(settings: Settings) -> pd.DataFrame:
    """Every recorded promotion decision, newest first."""
    configure_tracking(settings)
    experiment = mlflow.get_experiment_by_name(settings.mlflow.promotion_experiment)
    columns = ["time", "version", "stage", "promoted", "actor", "reason", "champion_before"]
    if experiment is None:
        return pd.DataFrame(columns=columns)
    runs = mlflow.search_runs([experiment.experiment_id], order_by=["start_time DESC"])
    if runs.empty:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(
        {
            "time": runs["start_time"],
            "version": runs["tags.model_version"],
            "stage": runs["tags.stage"],
            "promoted": runs["tags.promoted"] == "true",
            "actor": runs["tags.actor"],
            "reason": runs["tags.reason"],
            "champion_before": runs["tags.champion_before"],
        }
    )


@dataclass(frozen=True)
class EvaluationPeriod:
    """The most recent labelled days, featurized once for every model compared on them."""

    raw: pd.DataFrame
    features: pd.DataFrame
    window: dict[str, str]


def recent_period(
    transactions: pd.DataFrame, settings: Settings, features: pd.DataFrame | None = None
) -> EvaluationPeriod:
    """The last `eval_days` of labelled data, with their point-in-time features (`features`:
    already computed for all of `transactions`, index-aligned).

    Cards with a fraud label matured within `known_cards_lookback_days` before a day are taken
    as already blocked and left out, as the handbook does for its test weeks.
    """
    end = day_after_last(transactions["tx_datetime"])
    start = end - pd.Timedelta(days=settings.promotion.eval_days)
    lookback = start - pd.Timedelta(days=settings.promotion.known_cards_lookback_days)
    recent = (transactions["tx_datetime"] >= start).to_numpy()
    known = known_compromised(
        transactions["customer_id"][recent],
        transactions["tx_datetime"][recent],
        transactions.loc[(transactions["tx_datetime"] >= lookback).to_numpy()],
        settings.features.label_delay_days,
    )
    raw = transactions.loc[recent].loc[~known]
    if raw["tx_fraud"].sum() == 0:
        raise PromotionError(f"no fraud in the evaluation period {start.date()}..{end.date()}")
    if features is None:
        features = build_features(transactions, settings.features)
    features = features.loc[raw.index]
    window = {"eval_start": start.date().isoformat(), "eval_end": end.date().isoformat()}
    return EvaluationPeriod(raw, features, window)


def evaluate_on(model_uri: str, period: EvaluationPeriod, settings: Settings) -> dict[str, float]:
    """Headline metrics of a registered model on the evaluation period."""
    scorer = load_scorer(model_uri)
    scores = scorer.predict_proba(period.features)
    return evaluate_scores(period.raw, scores, scorer.threshold, settings.training.card_precision_k)


def gate_failures(metrics: dict[str, float], gates: dict[str, float]) -> list[str]:
    """Human-readable reasons a model misses the absolute quality gates (empty: passes)."""
    failures = []
    for metric, minimum in gates.items():
        if metric not in metrics:
            raise PromotionError(f"gate on unknown metric {metric!r}; known: {sorted(metrics)}")
        value = metrics[metric]
        if not value >= minimum:
            failures.append(f"{metric} {value:.4f} < gate {minimum:.4f}")
    return failures


def promote_if_better(
    settings: Settings,
    transactions: pd.DataFrame,
    actor: str | None = None,
    candidate_version: str | None = None,
    auto_promote: bool = True,
    features: pd.DataFrame | None = None,
) -> PromotionDecision:
    """Promote a candidate (default: the newest version) only if it passes the gates and beats
    the champion on the same recent labelled period. With `auto_promote` off, a candidate that
    qualifies waits in Staging for a person to promote it."""
    client = configure_tracking(settings)
    name, alias = settings.mlflow.model_name, settings.mlflow.champion_alias
    if candidate_version is None:
        candidate = newest_version(client, name)
    else:
        candidate = get_version(client, name, candidate_version)
    champion = champion_version(client, name, alias)
    if champion is not None and str(champion.version) == str(candidate.version):
        return PromotionDecision(
            str(candidate.version),
            "Production",
            False,
            "already the champion",
            str(champion.version),
        )
    period = recent_period(transactions, settings, features)
    window = period.window
    candidate_metrics = evaluate_on(f"models:/{name}/{candidate.version}", period, settings)
    failures = gate_failures(candidate_metrics, settings.promotion.gates)
    champion_metrics: dict[str, float] = {}
    metric, margin = settings.promotion.compare_metric, settings.promotion.min_improvement
    if champion is not None:
        champion_metrics = evaluate_on(f"models:/{name}/{champion.version}", period, settings)
        if not candidate_metrics[metric] >= champion_metrics[metric] + margin:
            failures.append(
                f"{metric} {candidate_metrics[metric]:.4f} does not beat champion "
                f"v{champion.version} ({champion_metrics[metric]:.4f}) by {margin:.4f}"
            )
    promoted = not failures and auto_promote
    if not failures:
        against = f"champion v{champion.version}" if champion else "no champion"
        reason = (
            f"auto: passes gates and {metric} {candidate_metrics[metric]:.4f} vs {against} "
            f"on {window['eval_start']}..{window['eval_end']}"
        )
        if not auto_promote:
            reason += (
                "; automatic promotion is off: waits in Staging for a person to promote it "
                f"(MLflow UI, or fraudflow promote --version {candidate.version} "
                "--stage Production)"
            )
    else:
        reason = "auto: held in Staging: " + "; ".join(failures)
    decision = PromotionDecision(
        version=str(candidate.version),
        stage="Production" if promoted else "Staging",
        promoted=promoted,
        reason=reason,
        champion_before=str(champion.version) if champion else None,
        candidate_metrics=candidate_metrics,
        champion_metrics=champion_metrics,
        eval_window=window,
    )
    apply_decision(client, settings, decision, actor)
    return decision
