"""Promotion on live evidence, on real MLflow stores in temporary folders: the challenger's
logged record beside the champion (scores of real registered models on simulated traffic,
written through the prediction log's record and writer), `promote --auto`, `promote
--challenger`, and retraining that leaves its new version as the challenger."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraudflow.cli import main
from pipelines.integrity import MODEL_SIGNATURE_TAG, sign_model
from pipelines.mlflow import models, store
from pipelines.mlflow.promotion import promote_if_better, promotion_history, set_challenger
from pipelines.mlflow.registry import PromotionError, challenger_version
from pipelines.settings import Settings
from pipelines.state.factory import open_state
from pipelines.training.retrain import retrain
from tests.support.models import copy_store, train_and_register
from tests.support.settings import make_settings, write_config
from tests.support.traffic import log_traffic, split_days

NAME = "fraud-detector"
LIVE = {
    "required": True,
    "min_days": 5,
    "min_labelled_frauds": 20,
    "bootstrap_samples": 300,
    "seed": 1,
}
TRAFFIC_DAYS = 7


def live_settings(workdir: Path, **sections) -> Settings:
    return make_settings(workdir, promotion={"live_evidence": LIVE}, **sections)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame):
    """Never used directly: a store holding v1, a model trained on the history before the
    last week, and v2, one trained on the same history with its labels shuffled (a broken
    label feed: it learnt nothing); that week as live traffic; the history on disk."""
    root = tmp_path_factory.mktemp("live-store")
    settings = live_settings(root / "work")
    history, traffic = split_days(small_transactions, TRAFFIC_DAYS)
    good, good_result = train_and_register(history, settings)
    rng = np.random.default_rng(0)
    scrambled = history.assign(tx_fraud=rng.permutation(history["tx_fraud"].to_numpy()))
    bad, bad_result = train_and_register(scrambled, settings)
    data = root / "history.parquet"
    history.to_parquet(data)
    scorers = {good: good_result.scorer, bad: bad_result.scorer}
    return settings.workdir, history, traffic, scorers, (good, bad), data


@pytest.fixture
def world(tmp_path: Path, trained):
    """The trained store, copied for this test alone."""
    source, history, traffic, scorers, versions, data = trained
    settings = live_settings(tmp_path / "work")
    copy_store(source, settings.workdir)
    return settings, history, traffic, scorers, versions, data


def serve_side_by_side(
    settings: Settings,
    world,
    champion: str,
    challenger: str,
    days: int = TRAFFIC_DAYS,
) -> pd.DataFrame:
    """`champion` in Production, `challenger` as the challenger, `days` of the traffic scored
    by both (a tenth of the cards on canary) through the log, and their labels arrived."""
    from pipelines.mlflow.promotion import set_stage

    _, history, traffic, scorers, _, _ = world
    set_stage(settings, champion, "Production", "the champion")
    set_challenger(settings, challenger, "a challenger", actor="test")
    first = traffic["tx_datetime"].min().normalize()
    part = traffic.loc[(traffic["tx_datetime"] < first + pd.Timedelta(days=days)).to_numpy()]
    cards = sorted(part["customer_id"].astype(str).unique())[::10]
    scored = log_traffic(
        settings,
        history,
        part,
        scorers[champion],
        champion,
        challenger=(challenger, scorers[challenger]),
        canary_cards=cards,
    )
    open_state(settings).add_labels(
        [(str(t), int(y)) for t, y in part[["transaction_id", "tx_fraud"]].itertuples(index=False)],
        0,
    )
    return scored


def test_auto_promotes_a_challenger_whose_live_record_is_better(world, tmp_path: Path) -> None:
    """Through the CLI: the broken model serves, the good one beside it; its live record wins,
    it becomes the champion, it is no longer the challenger, and the record cites the
    evidence."""
    settings, _, traffic, _, (good, bad), data = world
    scored = serve_side_by_side(settings, world, champion=bad, challenger=good)
    assert scored["tx_fraud"].sum() >= LIVE["min_labelled_frauds"]
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    config = write_config(tmp_path / "overlay.yaml", settings)
    output = tmp_path / "promote.json"
    code = main(
        ["promote", "--auto", "--config", str(config), "--data", str(data), "--output", str(output)]
    )
    assert code == 0
    decision = json.loads(output.read_text())
    assert decision["version"] == good and decision["promoted"] and decision["qualified"]
    live = decision["live_evidence"]
    assert live["verdict"] == "challenger better"
    assert (live["champion_version"], live["challenger_version"]) == (bad, good)
    assert live["days"] == TRAFFIC_DAYS and live["labelled_rows"] == len(scored)
    assert live["ap_difference_low"] > 0
    assert live["challenger"]["average_precision"] > live["champion"]["average_precision"]
    assert "live evidence" in decision["reason"] and "challenger better" in decision["reason"]

    client = store.client(settings)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == good
    assert challenger_version(client, settings) is None
    version = client.get_model_version(NAME, good)
    assert "challenger better" in version.tags["promotion.reason"]
    run = client.get_run(version.tags["promotion.record_run"])
    assert run.data.tags["live_verdict"] == "challenger better"
    assert run.data.metrics["live_ap_difference_low"] == pytest.approx(live["ap_difference_low"])
    assert run.data.metrics["live_challenger_average_precision"] > (
        run.data.metrics["live_champion_average_precision"]
    )
    assert run.data.metrics["live_days"] == TRAFFIC_DAYS


def test_auto_holds_a_challenger_whose_live_record_is_worse(world) -> None:
    settings, history, _, _, (good, bad), _ = world
    serve_side_by_side(settings, world, champion=good, challenger=bad)
    decision = promote_if_better(settings, history, actor="ci")
    assert decision.version == bad and not decision.promoted and not decision.qualified
    live = decision.live_evidence
    assert live["verdict"] == "champion holds" and live["ap_difference_high"] < 0
    assert "lies at or below 0" in decision.reason
    client = store.client(settings)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == good
    assert str(challenger_version(client, settings).version) == bad  # it stays beside
    history_row = promotion_history(settings).iloc[0]
    assert history_row["version"] == bad and "live evidence" in history_row["reason"]


def test_a_better_challenger_waits_until_its_live_record_is_long_enough(world) -> None:
    """The offline gates pass; two days of live traffic do not make the evidence asked for."""
    settings, history, _, _, (good, bad), _ = world
    serve_side_by_side(settings, world, champion=bad, challenger=good, days=2)
    decision = promote_if_better(settings, history)
    assert not decision.promoted and decision.stage == "Staging"
    assert "live evidence: 2 of 5 days" in decision.reason
    assert "does not beat champion" not in decision.reason  # offline, it does
    assert decision.live_evidence["verdict"] == "insufficient evidence"
    client = store.client(settings)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == bad


def test_live_evidence_needs_a_challenger(world) -> None:
    settings, history, _, _, (good, _), _ = world
    from pipelines.mlflow.promotion import set_stage

    set_stage(settings, good, "Production", "the champion")
    with pytest.raises(PromotionError, match="no version .* is the challenger"):
        promote_if_better(settings, history)


def test_promote_challenger_by_hand_signs_and_sets_the_alias(world, tmp_path: Path) -> None:
    settings, _, _, _, (good, bad), _ = world
    key = secrets.token_hex(32).encode()
    key_file = tmp_path / "model-key"
    key_file.write_bytes(key)
    integrity = settings.integrity.model_copy(update={"model_key": {"file": str(key_file)}})
    signed = Settings.model_validate({**settings.model_dump(), "integrity": integrity.model_dump()})
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    config = write_config(tmp_path / "overlay.yaml", signed)
    output = tmp_path / "challenger.json"
    argv = ["promote", "--config", str(config), "--output", str(output)]
    assert main([*argv, "--version", bad, "--challenger", "--reason", "try it"]) == 0
    assert json.loads(output.read_text())["stage"] == "Challenger"
    client = store.client(settings)
    assert str(challenger_version(client, settings).version) == bad
    version = client.get_model_version(NAME, bad)
    with tempfile.TemporaryDirectory() as folder:
        booster, meta = models.download_model_files(settings, f"models:/{NAME}/{bad}", Path(folder))
        assert version.tags[MODEL_SIGNATURE_TAG] == sign_model(key, NAME, bad, booster, meta)
    assert version.tags["promotion.stage"] == "Challenger"
    assert promotion_history(settings).iloc[0]["reason"] == "try it"
    # the champion cannot be its own challenger; --challenger needs a version
    assert main([*argv, "--version", good, "--stage", "Production"]) == 0
    assert main([*argv, "--version", good, "--challenger"]) == 1
    assert str(challenger_version(client, settings).version) == bad
    assert main([*argv, "--challenger"]) == 2


@pytest.mark.parametrize("required, auto_promote", [(True, True), (False, False)])
def test_retraining_leaves_a_qualified_version_as_the_challenger(
    world, required: bool, auto_promote: bool
) -> None:
    """With live evidence required, retraining never promotes: the new version waits beside
    the champion. Without it, automatic promotion off does the same (on, it promotes as
    before: tests/test_monitoring.py)."""
    settings, history, _, _, (_, bad), _ = world
    from pipelines.mlflow.promotion import set_stage

    set_stage(settings, bad, "Production", "the broken champion")
    settings = settings.model_copy(
        update={
            "promotion": settings.promotion.model_copy(
                update={
                    "live_evidence": settings.promotion.live_evidence.model_copy(
                        update={"required": required}
                    )
                }
            ),
            "retraining": settings.retraining.model_copy(update={"auto_promote": auto_promote}),
        }
    )
    empty = history.iloc[:0]
    result = retrain(settings, history, empty, {"fraudflow.trigger": "test"})
    client = store.client(settings)
    assert result.decision.qualified
    assert not result.decision.promoted and result.challenger
    waits = "live evidence is required" if required else "automatic promotion is off"
    assert waits in result.decision.reason
    assert str(challenger_version(client, settings).version) == result.version
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == bad
    assert client.get_model_version(NAME, result.version).current_stage == "Staging"
    assert client.get_run(result.run_id).data.tags["challenger"] == "true"
