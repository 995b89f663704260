"""Settings grouped by owner: the keys that moved are refused wherever they are given (the YAML
config, a --config overlay, an environment variable), each naming its new key, and the new
keys load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.settings import DEFAULT_CONFIG, MOVED_KEYS, Settings, SettingsError, load_settings

# each old key with a value it could have held, and the key it moved to
OLD_KEYS = [
    ("serving.state.backend", "redis", "state.backend"),
    ("serving.state.url", "redis://127.0.0.1:6379/0", "state.url"),
    ("serving.state.key_prefix", "other:", "state.key_prefix"),
    ("serving.state.socket_timeout_s", "1.0", "state.socket_timeout_s"),
    ("serving.state.connect_timeout_s", "1.0", "state.connect_timeout_s"),
    ("serving.state.retention_margin_days", "3", "state.retention_margin_days"),
    ("serving.state_path", "online/elsewhere.sqlite", "state.sqlite_path"),
    ("serving.prediction_log_dir", "elsewhere", "prediction_log.dir"),
    ("monitoring.prediction_log_retention_days", "30", "prediction_log.retention_days"),
    ("serving.model_source", "alias", "mlflow.model_source"),
    ("retraining.search", "[]", "retraining.params"),
]


def nested(dotted: str, value: str) -> str:
    """`a.b.c: value` as a YAML document."""
    keys = dotted.split(".")
    lines = [f"{'  ' * depth}{key}:" for depth, key in enumerate(keys[:-1])]
    lines.append(f"{'  ' * (len(keys) - 1)}{keys[-1]}: {value!r}")
    return "\n".join(lines) + "\n"


def env_name(dotted: str) -> str:
    return "FRAUDFLOW__" + dotted.upper().replace(".", "__")


def test_every_moved_key_is_covered_here() -> None:
    tried = [old for old, _, _ in OLD_KEYS] + ["serving.auth_tokens"]  # test_serving_auth
    for moved in MOVED_KEYS:
        section = moved.removesuffix("*")
        assert any(old == moved or old.startswith(section) for old in tried), moved


@pytest.mark.parametrize("old, value, new", OLD_KEYS)
def test_an_old_key_in_an_overlay_is_refused_naming_its_new_key(
    tmp_path: Path, old: str, value: str, new: str
) -> None:
    overlay = tmp_path / "old.yaml"
    overlay.write_text(nested(old, value))
    with pytest.raises(SettingsError) as error:
        load_settings(overlay, environ={})
    assert f"{old} moved to {new}" in str(error.value)
    assert str(overlay) in str(error.value)  # where it was given


@pytest.mark.parametrize("old, value, new", OLD_KEYS)
def test_an_old_key_in_the_environment_is_refused_naming_its_new_variable(
    old: str, value: str, new: str
) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(environ={env_name(old): value})
    assert f"{env_name(old)} moved to {env_name(new)}" in str(error.value)
    assert "environment" in str(error.value)


def test_the_state_url_variable_names_its_new_name() -> None:
    with pytest.raises(SettingsError, match="FRAUDFLOW__STATE__URL"):
        load_settings(environ={"FRAUDFLOW__SERVING__STATE__URL": "redis://redis:6379/0"})


@pytest.mark.parametrize("old, value, new", OLD_KEYS)
def test_an_old_key_in_the_base_config_is_refused_naming_its_new_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, old: str, value: str, new: str
) -> None:
    """The base config itself (or an edited copy of it kept from before) holding an old key."""
    content = yaml.safe_load(DEFAULT_CONFIG.read_text())
    node = content
    keys = old.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    base = tmp_path / "default.yaml"
    base.write_text(yaml.safe_dump(content))
    monkeypatch.setattr("pipelines.settings.DEFAULT_CONFIG", base)
    with pytest.raises(SettingsError) as error:
        load_settings(environ={})
    assert f"{old} moved to {new}" in str(error.value) and str(base) in str(error.value)


def test_a_whole_old_section_is_refused_key_by_key(tmp_path: Path) -> None:
    overlay = tmp_path / "old.yaml"
    overlay.write_text(
        "serving:\n  state:\n    backend: redis\n    url: redis://127.0.0.1:6379/0\n"
        "  state_path: x.sqlite\n"
    )
    with pytest.raises(SettingsError) as error:
        load_settings(overlay, environ={})
    message = str(error.value)
    for old, new in (
        ("serving.state.backend", "state.backend"),
        ("serving.state.url", "state.url"),
        ("serving.state_path", "state.sqlite_path"),
    ):
        assert f"{old} moved to {new}" in message
    assert "redis://127.0.0.1" not in message  # keys are named, never their values


def test_old_keys_are_refused_in_overrides_and_by_the_model_itself() -> None:
    with pytest.raises(SettingsError, match=r"serving\.state_path moved to state\.sqlite_path"):
        load_settings(environ={}, overrides={"serving": {"state_path": "x.sqlite"}})
    raw = load_settings(environ={}).model_dump(mode="json")
    raw["monitoring"]["prediction_log_retention_days"] = 30
    with pytest.raises(ValueError, match=r"moved to prediction_log\.retention_days"):
        Settings.model_validate(raw)


def test_the_new_keys_load_from_an_overlay_and_the_environment(tmp_path: Path) -> None:
    overlay = tmp_path / "new.yaml"
    overlay.write_text(
        "state:\n  sqlite_path: online/other.sqlite\n  key_prefix: 'ff:'\n"
        "prediction_log:\n  dir: logs\n  retention_days: 30\n"
        "mlflow:\n  model_source: alias\n"
    )
    env = {
        "FRAUDFLOW__STATE__BACKEND": "redis",
        "FRAUDFLOW__STATE__URL": "redis://127.0.0.1:6379/0",
        "FRAUDFLOW__STATE__SOCKET_TIMEOUT_S": "1.5",
        "FRAUDFLOW__STATE__CONNECT_TIMEOUT_S": "2",
        "FRAUDFLOW__STATE__RETENTION_MARGIN_DAYS": "3",
        "FRAUDFLOW__PREDICTION_LOG__RETENTION_DAYS": "45",
    }
    settings = load_settings(overlay, environ=env)
    state = settings.state
    assert (state.backend, state.url, state.key_prefix) == (
        "redis",
        "redis://127.0.0.1:6379/0",
        "ff:",
    )
    assert (state.socket_timeout_s, state.connect_timeout_s) == (1.5, 2.0)
    assert state.retention_margin_days == 3 and state.sqlite_path == "online/other.sqlite"
    assert (settings.prediction_log.dir, settings.prediction_log.retention_days) == ("logs", 45)
    assert settings.mlflow.model_source == "alias"


def test_the_defaults_of_the_moved_keys() -> None:
    settings = load_settings(environ={})
    assert settings.state.backend == "sqlite" and settings.state.url is None
    assert settings.state.sqlite_path == "online/state.sqlite"
    assert settings.state.retention_margin_days == 7
    assert (settings.prediction_log.dir, settings.prediction_log.retention_days) == (
        "predictions",
        90,
    )
    assert settings.mlflow.model_source == "markers"


def test_redis_without_a_url_names_the_new_key() -> None:
    with pytest.raises(SettingsError, match=r"state\.url"):
        load_settings(environ={"FRAUDFLOW__STATE__BACKEND": "redis"})
