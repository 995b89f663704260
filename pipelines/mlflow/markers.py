"""The two registry markers of the model in service, and which one to follow.

A person promotes in the MLflow UI in one of two ways: MLflow 3's default registry UI moves the
alias (`@champion`), the legacy UI transitions a version to the stage Production. Either gesture
promotes. Between the gesture and the registry sync bringing the other marker into line, the
two markers disagree; the rule that settles it (`follow`) is shared by the API (which only
reads) and the sync (which writes):

- the marker that moved since the last look wins: an alias moved to another version, or a
  version that entered Production;
- when both moved to different versions at once, or at the first look (start-up, and any
  reader that keeps no memory: batch scoring, the monitor, promotion), the alias wins;
- when neither moved, the version followed before stays while a marker still names it;
- a marker that disappears (the alias deleted, the Production version archived with none
  entering) is not a promotion: the other marker still names the version in service. Taking a
  model out of service is `fraudflow promote --stage Staging`, which moves both.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.mlflow.store import MlflowClient, MlflowException

PRODUCTION = "Production"
# which marker decided: the alias moved, a version entered Production, both moved to the same
# version (a promotion that sets both), the first look (no memory: the alias wins), or nothing
# moved and the version followed before is still named
GESTURES = ("alias", "stage", "both", "start", "kept")


@dataclass(frozen=True)
class Markers:
    """What the registry says at one look: the version holding the champion alias and the
    versions in Production with the time each last changed (newest first)."""

    alias: str | None
    production: tuple[tuple[str, int], ...] = ()

    @property
    def stage(self) -> str | None:
        """The Production version that changed last (MLflow leaves several in Production when
        a transition does not archive the existing one)."""
        return self.production[0][0] if self.production else None

    @property
    def production_versions(self) -> tuple[str, ...]:
        return tuple(version for version, _ in self.production)

    @property
    def agree(self) -> bool:
        """Both markers name the same one version, or neither names any."""
        if self.alias is None and not self.production:
            return True
        return self.production_versions == (self.alias,)

    def describe(self) -> dict[str, object]:
        return {
            "alias": self.alias,
            "production": list(self.production_versions),
            "agree": self.agree,
        }


@dataclass(frozen=True)
class Choice:
    """The version to serve and the marker that named it (one of GESTURES); version None when
    neither marker names any."""

    version: str | None
    gesture: str


def read_markers(client: MlflowClient, name: str, alias: str) -> Markers:
    """Both markers of model `name`, read now. Registry outages raise; a model that does not
    exist yet has no marker."""
    try:
        holder = client.get_model_version_by_alias(name, alias)
        aliased: str | None = str(holder.version)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        aliased = None
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        versions = []
    production = sorted(
        (
            (str(v.version), int(v.last_updated_timestamp or 0))
            for v in versions
            if v.current_stage == PRODUCTION
        ),
        key=lambda pair: (pair[1], int(pair[0])),
        reverse=True,
    )
    return Markers(aliased, tuple(production))


def follow(seen: Markers | None, now: Markers, followed: str | None = None) -> Choice:
    """The version to serve given the markers `now`, what was `seen` at the last look (None:
    no memory) and the version `followed` then (the module's docstring has the rule)."""
    if seen is None:
        if now.alias is not None:
            return Choice(now.alias, "start")
        return Choice(now.stage, "start")
    alias_moved = now.alias is not None and now.alias != seen.alias
    before = set(seen.production_versions)
    entered = [v for v in now.production_versions if v not in before]
    if alias_moved and entered:
        if now.alias in entered:
            return Choice(now.alias, "both")
        return Choice(now.alias, "alias")
    if alias_moved:
        return Choice(now.alias, "alias")
    if entered:
        return Choice(entered[0], "stage")
    named = {now.alias, *now.production_versions} - {None}
    if followed is not None and followed in named:
        return Choice(followed, "kept")
    return follow(None, now)
