"""Settings for tests: the small simulated world, fast training, lenient gates, config overlay
files, and serving folders private to one test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipelines.settings import Settings, StateSettings, load_settings

# 90 days of a small world: enough history for 30-day windows, a 7-day delay and three periods.
SMALL_WORLD = {
    "n_customers": 800,
    "n_terminals": 1600,
    "n_days": 90,
    "radius": 8.0,
    "seed": 3,
    "compromised_terminals_per_day": 1,
    "compromised_customers_per_day": 2,
}
FAST_TRAINING = {
    "train_days": 28,
    "validation_days": 7,
    "test_days": 7,
    "max_rounds": 150,
    "early_stopping_rounds": 20,
    "lightgbm": {"learning_rate": 0.1, "num_leaves": 15, "min_child_samples": 20},
}
# every switchable feature on (the default leaves some off), so that each is computed and
# compared on every path a test world goes through: batch, streamed, online, Spark
ALL_FEATURES = {"customer_amount_quantiles": [0.9, 1.0], "terminal_risk_half_life_days": 7}
LENIENT_GATES = {"average_precision": 0.3, "recall": 0.2, "card_precision_at_100": 0.01}


def make_settings(workdir: Path, **sections: Any) -> Settings:
    """Settings for a test: the small world, fast training and a private embedded store."""
    overrides: dict[str, Any] = {
        "workdir": str(workdir),
        "simulation": SMALL_WORLD,
        "features": ALL_FEATURES,
        "training": FAST_TRAINING,
        "backtest": {"folds": 2, "train_days": 21, "test_days": 7, "fold_step_days": 7},
        "promotion": {"gates": LENIENT_GATES, "min_improvement": 0.0},
    }
    for key, value in sections.items():
        overrides[key] = {**overrides.get(key, {}), **value} if isinstance(value, dict) else value
    return load_settings(environ={}, overrides=overrides)


def write_config(path: Path, settings: Settings) -> Path:
    """A --config overlay file that reproduces `settings` for the CLI and `mlflow run`."""
    payload = settings.model_dump(mode="json")
    payload["workdir"] = str(settings.workdir)
    path.write_text(yaml.safe_dump(payload))
    return path


def private_serving(
    settings: Settings, folder: Path, state: StateSettings | None = None, **serving: Any
) -> Settings:
    """`settings` with an online state (`state`, or the configured one, its SQLite file under
    `folder`), prediction log and model cache of its own under `folder` (and any other
    `serving` values), so that an app shares nothing with another test's."""
    folder = Path(folder)
    own_state = (state or settings.state).model_copy(
        update={"sqlite_path": str(folder / "state.sqlite")}
    )
    own_log = settings.prediction_log.model_copy(update={"dir": str(folder / "predictions")})
    update = {"model_cache_dir": str(folder / "model-cache"), **serving}
    return settings.model_copy(
        update={
            "state": own_state,
            "prediction_log": own_log,
            "serving": settings.serving.model_copy(update=update),
        }
    )
