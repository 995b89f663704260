"""Promotion by either registry marker: the rule that settles a disagreement between the
champion alias and the Production stage, the registry sync that brings the other marker into
line, and the API's model holder following a gesture made outside fraudflow. Against a real
MLflow store in a temporary folder; the gestures are MlflowClient calls, as any MLflow client
(the UI included) makes them."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from fraudflow import registry_sync
from fraudflow.cli import main
from pipelines.mlflow import store as mlflow_store
from pipelines.mlflow.marker_sync import RegistrySync
from pipelines.mlflow.markers import Markers, follow, read_markers
from pipelines.mlflow.promotion import (
    OUTSIDE_ACTOR,
    PROMOTING_TAG,
    promotion_history,
    set_stage,
)
from pipelines.mlflow.registry import served_model_uri, served_version
from serving.model_holder import ModelHolder
from tests.support.models import copy_store, train_and_register
from tests.support.settings import make_settings, private_serving

NAME = "fraud-detector"


def markers(alias, *production) -> Markers:
    """Markers with the Production versions given newest first."""
    return Markers(alias, tuple((v, 100 - i) for i, v in enumerate(production)))


# ---- the rule -------------------------------------------------------------------------


def test_at_the_first_look_the_alias_wins_and_the_stage_serves_without_one() -> None:
    assert follow(None, markers("2", "3")).version == "2"
    assert follow(None, markers("2", "3")).gesture == "start"
    assert follow(None, markers(None, "3")).version == "3"
    assert follow(None, markers(None)).version is None


def test_the_marker_that_moved_since_the_last_look_wins() -> None:
    seen = markers("3", "3")
    moved_alias = follow(seen, markers("2", "3"), "3")
    assert (moved_alias.version, moved_alias.gesture) == ("2", "alias")
    transitioned = follow(seen, markers("3", "2"), "3")
    assert (transitioned.version, transitioned.gesture) == ("2", "stage")
    # a transition that did not archive the version before: the one that entered wins
    kept_both = follow(seen, markers("3", "3", "2"), "3")
    assert (kept_both.version, kept_both.gesture) == ("2", "stage")
    kept_both = follow(seen, Markers("3", (("2", 5), ("3", 9))), "3")
    assert kept_both.version == "2"


def test_both_moving_together_is_one_promotion_and_apart_the_alias_wins() -> None:
    seen = markers("1", "1")
    assert follow(seen, markers("2", "2"), "1").gesture == "both"
    race = follow(seen, markers("3", "2"), "1")
    assert (race.version, race.gesture) == ("3", "alias")


def test_without_a_move_the_version_followed_stays_while_a_marker_names_it() -> None:
    # the API followed the alias to v2; the stage still names v3: nothing moved since
    assert follow(markers("2", "3"), markers("2", "3"), "2").version == "2"
    assert follow(markers("2", "3"), markers("2", "3"), "3").version == "3"
    # a marker that disappears is no promotion: the other still names the version in service
    assert follow(markers("2", "2"), markers(None, "2"), "2").version == "2"
    assert follow(markers("2", "2"), markers("2"), "2").version == "2"
    # the version followed lost both markers: back to the first-look rule
    assert follow(markers("2", "2"), markers("4", "3"), "2").version == "4"


def test_markers_agree_only_on_one_version() -> None:
    assert markers("2", "2").agree and markers(None).agree
    assert not markers("2", "3").agree
    assert not markers("2", "2", "3").agree
    assert not markers(None, "2").agree and not markers("2").agree


# ---- against a real store ---------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame):
    """One training registered three times, v1 in Production by `fraudflow promote`."""
    settings = make_settings(tmp_path_factory.mktemp("built"))
    _, result = train_and_register(small_transactions, settings, "first champion", actor="ci")
    for _ in range(2):
        train_and_register(small_transactions, settings, result=result)
    return settings.workdir


@pytest.fixture
def registry(tmp_path, built):
    """A store of this test's own, a copy of the built one."""
    copy_store(built, tmp_path / "work")
    settings = make_settings(tmp_path / "work")
    return settings, mlflow_store.client(settings)


def state(settings, client) -> tuple[str | None, tuple[str, ...]]:
    found = read_markers(client, NAME, settings.mlflow.champion_alias)
    return found.alias, found.production_versions


def outside_records(settings) -> pd.DataFrame:
    history = promotion_history(settings)
    return history[history["actor"] == OUTSIDE_ACTOR]


def test_an_alias_move_brings_the_stage_along_archives_the_old_and_is_recorded(registry):
    settings, client = registry
    sync = RegistrySync(settings)
    assert sync.run_once().outcome == "agree"
    client.set_registered_model_alias(NAME, "champion", "2")  # MLflow 3's default UI
    result = sync.run_once()
    assert result.outcome == "aligned", result
    assert state(settings, client) == ("2", ("2",))
    assert client.get_model_version(NAME, "1").current_stage == "Archived"
    records = outside_records(settings)
    assert len(records) == 1
    record = records.iloc[0]
    assert (record["version"], record["gesture"], record["gates"]) == ("2", "alias", "passed")
    assert record["champion_before"] == "1" and record["promoted"]
    tags = client.get_model_version(NAME, "2").tags
    assert tags["promotion.by"] == OUTSIDE_ACTOR and tags["promotion.gesture"] == "alias"
    # nothing left to do: the next pass writes nothing more
    assert sync.run_once().outcome == "agree"
    assert len(outside_records(settings)) == 1


def test_a_stage_transition_moves_the_alias_and_archives_every_other_production(registry):
    settings, client = registry
    sync = RegistrySync(settings)
    sync.run_once()
    # the legacy UI with "archive existing" unchecked: v1 and v3 both in Production
    client.transition_model_version_stage(NAME, "3", "Production", False)
    assert state(settings, client) == ("1", ("3", "1"))
    assert sync.run_once().outcome == "aligned"
    assert state(settings, client) == ("3", ("3",))
    record = outside_records(settings).iloc[0]
    assert (record["version"], record["gesture"]) == ("3", "stage")


def test_a_person_may_promote_a_version_the_gates_fail_and_it_is_flagged(registry):
    settings, client = registry
    strict = make_settings(
        settings.workdir, promotion={"gates": {"average_precision": 0.999, "recall": 0.2}}
    )
    sync = RegistrySync(strict)
    sync.run_once()
    client.set_registered_model_alias(NAME, "champion", "2")
    assert sync.run_once().outcome == "aligned"
    assert state(settings, client) == ("2", ("2",))  # allowed
    record = outside_records(settings).iloc[0]
    assert record["gates"].startswith("failed: average_precision")
    assert "human override" in record["reason"]


def test_a_sync_started_on_a_disagreement_follows_the_alias(registry):
    settings, client = registry
    client.set_registered_model_alias(NAME, "champion", "3")
    assert state(settings, client) == ("3", ("1",))
    # without memory (batch scoring, the monitor, promotion) the alias names the version too
    assert str(served_version(client, settings).version) == "3"
    assert served_model_uri(client, settings) == f"models:/{NAME}/3"
    assert RegistrySync(settings).run_once().outcome == "aligned"
    assert state(settings, client) == ("3", ("3",))
    assert outside_records(settings).iloc[0]["champion_before"] == "1"


def test_a_promotion_fraudflow_is_making_is_left_to_it(registry):
    settings, client = registry
    sync = RegistrySync(settings)
    sync.run_once()
    # `fraudflow promote` caught between its two moves: started, stage moved, alias not yet
    started = pd.Timestamp.now(tz="UTC").isoformat()
    client.set_model_version_tag(NAME, "2", PROMOTING_TAG, started)
    client.transition_model_version_stage(NAME, "2", "Production", True)
    assert sync.run_once().outcome == "promoting"
    assert state(settings, client) == ("1", ("2",))
    # it finishes: the markers agree, and the history holds its record only
    set_stage(settings, "2", "Production", "by hand", actor="ci")
    assert sync.run_once().outcome == "agree"
    assert outside_records(settings).empty
    history = promotion_history(settings)
    assert list(history["gesture"][:2]) == ["cli", "cli"]


def test_fraudflow_promote_records_itself_and_the_sync_adds_nothing(registry):
    settings, client = registry
    sync = RegistrySync(settings)
    sync.run_once()
    set_stage(settings, "3", "Production", "by hand", actor="ci")
    assert sync.run_once().outcome == "agree"
    assert state(settings, client) == ("3", ("3",))
    assert outside_records(settings).empty


def test_a_missing_marker_is_put_back_without_a_promotion_record(registry):
    settings, client = registry
    sync = RegistrySync(settings)
    sync.run_once()
    client.delete_registered_model_alias(NAME, "champion")
    assert sync.run_once().outcome == "aligned"
    assert state(settings, client) == ("1", ("1",))
    assert outside_records(settings).empty


def test_the_api_follows_the_marker_that_moved_and_reports_a_disagreement(registry, tmp_path):
    settings, client = registry
    settings = private_serving(settings, tmp_path / "api")
    holder = ModelHolder(settings)
    events = []
    holder.add_listener(lambda event, _: events.append(event))
    assert holder.refresh() and holder.model.version == "1"
    assert holder.describe_markers()["by"] == "start"
    client.set_registered_model_alias(NAME, "champion", "2")
    assert holder.refresh() and holder.model.version == "2"
    described = holder.describe_markers()
    assert described == {
        "alias": "2",
        "production": ["1"],
        "agree": False,
        "followed": "2",
        "by": "alias",
    }
    assert events[-3:] == ["markers_disagree", "registry_ok", "reload"]
    # nothing moved since: the stage still names v1, the API stays on v2
    assert not holder.refresh() and holder.model.version == "2"
    client.transition_model_version_stage(NAME, "3", "Production", True)
    assert holder.refresh() and holder.model.version == "3"
    assert holder.describe_markers()["by"] == "stage"
    # with the stage only (the rule reverted), the alias move is not a promotion
    stage_only = private_serving(
        make_settings(settings.workdir, mlflow={"model_source": "stage"}), tmp_path / "api2"
    )
    reverted = ModelHolder(stage_only)
    reverted.refresh()
    client.set_registered_model_alias(NAME, "champion", "1")
    reverted.refresh()
    assert reverted.model.version == "3" and reverted.describe_markers() is None


def test_the_sync_command_runs_a_pass_and_its_health_reads_the_heartbeat(
    registry, tmp_path, monkeypatch
):
    settings, client = registry
    overlay = {
        "workdir": str(settings.workdir),
        "promotion": {"gates": settings.promotion.gates},
        "registry_sync": {"interval_s": 2},
    }
    config = tmp_path / "sync.yaml"
    config.write_text(json.dumps(overlay))
    assert main(["registry-sync", "--health", "--config", str(config)]) == 1  # never ran
    client.set_registered_model_alias(NAME, "champion", "2")
    assert main(["registry-sync", "--once", "--config", str(config)]) == 0
    assert state(settings, client) == ("2", ("2",))
    assert main(["registry-sync", "--health", "--config", str(config)]) == 0
    beat = json.loads(registry_sync.heartbeat_path(settings).read_text())
    assert beat["ok"] and beat["outcome"] == "aligned"
    healthy, why = registry_sync.health(settings, now=time.time() + 60)
    assert not healthy and "stuck" in why
    # a pass that cannot reach the registry: unhealthy, yet alive (no reason for a restart)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    broken = tmp_path / "broken.yaml"
    broken.write_text(json.dumps({**overlay, "mlflow": {"tracking_uri": "http://127.0.0.1:9"}}))
    # (MLflow's fluent calls above set MLFLOW_TRACKING_URI, which wins over the config)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["registry-sync", "--once", "--config", str(broken)]) == 1
    beat = json.loads(registry_sync.heartbeat_path(settings).read_text())
    assert not beat["ok"] and "127.0.0.1:9" in beat["error"]
    assert main(["registry-sync", "--health", "--config", str(broken)]) == 1
    assert main(["registry-sync", "--live", "--config", str(broken)]) == 0


def test_a_restarted_sync_follows_a_gesture_made_while_it_was_down(registry, tmp_path):
    """Its memory lives in the heartbeat: the stage transition made between two runs wins, where
    a sync without memory would put the stage back on the alias's version."""
    settings, client = registry
    config = tmp_path / "sync.yaml"
    config.write_text(
        json.dumps({"workdir": str(settings.workdir), "registry_sync": {"interval_s": 2}})
    )
    assert main(["registry-sync", "--once", "--config", str(config)]) == 0  # agree: remembered
    client.transition_model_version_stage(NAME, "3", "Production", True)  # while it is down
    assert main(["registry-sync", "--once", "--config", str(config)]) == 0
    assert state(settings, client) == ("3", ("3",))
    assert outside_records(settings).iloc[0]["gesture"] == "stage"
    # a memory of another model is not taken up: the first-pass rule (the alias wins) applies
    other = make_settings(settings.workdir, mlflow={"model_name": "other"})
    assert (
        RegistrySync.remembering(other, {"model": NAME, "alias_name": "champion"}).expected is None
    )
    kept = RegistrySync.remembering(
        settings,
        {
            "model": NAME,
            "alias_name": "champion",
            "alias": "3",
            "production": ["3"],
            "followed": "3",
        },
    )
    assert (kept.expected, kept.followed) == (Markers("3", (("3", 0),)), "3")


@pytest.mark.parametrize(
    "heartbeat",
    [
        b"\x00\xff not json",
        b'{"memory": "v3"}',
        b'{"memory": {"model": "fraud-detector", "alias_name": "champion", "production": "3"}}',
        b'{"memory": {"model": "fraud-detector", "alias_name": "champion", "alias": 3, '
        b'"production": [], "followed": null}}',
        b"[1, 2]",
    ],
)
def test_a_damaged_or_crafted_heartbeat_is_no_memory(registry, tmp_path, heartbeat):
    """The heartbeat is a file on disk: what it holds is checked before the sync trusts it, and
    anything else leaves the sync without memory (the alias wins), never stops it."""
    settings, client = registry
    path = registry_sync.heartbeat_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(heartbeat)
    sync = RegistrySync.remembering(settings, registry_sync.remembered(path))
    assert (sync.expected, sync.followed) == (None, None)
    healthy, why = registry_sync.health(settings)
    assert not healthy and why
    config = tmp_path / "sync.yaml"
    config.write_text(json.dumps({"workdir": str(settings.workdir)}))
    client.set_registered_model_alias(NAME, "champion", "3")
    assert main(["registry-sync", "--once", "--config", str(config)]) == 0
    assert state(settings, client) == ("3", ("3",))
