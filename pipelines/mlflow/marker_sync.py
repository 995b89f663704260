"""The registry sync: after a promotion made outside fraudflow, the other marker follows.

A person who moves `@champion` in MLflow 3's UI leaves the stage behind; one who transitions
a version to Production in the legacy UI leaves the alias behind. The API follows either at
once (`pipelines.mlflow.markers`); this component, holding the registry's write account,
brings the other marker into line, so that the registry never shows two answers for long:

- the stage follows an alias move (the version goes to Production, the one there before is
  archived), the alias follows a stage transition (and any other Production version is
  archived);
- the version is signed first when `integrity.model_key` is configured (as `fraudflow
  promote` does), so that an API holding the key serves it;
- a promotion record is written (`promotion.record_promotion`): the version, the gesture, the
  time, "outside fraudflow" as the actor, and the promotion gates' verdict on the version's
  test metrics as information. A person may promote a version the gates fail (an override):
  the record and the log flag it, nothing refuses it.

A disagreement while `fraudflow promote` is moving the markers of that version (its
`promotion.started` tag is newer than its `promotion.at`) is left alone, and the markers are
read twice before anything is written, so that only a gesture that has settled is followed.
MLflow offers no compare-and-set: a marker is written only when it is not already right, so a
person's gesture on the marker that was right is never undone; one made on the other marker in
the very instant the sync writes it can be (the next gesture wins again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from pipelines.mlflow import runs, store
from pipelines.mlflow.markers import Choice, Markers, follow, read_markers
from pipelines.mlflow.promotion import (
    OUTSIDE_ACTOR,
    PROMOTING_TAG,
    PromotionDecision,
    record_promotion,
    sign_version,
    training_gate_failures,
)
from pipelines.mlflow.registry import enter_production, tag_version
from pipelines.mlflow.store import MlflowClient, ModelVersion
from pipelines.settings import Settings

log = logging.getLogger(__name__)

# a `fraudflow promote` that began longer ago than this and never finished (it crashed between
# moving one marker and the other) no longer holds the sync back
PROMOTING_GRACE = timedelta(minutes=2)
ALIGNED_TAG = "promotion.aligned_at"


@dataclass
class SyncPass:
    """What one pass saw and did."""

    markers: Markers
    choice: Choice
    # "agree" (nothing to do), "aligned", "promoting" (fraudflow promote under way),
    # "moving" (the markers changed while this pass read them), "none" (no marker is set)
    outcome: str
    # the promotion record written, when the version in service changed
    decision: PromotionDecision | None = None
    actions: list[str] = field(default_factory=list)


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def promotion_under_way(version: ModelVersion, now: datetime) -> bool:
    """True while `fraudflow promote` is moving this version's markers: it tagged the start
    and has not recorded the end, and began less than PROMOTING_GRACE ago."""
    tags = version.tags or {}
    started = _time(tags.get(PROMOTING_TAG))
    if started is None or now - started > PROMOTING_GRACE:
        return False
    finished = _time(tags.get("promotion.at"))
    return finished is None or finished < started.replace(microsecond=0)


def gates_verdict(version: ModelVersion, settings: Settings) -> str:
    """The promotion gates on the version's held-out test metrics: "passed" or "failed: ..."."""
    failures = training_gate_failures(runs.version_test_metrics(version), settings.promotion.gates)
    return "failed: " + "; ".join(failures) if failures else "passed"


class RegistrySync:
    """Brings the other marker into line after a promotion made outside fraudflow.

    It remembers the markers as it left them, so that the next pass knows which marker a
    person moved since: `expected` and `followed` (from the last run's heartbeat, so that a
    restarted sync keeps its memory; None at its very first pass, where the alias wins)."""

    def __init__(
        self,
        settings: Settings,
        client: MlflowClient | None = None,
        expected: Markers | None = None,
        followed: str | None = None,
    ) -> None:
        self.settings = settings
        self.client = client or store.client(settings)
        self.expected = expected
        self.followed = followed

    def memory(self) -> dict[str, object] | None:
        """What it remembers, as JSON (the heartbeat keeps it for the next run)."""
        if self.expected is None:
            return None
        mlflow = self.settings.mlflow
        return {
            "model": mlflow.model_name,
            "alias_name": mlflow.champion_alias,
            "alias": self.expected.alias,
            "production": list(self.expected.production_versions),
            "followed": self.followed,
        }

    @classmethod
    def remembering(
        cls, settings: Settings, memory: object, client: MlflowClient | None = None
    ) -> "RegistrySync":
        """A sync that takes up `memory` (from `memory()` of an earlier run) when it is about
        this model and alias; anything else is ignored (the first-pass rule then applies)."""
        mlflow = settings.mlflow
        if not isinstance(memory, dict) or (memory.get("model"), memory.get("alias_name")) != (
            mlflow.model_name,
            mlflow.champion_alias,
        ):
            return cls(settings, client)
        alias, production, followed = (
            memory.get("alias"),
            memory.get("production"),
            memory.get("followed"),
        )
        if not (
            (alias is None or isinstance(alias, str))
            and isinstance(production, list)
            and all(isinstance(v, str) for v in production)
            and (followed is None or isinstance(followed, str))
        ):
            return cls(settings, client)
        expected = Markers(alias, tuple((v, 0) for v in production))
        return cls(settings, client, expected, followed)

    def _read(self) -> Markers:
        mlflow = self.settings.mlflow
        return read_markers(self.client, mlflow.model_name, mlflow.champion_alias)

    def run_once(self) -> SyncPass:
        """Read both markers; if they disagree, follow the one that moved. Registry errors
        raise (the loop reports them and tries again at its next interval)."""
        now = self._read()
        choice = follow(self.expected, now, self.followed)
        if choice.version is None:
            self.expected, self.followed = now, None
            return SyncPass(now, choice, "none")
        if now.agree:
            self.expected, self.followed = now, choice.version
            return SyncPass(now, choice, "agree")
        name = self.settings.mlflow.model_name
        target = self.client.get_model_version(name, choice.version)
        if promotion_under_way(target, datetime.now(timezone.utc)):
            return SyncPass(now, choice, "promoting")
        if self._read() != now:  # a gesture (or a promote) still moving: decide next pass
            return SyncPass(now, choice, "moving")
        return self._align(now, choice, target)

    def _align(self, now: Markers, choice: Choice, target: ModelVersion) -> SyncPass:
        name, alias = self.settings.mlflow.model_name, self.settings.mlflow.champion_alias
        version = str(target.version)
        gesture = "alias" if now.alias == version else "stage"
        before = self.followed
        if before is None:  # no memory: the version the other marker named was in service
            others = {now.alias, now.stage} - {None, version}
            before = min(others, key=int) if others else None
        actions = []
        signature = sign_version(self.client, self.settings, version)
        if signature is not None:
            actions.append(f"signed v{version}")
        # each marker is written only if it is not already right: a write to a marker that was
        # right would undo a person's gesture on it made since this pass read it
        if now.production_versions != (version,):
            enter_production(self.client, name, version)
            archived = [v for v in now.production_versions if v != version]
            actions.append(
                f"v{version} to Production"
                + (f", v{', v'.join(archived)} archived" if archived else "")
            )
        if now.alias != version:
            self.client.set_registered_model_alias(name, alias, version)
            actions.append(f"@{alias} to v{version}")
        when = datetime.now(timezone.utc).isoformat(timespec="seconds")
        tag_version(self.client, name, version, {ALIGNED_TAG: when})
        self.expected = Markers(version, ((version, 0),))
        previous, self.followed = self.followed, version
        if previous == version:  # a marker went missing and was put back: no promotion
            log.info("registry sync: %s (v%s stays in service)", "; ".join(actions), version)
            return SyncPass(now, choice, "aligned", None, actions)
        decision = self._record(target, gesture, before, actions)
        return SyncPass(now, choice, "aligned", decision, actions)

    def _record(
        self, target: ModelVersion, gesture: str, before: str | None, actions: list[str]
    ) -> PromotionDecision:
        version = str(target.version)
        alias = self.settings.mlflow.champion_alias
        gates = gates_verdict(target, self.settings)
        if gesture == "alias":
            moved = f"@{alias} moved to v{version}"
        else:
            moved = f"v{version} transitioned to Production"
        reason = f"{moved} outside fraudflow (MLflow UI or another client); {'; '.join(actions)}"
        if gates != "passed":
            reason += f"; human override: the promotion gates {gates}"
            log.warning("registry sync: v%s promoted although the gates %s", version, gates)
        decision = PromotionDecision(
            version=version,
            stage="Production",
            promoted=True,
            reason=reason,
            champion_before=before,
            candidate_metrics=runs.version_test_metrics(target),
            gesture=gesture,
            gates=gates,
        )
        record_promotion(self.client, self.settings, decision, OUTSIDE_ACTOR)
        log.info("registry sync: %s", reason)
        return decision
