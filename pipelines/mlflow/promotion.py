"""Promotion policy: gated, compared with what is served, recorded.

A candidate reaches Production (stage and champion alias together) only if it passes the
absolute gates and beats the version in service (the stage or the alias, as
`mlflow.model_source` says: the same rule the API and the monitor follow) on the same recent
labelled period. Aliases keep no history, so every decision is also recorded as a run in the
promotion experiment (who, what, when, why, the metrics it was decided on) and as version tags.
With `integrity.model_key`, a version is signed (its booster and meta, as stored) before it is
placed in Production: an API holding the key serves no version promoted any other way.

With `promotion.live_evidence.required`, `promote_if_better` judges the challenger (the
`mlflow.challenger_alias` version, scored beside the champion on live traffic) and asks, besides
the gates, that its live record beat the champion's (`pipelines.live_evidence`); the decision
cites that record. A challenger is placed by `set_challenger` (signed like a champion).
"""

from __future__ import annotations

import getpass
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from pipelines.evaluate import evaluate_scores, known_compromised
from pipelines.features import build_features
from pipelines.integrity import MODEL_SIGNATURE_TAG, read_key, sign_model
from pipelines.live_evidence import LiveComparison, compare_live, flat_metrics
from pipelines.log.traffic import live_traffic
from pipelines.mlflow import models, runs, store
from pipelines.mlflow.registry import (
    PromotionError,
    append_description,
    challenger_version,
    champion_version,
    get_version,
    newest_version,
    place,
    served_version,
    tag_version,
)
from pipelines.settings import Settings
from pipelines.split import day_after_last

# on a version while `fraudflow promote` moves its markers (the time it began): the registry
# sync leaves a disagreement alone while a promotion of that version is under way
PROMOTING_TAG = "promotion.started"
OUTSIDE_ACTOR = "outside fraudflow"


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
    # how it was made: "cli" (`fraudflow promote` by hand), "auto" (its policy), or a gesture
    # outside fraudflow the registry sync followed, "alias" (moved) or "stage" (a transition)
    gesture: str = "cli"
    # the promotion gates' verdict on the version's test metrics, where the gates did not
    # decide (a gesture outside fraudflow): "passed", or "failed: ..." for a human override
    gates: str | None = None
    # passes every gate it was judged by (promoted, or waiting for a person or live evidence)
    qualified: bool = False
    # the live comparison with the champion it was judged on (`LiveComparison.as_dict`)
    live_evidence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def set_stage(
    settings: Settings,
    version: str,
    stage: str,
    reason: str,
    actor: str | None = None,
) -> PromotionDecision:
    """Move a version to Staging or Production by hand (or from a script), recording why."""
    client = store.client(settings)
    target = get_version(client, settings.mlflow.model_name, version)
    before = served_version(client, settings)
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
    """Carry the decision out in the registry (a version going to Production signed first,
    when a model key is configured), then record it."""
    name, alias = settings.mlflow.model_name, settings.mlflow.champion_alias
    started = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    tag_version(client, name, decision.version, {PROMOTING_TAG: started})
    if decision.stage == "Production":
        sign_version(client, settings, decision.version)
    holder = champion_version(client, name, alias)
    holds_alias = holder is not None and str(holder.version) == decision.version
    place(client, settings, decision.version, decision.stage, holds_alias)
    if decision.stage == "Production":
        challenger = challenger_version(client, settings)
        if challenger is not None and str(challenger.version) == decision.version:
            # the challenger is the champion now: nothing is scored beside it until a new one
            client.delete_registered_model_alias(name, settings.mlflow.challenger_alias)
    record_promotion(client, settings, decision, actor)


def set_challenger(
    settings: Settings, version: str, reason: str, actor: str | None = None, gesture: str = "cli"
) -> PromotionDecision:
    """Place a version as the challenger (`mlflow.challenger_alias`): the API scores it beside
    the champion (shadow or canary) until live evidence decides. Signed first when a model key
    is configured, as a champion is, since a canary challenger answers. Recorded like a
    promotion, with the stage "Challenger"."""
    client = store.client(settings)
    name = settings.mlflow.model_name
    target = get_version(client, name, version)
    champion = served_version(client, settings)
    if champion is not None and str(champion.version) == str(target.version):
        raise PromotionError(
            f"{name} v{target.version} is the champion: a challenger must be another version"
        )
    sign_version(client, settings, str(target.version))
    client.set_registered_model_alias(name, settings.mlflow.challenger_alias, str(target.version))
    decision = PromotionDecision(
        version=str(target.version),
        stage="Challenger",
        promoted=False,
        reason=reason,
        champion_before=str(champion.version) if champion else None,
        gesture=gesture,
    )
    record_promotion(client, settings, decision, actor)
    return decision


def sign_version(client: MlflowClient, settings: Settings, version: str) -> str | None:
    """Sign the version's booster and meta, as the registry stores them, with
    `integrity.model_key` and tag the version with the signature; None (nothing done) when no
    key is configured. A configured key that cannot be read raises before anything changes."""
    key = read_key(settings.integrity.model_key, "integrity.model_key")
    if key is None:
        return None
    name = settings.mlflow.model_name
    with tempfile.TemporaryDirectory() as folder:
        booster, meta = models.download_model_files(
            settings, f"models:/{name}/{version}", Path(folder)
        )
        signature = sign_model(key, name, str(version), booster, meta)
    tag_version(client, name, str(version), {MODEL_SIGNATURE_TAG: signature})
    return signature


def record_promotion(
    client: MlflowClient, settings: Settings, decision: PromotionDecision, actor: str | None
) -> None:
    """Write the decision to the version (tags, description) and to the promotion history."""
    name = settings.mlflow.model_name
    actor = actor or getpass.getuser()
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    reason = decision.reason[:4000]
    tags = {
        "promotion.stage": decision.stage,
        "promotion.at": when,
        "promotion.by": actor,
        "promotion.reason": reason,
        "promotion.gesture": decision.gesture,
    }
    if decision.gates is not None:
        tags["promotion.gates"] = decision.gates[:4000]
    tag_version(client, name, decision.version, tags)
    append_description(
        client, name, decision.version, f"[{when}] {decision.stage} by {actor}: {decision.reason}"
    )
    metrics = {f"candidate_{k}": v for k, v in decision.candidate_metrics.items()}
    metrics.update({f"champion_{k}": v for k, v in decision.champion_metrics.items()})
    if decision.live_evidence:
        metrics.update(flat_metrics(decision.live_evidence))
    run_id = runs.log_promotion(
        settings,
        decision.version,
        {
            "model_name": name,
            "model_version": decision.version,
            "stage": decision.stage,
            "promoted": str(decision.promoted).lower(),
            "actor": actor,
            "reason": reason,
            "champion_before": decision.champion_before or "",
            "gesture": decision.gesture,
            "gates": decision.gates or "",
            "live_verdict": decision.live_evidence.get("verdict", ""),
        },
        metrics,
        decision.as_dict(),
    )
    tag_version(client, name, decision.version, {"promotion.record_run": run_id})


def promotion_history(settings: Settings) -> pd.DataFrame:
    """Every recorded promotion decision, newest first."""
    columns = [
        "time",
        "version",
        "stage",
        "promoted",
        "actor",
        "gesture",
        "reason",
        "champion_before",
        "gates",
    ]
    found = runs.promotion_runs(settings)
    if found.empty:
        return pd.DataFrame(columns=columns)

    def tag(key: str, default: str) -> pd.Series:
        """A tag that records older than it do not carry."""
        column = f"tags.{key}"
        if column not in found:
            return pd.Series(default, index=found.index)
        return found[column].fillna(default)

    return pd.DataFrame(
        {
            "time": found["start_time"],
            "version": found["tags.model_version"],
            "stage": found["tags.stage"],
            "promoted": found["tags.promoted"] == "true",
            "actor": found["tags.actor"],
            "gesture": tag("gesture", ""),
            "reason": found["tags.reason"],
            "champion_before": found["tags.champion_before"],
            "gates": tag("gates", ""),
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
    scorer = models.load_scorer(settings, model_uri)
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


def training_gate_failures(test_metrics: dict[str, float], gates: dict[str, float]) -> list[str]:
    """Reasons a freshly trained model's test metrics miss the gates (empty: passes), so that
    CI and `promote_if_better` judge a model by the same minimums. A gate on a metric training
    does not report is a failure, not an error: a typo in the gates must fail CI."""
    unknown = sorted(set(gates) - set(test_metrics))
    if unknown:
        return [f"gate on {name}, which training does not report" for name in unknown]
    return gate_failures(test_metrics, gates)


def live_comparison(
    settings: Settings, champion: str, challenger: str, until: datetime | None = None
) -> LiveComparison:
    """The two versions' record on the prediction log of the last `window_days` days (to
    `until`, default now), labels as they have arrived."""
    evidence = settings.promotion.live_evidence
    until = until or datetime.now(timezone.utc)
    since = until - timedelta(days=evidence.window_days)
    shared = live_traffic(settings, since, until, champion, challenger)
    return compare_live(shared, champion, challenger, settings.training.card_precision_k, evidence)


def _candidate(client: MlflowClient, settings: Settings, version: str | None, live: bool):
    """The version judged: the one asked for; else the challenger on live evidence, the
    newest version otherwise."""
    name = settings.mlflow.model_name
    if version is not None:
        return get_version(client, name, version)
    if not live:
        return newest_version(client, name)
    found = challenger_version(client, settings)
    if found is None:
        raise PromotionError(
            f"live evidence is required and no version of {name!r} is the challenger "
            f"(@{settings.mlflow.challenger_alias}): set one with `fraudflow promote --version N "
            "--challenger`, or let `fraudflow retrain` set it"
        )
    return found


def _waiting(settings: Settings, version: str) -> str:
    """What a qualified candidate that is not promoted now waits for."""
    if settings.promotion.live_evidence.required:
        return (
            f"; live evidence is required: waits as @{settings.mlflow.challenger_alias}, scored "
            "beside the champion, until `fraudflow promote --auto` finds its live record better"
        )
    return (
        "; automatic promotion is off: waits in Staging for a person to promote it "
        f"(MLflow UI, or fraudflow promote --version {version} --stage Production)"
    )


def promote_if_better(
    settings: Settings,
    transactions: pd.DataFrame,
    actor: str | None = None,
    candidate_version: str | None = None,
    auto_promote: bool = True,
    features: pd.DataFrame | None = None,
    live_evidence: bool | None = None,
) -> PromotionDecision:
    """Promote a candidate only if it passes the gates and beats the version in service on
    the same recent labelled period; with `live_evidence` (default:
    `promotion.live_evidence.required`), the candidate is the challenger (unless named) and its
    live record beside the champion must beat the champion's too. With `auto_promote` off, a
    candidate that qualifies waits in Staging."""
    client = store.client(settings)
    name = settings.mlflow.model_name
    live = settings.promotion.live_evidence.required if live_evidence is None else live_evidence
    candidate = _candidate(client, settings, candidate_version, live)
    champion = served_version(client, settings)
    if champion is not None and str(champion.version) == str(candidate.version):
        return PromotionDecision(
            str(candidate.version),
            "Production",
            False,
            "already the champion",
            str(champion.version),
            gesture="auto",
        )
    period = recent_period(transactions, settings, features)
    window = period.window
    candidate_metrics = evaluate_on(f"models:/{name}/{candidate.version}", period, settings)
    failures = gate_failures(candidate_metrics, settings.promotion.gates)
    champion_metrics: dict[str, float] = {}
    metric, margin = settings.promotion.compare_metric, settings.promotion.min_improvement
    evidence: LiveComparison | None = None
    if champion is not None:
        champion_metrics = evaluate_on(f"models:/{name}/{champion.version}", period, settings)
        if not candidate_metrics[metric] >= champion_metrics[metric] + margin:
            failures.append(
                f"{metric} {candidate_metrics[metric]:.4f} does not beat champion "
                f"v{champion.version} ({champion_metrics[metric]:.4f}) by {margin:.4f}"
            )
        if live:
            evidence = live_comparison(settings, str(champion.version), str(candidate.version))
            failures += list(evidence.reasons)
    promoted = not failures and auto_promote
    if not failures:
        against = f"champion v{champion.version}" if champion else "no champion"
        reason = (
            f"auto: passes gates and {metric} {candidate_metrics[metric]:.4f} vs {against} "
            f"on {window['eval_start']}..{window['eval_end']}"
        )
        if live and champion is None:
            reason += "; no champion to compare with on live traffic"
        if not auto_promote:
            reason += _waiting(settings, str(candidate.version))
    else:
        reason = "auto: held in Staging: " + "; ".join(failures)
    if evidence is not None:
        reason += f" ({evidence.summary_line()})"
    decision = PromotionDecision(
        version=str(candidate.version),
        stage="Production" if promoted else "Staging",
        promoted=promoted,
        reason=reason,
        champion_before=str(champion.version) if champion else None,
        candidate_metrics=candidate_metrics,
        champion_metrics=champion_metrics,
        eval_window=window,
        gesture="auto",
        qualified=not failures,
        live_evidence=evidence.as_dict() if evidence is not None else {},
    )
    apply_decision(client, settings, decision, actor)
    return decision


RECORDED_TAGS = ("threshold", "promotion.at", "promotion.by", "promotion.reason")


def champion_record(settings: Settings) -> dict[str, Any]:
    """The served version's identity, promotion tags and test metrics (stage or alias, as
    `mlflow.model_source` says): what a reviewed file in git keeps of each promotion.
    PromotionError when no version is in service."""
    client = store.client(settings)
    name = settings.mlflow.model_name
    version = served_version(client, settings)
    if version is None:
        raise PromotionError(f"no version of {name!r} is in service: nothing to record")
    tags = dict(version.tags or {})
    return {
        "name": name,
        "version": str(version.version),
        "alias": settings.mlflow.champion_alias,
        "stage": version.current_stage,
        "run_id": version.run_id,
        "source": version.source,
        "tags": {
            key: tags[key]
            for key in sorted(tags)
            if key in RECORDED_TAGS or key.startswith(runs.TEST_METRIC_TAG)
        },
    }
