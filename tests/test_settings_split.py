"""Settings layering and the delay-aware time split."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from pipelines.settings import SettingsError, load_settings
from pipelines.split import layout_windows


def test_defaults_give_the_embedded_store_under_the_workdir(tmp_path: Path) -> None:
    settings = load_settings(environ={}, overrides={"workdir": str(tmp_path)})
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert settings.artifact_root == tmp_path / "mlartifacts"
    assert settings.features.label_delay_days == 7
    assert settings.mlflow.model_name == "fraud-detector"


def test_overlay_then_environment_then_mlflow_uri(tmp_path: Path) -> None:
    overlay = tmp_path / "prod.yaml"
    overlay.write_text(
        "mlflow:\n  model_name: fraud-eu\ndata:\n  columns:\n    transaction_id: TRANSACTION_ID\n"
    )
    env = {
        "FRAUDFLOW__FEATURES__LABEL_DELAY_DAYS": "3",
        "FRAUDFLOW__MLFLOW__MODEL_NAME": "fraud-env",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
    }
    settings = load_settings(overlay, environ=env)
    assert settings.mlflow.model_name == "fraud-env"
    assert settings.features.label_delay_days == 3
    assert settings.data.columns["transaction_id"] == "TRANSACTION_ID"
    assert settings.data.columns["tx_amount"] == "tx_amount"  # deep merge keeps the rest
    assert settings.tracking_uri == "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"FRAUDFLOW__FEATURES__LABEL_DELAY_DAYS": "0"}, "features.label_delay_days"),
        ({"FRAUDFLOW__TRAINING__THRESHOLD__RULE": "max_gain"}, "training.threshold.rule"),
        ({"FRAUDFLOW__TRAINING__TRAIN_DAYZ": "5"}, "training.train_dayz"),
    ],
)
def test_bad_settings_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace(".", r"\.")):
        load_settings(environ=env)


def test_missing_or_malformed_overlay(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(bad, environ={})


def test_windows_backwards_from_the_end_of_data() -> None:
    training = load_settings(environ={}).training
    start, end = pd.Timestamp("2018-04-01"), pd.Timestamp("2018-10-01")
    w = layout_windows(start, end, training, delay_days=7)
    assert w.test.end == end and w.test.start == end - pd.Timedelta(days=training.test_days)
    assert w.test.start - w.validation.end == pd.Timedelta(days=7)
    assert w.validation.start == w.train.end
    assert w.train.end - w.train.start == pd.Timedelta(days=training.train_days)


def test_windows_by_date() -> None:
    # 56 + 3 + 7 + 7 days: forwards from May 1st fits the data, as does backwards from Aug 1st
    base = load_settings(environ={}).training.model_copy(update={"train_days": 56})
    start, end = pd.Timestamp("2018-04-01"), pd.Timestamp("2018-10-01")
    forward = layout_windows(
        start, end, base.model_copy(update={"train_start": date(2018, 5, 1)}), 7
    )
    assert forward.train.start == pd.Timestamp("2018-05-01")
    anchored = layout_windows(start, end, base.model_copy(update={"end_date": date(2018, 8, 1)}), 7)
    assert anchored.test.end == pd.Timestamp("2018-08-01")
    with pytest.raises(ValueError, match="do not fit the data"):
        layout_windows(start, pd.Timestamp("2018-05-01"), base, 7)


def test_end_date_and_train_start_are_exclusive() -> None:
    with pytest.raises(SettingsError, match="either"):
        load_settings(
            environ={},
            overrides={"training": {"end_date": "2018-08-01", "train_start": "2018-05-01"}},
        )


def test_access_log_off_reads_as_off_from_yaml_and_the_environment(tmp_path: Path) -> None:
    """YAML 1.1 reads a bare `off` as false: the setting still means what the operator wrote."""
    overlay = tmp_path / "quiet.yaml"
    overlay.write_text("serving:\n  access_log: off\n")
    assert load_settings(str(overlay), environ={}).serving.access_log == "off"
    env = {"FRAUDFLOW__SERVING__ACCESS_LOG": "off"}
    assert load_settings(None, environ=env).serving.access_log == "off"
    with pytest.raises(SettingsError, match="access_log"):
        load_settings(None, environ={"FRAUDFLOW__SERVING__ACCESS_LOG": "loud"})
