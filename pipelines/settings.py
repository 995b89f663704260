"""One typed settings object: conf/default.yaml, then a --config overlay, then the environment.

Environment overrides use FRAUDFLOW__SECTION__KEY=value (values parsed as YAML scalars), and
MLFLOW_TRACKING_URI wins over mlflow.tracking_uri. Nothing here runs at import time.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from pipelines.booster_check import BoosterLimits

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "conf" / "default.yaml"
# the model configuration before issue 22 (features, training): what the ablation calls today
REFERENCE_MODEL_CONFIG = DEFAULT_CONFIG.parent / "model-reference.yaml"
ENV_PREFIX = "FRAUDFLOW__"
# the overlay file the API and every command read when no --config is given
CONFIG_ENV = "FRAUDFLOW_CONFIG"
RAW_COLUMNS = ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount")
LABEL_COLUMN = "tx_fraud"


# The LightGBM parameters a configuration, a retraining search or a champion's logged
# configuration may set: how the trees are learnt, nothing else. What LightGBM would also take
# (files to write or read, `machines` and ports to connect to, a task, a device, a metric that
# early stopping would follow) is refused by name.
LIGHTGBM_PARAMETERS = frozenset(
    {
        "objective",
        "boosting",
        "learning_rate",
        "num_leaves",
        "max_depth",
        "min_data_in_leaf",
        "min_child_samples",
        "min_sum_hessian_in_leaf",
        "min_child_weight",
        "bagging_fraction",
        "subsample",
        "bagging_freq",
        "subsample_freq",
        "bagging_seed",
        "feature_fraction",
        "colsample_bytree",
        "feature_fraction_bynode",
        "feature_fraction_seed",
        "extra_trees",
        "extra_seed",
        "lambda_l1",
        "reg_alpha",
        "lambda_l2",
        "reg_lambda",
        "min_gain_to_split",
        "min_split_gain",
        "max_delta_step",
        "path_smooth",
        "max_bin",
        "min_data_in_bin",
        "drop_rate",
        "max_drop",
        "skip_drop",
        "drop_seed",
        "num_threads",
        "seed",
        "deterministic",
        "force_row_wise",
        "force_col_wise",
        "verbosity",
    }
)
# the parameters that take a word, and the words they may take (fraudflow scores binary models)
LIGHTGBM_CHOICES = {"objective": ("binary",), "boosting": ("gbdt", "dart")}


def check_lightgbm_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` if every name is in LIGHTGBM_PARAMETERS and every value a finite number, a
    boolean or one of its LIGHTGBM_CHOICES; else ValueError naming the first offender."""
    unknown = sorted(str(name) for name in params if name not in LIGHTGBM_PARAMETERS)
    if unknown:
        raise ValueError(
            f"unknown LightGBM parameter {unknown[0]!r}"
            + (f" (and {unknown[1:]})" if unknown[1:] else "")
            + f"; allowed: {', '.join(sorted(LIGHTGBM_PARAMETERS))}"
        )
    for name, value in params.items():
        if name in LIGHTGBM_CHOICES:
            if value not in LIGHTGBM_CHOICES[name]:
                raise ValueError(
                    f"LightGBM parameter {name!r} must be one of {list(LIGHTGBM_CHOICES[name])}"
                )
        elif not isinstance(value, (bool, int, float)) or not math.isfinite(value):
            raise ValueError(f"LightGBM parameter {name!r} must be a finite number or a boolean")
    return dict(params)


class SettingsError(ValueError):
    """A configuration file or override is missing, malformed or out of range."""


# Keys that moved, old -> (new, note), in dotted form; a section ending in .* takes each key
# under it along (serving.state.url -> state.url). Every layer (conf/default.yaml, the --config
# overlay, FRAUDFLOW__ variables) is checked against this one table, which names the new key.
MOVED_KEYS: dict[str, tuple[str, str]] = {
    "serving.state.*": ("state.*", ""),
    "serving.state_path": ("state.sqlite_path", ""),
    "serving.prediction_log_dir": ("prediction_log.dir", ""),
    "monitoring.prediction_log_retention_days": ("prediction_log.retention_days", ""),
    "serving.model_source": ("mlflow.model_source", ""),
    "serving.auth_tokens": (
        "serving.tokens",
        "a list of {name, scopes: [score, label], token | sha256}: README, Security",
    ),
    "retraining.search": (
        "retraining.params",
        "the list of LightGBM overlays gave way to a parameter search: retraining.params: "
        "search (within retraining.search_budget, over tuning.space) or last_search; "
        "docs/model.md, Parameter search",
    ),
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataSettings(_Frozen):
    columns: dict[str, str]
    path: str

    @field_validator("columns")
    @classmethod
    def _all_columns_mapped(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(RAW_COLUMNS) - {LABEL_COLUMN})
        if unknown:
            raise ValueError(
                f"unknown column keys {unknown}; expected {RAW_COLUMNS + (LABEL_COLUMN,)}"
            )
        missing = [c for c in RAW_COLUMNS if c not in value]
        if missing:
            raise ValueError(f"no mapping for required columns {missing}")
        return value


class SimulationSettings(_Frozen):
    n_customers: int = Field(gt=0)
    n_terminals: int = Field(gt=0)
    n_days: int = Field(gt=0)
    start_date: date
    radius: float = Field(gt=0)
    seed: int
    amount_fraud_threshold: float = Field(gt=0)
    compromised_terminals_per_day: int = Field(ge=0)
    terminal_compromise_days: int = Field(gt=0)
    compromised_customers_per_day: int = Field(ge=0)
    customer_compromise_days: int = Field(gt=0)
    customer_fraud_share: float = Field(ge=0, le=1)
    customer_amount_multiplier: float = Field(gt=0)


class FeatureSettings(_Frozen):
    label_delay_days: int = Field(gt=0)
    customer_windows_days: tuple[int, ...]
    terminal_windows_days: tuple[int, ...]
    night_last_hour: int = Field(ge=0, le=23)
    # count the card's earlier transactions of the last `large_amount_window_days` whose amount
    # was above each of these multiples of the card's own average
    large_amount_ratios: tuple[float, ...] = ()
    large_amount_window_days: int = Field(default=14, gt=0)
    # the amount against each of these quantiles of the card's earlier amounts in its longest
    # window (linear interpolation; 1.0 is the largest): amount_to_customer_p90_30d, ..._max_30d
    customer_amount_quantiles: tuple[float, ...] = ()
    # the terminal's risk over its longest window behind the delay, each matured label weighted
    # by 2 ** (-age / half-life), age from this transaction: terminal_risk_half_life_7d; null: off
    terminal_risk_half_life_days: float | None = Field(default=None, gt=0)

    @property
    def customer_history_days(self) -> int:
        """How far back a card's history reaches into any of its features."""
        extra = self.large_amount_window_days if self.large_amount_ratios else 0
        return max(self.customer_windows_days) + extra

    @property
    def terminal_history_days(self) -> int:
        return self.label_delay_days + max(self.terminal_windows_days)

    @field_validator("customer_windows_days", "terminal_windows_days")
    @classmethod
    def _positive_windows(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(w <= 0 for w in value):
            raise ValueError("windows must be a non-empty list of positive day counts")
        return value

    @field_validator("customer_amount_quantiles")
    @classmethod
    def _quantiles(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < q <= 1 for q in value) or len(set(value)) < len(value):
            raise ValueError("quantiles must be distinct numbers in (0, 1]")
        return value


class ThresholdSettings(_Frozen):
    rule: Literal["min_cost", "max_f1"]
    cost_missed_fraud: float = Field(gt=0)
    cost_review: float = Field(gt=0)


class TrainingSettings(_Frozen):
    end_date: date | None = None
    train_start: date | None = None
    train_days: int = Field(gt=0)
    validation_days: int = Field(gt=0)
    test_days: int = Field(gt=0)
    lightgbm: dict[str, Any]
    max_rounds: int = Field(gt=0)
    early_stopping_rounds: int = Field(gt=0)
    imbalance_power: float = Field(ge=0, le=1)
    threshold: ThresholdSettings
    card_precision_k: int = Field(gt=0)
    reference_sample_rows: int = Field(ge=0)
    # the test period leaves out cards with a fraud label matured from this many days before
    # the test period's start on; null: from the training window's start
    known_cards_days: int | None = Field(default=None, gt=0)

    @field_validator("lightgbm")
    @classmethod
    def _allowed_lightgbm(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_lightgbm_parameters(value)

    @model_validator(mode="after")
    def _one_anchor(self) -> "TrainingSettings":
        if self.end_date is not None and self.train_start is not None:
            raise ValueError("set either training.end_date or training.train_start, not both")
        return self


class BacktestSettings(_Frozen):
    folds: int = Field(gt=0)
    # each fold's training window; null: training.train_days, as `fraudflow train` trains
    train_days: int | None = Field(default=None, gt=0)
    test_days: int = Field(gt=0)
    fold_step_days: int = Field(gt=0)
    # the protocol's known cards: a test card is left out once a fraud of it from this many
    # days before the test week on has matured (null: from the fold's training window start)
    known_cards_days: int | None = Field(default=None, gt=0)


class AblationSettings(_Frozen):
    # simulator seeds the ablation judges on: never simulation.seed, the data the model
    # configuration was developed on
    seeds: tuple[int, ...] = (1, 2, 3)
    # seeds run at once, each in its own process on one LightGBM thread
    jobs: int = Field(default=1, gt=0)

    @field_validator("seeds")
    @classmethod
    def _some(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("ablation.seeds must be a non-empty list of distinct seeds")
        return value


class MlflowSettings(_Frozen):
    tracking_uri: str | None = None
    experiment: str
    promotion_experiment: str
    monitoring_experiment: str
    model_name: str
    champion_alias: str
    # which registry marker names the model in service, for the API, batch scoring, the
    # monitor and promotion alike: the "Production" stage, the champion alias, or both
    # (`markers`: a promotion by either gesture counts; pipelines.mlflow.markers has the rule)
    model_source: Literal["markers", "stage", "alias"] = "markers"
    # the version scored beside the champion (serving.challenger), set by `retrain` when a
    # challenger passes the offline gates, by `fraudflow promote --challenger` or in the UI
    challenger_alias: str = "challenger"


class ModelSettings(_Frozen):
    """How far a model file from the registry, a cache or a backup is trusted: the limits its
    booster is checked against before LightGBM parses it, and how the API tries a new version
    (in a child process first, again after a failure with back-off)."""

    max_booster_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    max_trees: int = Field(default=100_000, gt=0)
    max_leaves: int = Field(default=131_072, ge=2)
    # a new version is loaded and scored in a child process first; one that has not finished
    # in this time is refused (an endless loop in the native code)
    probe_timeout_s: float = Field(default=120.0, gt=0)
    # a version that failed to load is tried again after poll_interval_s, doubled after each
    # failure up to this
    retry_max_s: float = Field(default=600.0, gt=0)

    def booster_limits(self) -> BoosterLimits:
        return BoosterLimits(
            max_bytes=self.max_booster_bytes,
            max_trees=self.max_trees,
            max_leaves=self.max_leaves,
        )


class LiveEvidenceSettings(_Frozen):
    """What `fraudflow promote --auto` asks of the challenger's live record (the prediction log
    of shadow or canary traffic, labels matured): with `required`, at least `min_days` days and
    `min_labelled_frauds` labelled frauds scored by both models, and the challenger's average
    precision above the champion's with the lower end of a paired bootstrap interval of the
    difference (`confidence`, `bootstrap_samples` resamples of the shared transactions, `seed`)
    above zero."""

    required: bool = False
    # the prediction log of the last `window_days` days is read
    window_days: int = Field(default=28, gt=0)
    min_days: int = Field(default=7, gt=0)
    min_labelled_frauds: int = Field(default=50, gt=0)
    bootstrap_samples: int = Field(default=2000, ge=100)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    seed: int = 0


class PromotionSettings(_Frozen):
    eval_days: int = Field(gt=0)
    known_cards_lookback_days: int = Field(ge=0)
    compare_metric: Literal["average_precision", "roc_auc", "card_precision_at_100", "f1", "recall"]
    min_improvement: float
    gates: dict[str, float]
    live_evidence: LiveEvidenceSettings = LiveEvidenceSettings()


MIN_TOKEN_CHARS = 16


class Credential(_Frozen):
    """One bearer secret, given as exactly one of: the token itself, its SHA-256 (hex, so the
    config never holds the secret), or a file holding the token (a mounted secret)."""

    token: SecretStr | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _plain_string_is_a_token(cls, value: Any) -> Any:
        return {"token": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _exactly_one(self) -> "Credential":
        given = [k for k in ("token", "sha256", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of token, sha256, file (got {given or 'none'})")
        if self.token is not None and len(self.token.get_secret_value()) < MIN_TOKEN_CHARS:
            raise ValueError(f"a token needs at least {MIN_TOKEN_CHARS} characters")
        return self


class ApiToken(Credential):
    """A caller of the API: its name (logged, never the token) and what it may do: `score`
    (/predict, /invocations), `label` (/feedback)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    scopes: tuple[Literal["score", "label"], ...] = Field(min_length=1)


class StateSettings(_Frozen):
    """The online state (pipelines/state): `sqlite` (one file at sqlite_path, one host, the
    embedded default) or `redis` (a server every API host shares)."""

    backend: Literal["sqlite", "redis"] = "sqlite"
    # the SQLite state's file (backend sqlite; relative: under workdir)
    sqlite_path: str = "online/state.sqlite"
    # redis://[:password@]host:6379/0 (rediss:// for TLS); a password belongs in the environment:
    # FRAUDFLOW__STATE__URL
    url: str | None = None
    key_prefix: str = "fraudflow:"
    # a /predict waits at most about this long (and one retry) before answering 503
    socket_timeout_s: float = Field(default=0.5, gt=0)
    connect_timeout_s: float = Field(default=0.5, gt=0)
    # rows are kept for the longest feature history + the label delay + this margin
    retention_margin_days: int = Field(default=7, ge=0)

    @model_validator(mode="after")
    def _redis_needs_a_url(self) -> "StateSettings":
        if self.backend == "redis" and not self.url:
            raise ValueError("backend redis needs state.url (redis://host:6379/0)")
        if self.url and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("url must start with redis://, rediss:// or unix://")
        return self


class PredictionLogSettings(_Frozen):
    """The prediction log (pipelines/log): where the API writes it and how long it is kept."""

    # JSON lines per host and process, compacted to Parquet by day (relative: under workdir)
    dir: str = "predictions"
    # `fraudflow prune`: files (and /feedback labels) of days that ended more than this many
    # days ago are deleted
    retention_days: int = Field(default=90, gt=0)


class CanaryRollbackSettings(_Frozen):
    """The band a canary challenger must stay in, judged on the requests of the last
    `window_s` seconds of every worker and host (the online state holds the counts) once each
    role decided `min_requests` transactions in it: the canary stops, and the challenger goes
    back to shadow, when its error rate exceeds the champion's by more than
    `error_rate_band`, its decline rate differs from the champion's by more than
    `decline_rate_band` (either way), or its p99 latency exceeds `p99_ratio` times the
    champion's plus `p99_slack_ms`."""

    window_s: float = Field(default=300.0, gt=0)
    min_requests: int = Field(default=200, gt=0)
    error_rate_band: float = Field(default=0.01, ge=0, le=1)
    decline_rate_band: float = Field(default=0.05, ge=0, le=1)
    p99_ratio: float = Field(default=2.0, ge=1)
    p99_slack_ms: float = Field(default=5.0, ge=0)
    # how often a worker adds its counts to the shared ones and judges them
    check_interval_s: float = Field(default=1.0, gt=0)


class ChallengerSettings(_Frozen):
    """The `@challenger` version beside the champion: `off` (not loaded), `shadow` (scored on
    every transaction off the decision path, logged, never answered) or `canary` (decides the
    transactions of `canary_percent` % of cards, chosen by a stable hash of the card, the
    champion scoring them in shadow)."""

    mode: Literal["off", "shadow", "canary"] = "shadow"
    canary_percent: float = Field(default=10.0, ge=0, le=100)
    rollback: CanaryRollbackSettings = CanaryRollbackSettings()

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare `off` as false."""
        return "off" if value is False else value


class ServingSettings(_Frozen):
    host: str
    port: int = Field(gt=0, lt=65536)
    workers: int = Field(gt=0)
    timeout_s: int = Field(gt=0)
    poll_interval_s: float = Field(gt=0)
    max_batch: int = Field(gt=0)
    # a request body larger than this is refused (413) before it is read or parsed
    max_body_bytes: int = Field(gt=0)
    # decisions: review from the model's own threshold (or this one), decline from this one
    review_threshold: float | None = Field(default=None, ge=0, le=1)
    decline_threshold: float = Field(ge=0, le=1)
    reasons: int = Field(ge=0)
    # who may call /predict, /invocations (scope score) and /feedback (scope label); the list
    # here plus the one in tokens_file (a YAML list of the same entries, e.g. a mounted secret)
    tokens: tuple[ApiToken, ...] = ()
    tokens_file: str | None = None
    # with no token at all the API serves anyone, which it refuses to do on an address other
    # hosts can reach unless this is set
    allow_anonymous: bool = False
    # a bearer secret /metrics then requires (Prometheus' authorization credentials)
    metrics_token: Credential | None = None
    # one JSON line per request (who, method, route, status, latency) on stderr, or none
    access_log: Literal["json", "off"] = "json"

    metrics_dir: str
    # the last served model, kept on the replica's own disk for a start while the registry is
    # unreachable; None: no cache
    model_cache_dir: str | None = None
    challenger: ChallengerSettings = ChallengerSettings()


PERFORMANCE_METRICS = ("precision", "recall", "average_precision", "card_precision_at_100")


class MonitoringSettings(_Frozen):
    reports_dir: str
    window_hours: float = Field(gt=0)
    # drift is judged on at most this many current rows (a uniform sample) and needs this many
    max_rows: int = Field(gt=0)
    min_rows: int = Field(gt=0)
    # Evidently's per-column tests: None keeps its defaults (normed Wasserstein for numbers,
    # Jensen-Shannon for few-valued columns, both at 0.1)
    num_method: str | None = None
    cat_method: str | None = None
    column_threshold: float | None = Field(default=None, gt=0)
    # the verdict is "drift" when this share of the features drifted, or the score drifted
    drift_share: float = Field(gt=0, le=1)
    score_drift: bool
    # performance on late labels: judged once this many labelled frauds arrived; a metric more
    # than its tolerance (absolute) below the champion's training-time value is "degraded"
    min_labelled_frauds: int = Field(gt=0)
    tolerance: dict[str, float]
    label_files: tuple[str, ...] = ()
    retrain_on: tuple[Literal["drift", "degraded"], ...]
    # `fraudflow prune`: report folders older than this many days are deleted (the newest one
    # is always kept)
    reports_retention_days: int = Field(default=90, gt=0)

    @field_validator("tolerance")
    @classmethod
    def _known_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(PERFORMANCE_METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {list(PERFORMANCE_METRICS)}")
        if any(v < 0 for v in value.values()):
            raise ValueError("tolerances must be >= 0")
        return value


# the training settings a parameter search may set beside LightGBM's parameters
SEARCHABLE_TRAINING = ("imbalance_power",)
# LightGBM parameters that do not shape the model (threads, seeds, logging) or take a word: the
# search leaves them as configured
NOT_SEARCHABLE = frozenset(
    {
        "objective",
        "boosting",
        "num_threads",
        "seed",
        "bagging_seed",
        "feature_fraction_seed",
        "extra_seed",
        "drop_seed",
        "deterministic",
        "force_row_wise",
        "force_col_wise",
        "verbosity",
    }
)


class SearchRange(_Frozen):
    """One dimension of the search space: a float or integer range, sampled uniformly or, with
    `log`, uniformly on a log scale."""

    type: Literal["float", "int"] = "float"
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _a_range(self) -> "SearchRange":
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError("a range needs finite bounds with low below high")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low above 0")
        if self.type == "int" and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError("an int range needs whole bounds")
        return self

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


class SearchBudget(_Frozen):
    """How long a parameter search may go on: at most `trials` trials, and no trial starts once
    `timeout_s` seconds have passed (null: no time budget); whichever comes first."""

    trials: int = Field(gt=0)
    timeout_s: float | None = Field(default=None, gt=0)


class TuningSettings(_Frozen):
    """`fraudflow tune` (`pipelines/training/tune.py`): the search space, the sampler, the budget
    and the validation folds the objective averages over (docs/model.md, Parameter search)."""

    trials: int = Field(gt=0)
    timeout_s: float | None = Field(default=None, gt=0)
    sampler: Literal["tpe", "random"] = "tpe"
    # the sampler's seed: with a trial budget, the same trials, parameters and best
    seed: int = 0
    # validation periods per dataset, each fold_step_days before the next (training's lengths)
    folds: int = Field(default=2, gt=0)
    fold_step_days: int = Field(default=7, gt=0)
    # LightGBM threads of a trial (results do not depend on it: trials run deterministic)
    num_threads: int = Field(default=1, gt=0)
    space: dict[str, SearchRange] = Field(min_length=1)

    @field_validator("space", mode="before")
    @classmethod
    def _null_drops_a_range(cls, value: Any) -> Any:
        """An overlay is deep-merged into the default space: `name: null` takes a range out."""
        if isinstance(value, Mapping):
            return {name: spec for name, spec in value.items() if spec is not None}
        return value

    @field_validator("space")
    @classmethod
    def _searchable(cls, value: dict[str, SearchRange]) -> dict[str, SearchRange]:
        fixed = sorted(set(value) & NOT_SEARCHABLE)
        if fixed:
            raise ValueError(f"{fixed[0]!r} is not searched: it stays as training.lightgbm sets it")
        # a name that is neither a training setting nor an allowed LightGBM parameter is refused
        # as it is in training.lightgbm
        check_lightgbm_parameters({name: 0 for name in value if name not in SEARCHABLE_TRAINING})
        power = value.get("imbalance_power")
        if power is not None and not (0 <= power.low and power.high <= 1):
            raise ValueError("imbalance_power's range must lie within [0, 1]")
        return value

    @property
    def budget(self) -> SearchBudget:
        return SearchBudget(trials=self.trials, timeout_s=self.timeout_s)


class RetrainingSettings(_Frozen):
    # False leaves a challenger that passes in Staging for a person to promote in the MLflow UI
    auto_promote: bool
    # the model configuration a retraining trains with: the champion's (what its run logged;
    # the configured one when nothing is served), the newest finished `fraudflow tune` run's
    # best (`last_search`; the champion's when there is none), or a search run now on the
    # retraining's data within search_budget (`search`, from the champion's)
    params: Literal["champion", "last_search", "search"] = "champion"
    search_budget: SearchBudget = SearchBudget(trials=10, timeout_s=900)


class BackupSettings(_Frozen):
    """`fraudflow backup` and `restore`: where numbered backups go, how many are kept, and the
    MLflow backend database when the registry is a tracking server (its artifacts then go
    through the server)."""

    # backup-000001, backup-000002, ... are made under this folder (relative: under workdir)
    root: str = "backups"
    # the newest `keep` complete backups are kept, older ones deleted after each backup
    keep: int = Field(default=7, ge=1)
    # postgresql://user:password@host:5432/mlflow (or sqlite:///path) behind the tracking
    # server; a password belongs in the environment (FRAUDFLOW__BACKUP__MLFLOW_DATABASE)
    mlflow_database: str | None = None


class KeySource(_Frozen):
    """Where an HMAC key is read from, as exactly one of: a file (a mounted secret) or an
    environment variable (its name here; the key itself never sits in the config)."""

    file: str | None = None
    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _exactly_one(self) -> "KeySource":
        given = [k for k in ("file", "env") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of file, env (got {given or 'none'})")
        return self


class IntegritySettings(_Frozen):
    """Keys of the HMAC-SHA256 signatures (`pipelines.integrity`): a backup's manifest
    (required at restore unless --allow-unsigned) and a promoted model version's files
    (required by the API when it holds the key). None: nothing is signed or required."""

    backup_key: KeySource | None = None
    model_key: KeySource | None = None


class RegistrySyncSettings(_Frozen):
    """`fraudflow registry-sync`: the component that brings the other registry marker into
    line after a promotion made outside fraudflow (`pipelines.mlflow.marker_sync`)."""

    # seconds between two looks at the registry
    interval_s: float = Field(default=5.0, gt=0)
    # `fraudflow serve` starts it beside the API (the embedded default); false where it runs
    # on its own with the registry's write account (Compose, Kubernetes: the API's is read-only)
    with_api: bool = True
    # written after each pass (relative: under workdir); `registry-sync --health` reads it
    heartbeat: str = "registry-sync/heartbeat.json"


class BatchSettings(_Frozen):
    """Batch scoring on this machine (`fraudflow score`, backtest and monitor re-scoring)."""

    # model threads; null: every core this process may use. Serving always uses one.
    threads: int | None = Field(default=None, gt=0)
    # rows read, featurized and scored at a time: with the history the features need (the
    # longest window + label delay) this bounds the rows held in memory
    chunk_rows: int = Field(default=1_000_000, gt=0)
    # lleaves: LightGBM compiled with LLVM, built once per model file and cached; off: the booster
    compiled: Literal["off", "lleaves"] = "off"
    # where compiled models are cached (relative paths: under workdir)
    compiled_cache_dir: str = "compiled-models"

    @property
    def resolved_threads(self) -> int:
        """The thread count to use: the setting, else the cores available to this process."""
        if self.threads is not None:
            return self.threads
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)


class Settings(_Frozen):
    workdir: Path
    data: DataSettings
    simulation: SimulationSettings
    features: FeatureSettings
    training: TrainingSettings
    backtest: BacktestSettings
    ablation: AblationSettings = AblationSettings()
    mlflow: MlflowSettings
    model: ModelSettings = ModelSettings()
    promotion: PromotionSettings
    serving: ServingSettings
    state: StateSettings = StateSettings()
    prediction_log: PredictionLogSettings = PredictionLogSettings()
    monitoring: MonitoringSettings
    retraining: RetrainingSettings
    tuning: TuningSettings
    backup: BackupSettings = BackupSettings()
    batch: BatchSettings = BatchSettings()
    integrity: IntegritySettings = IntegritySettings()
    registry_sync: RegistrySyncSettings = RegistrySyncSettings()

    @model_validator(mode="before")
    @classmethod
    def _no_moved_keys(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            problems = moved_keys(value)
            if problems:
                raise ValueError("; ".join(problems))
        return value

    def under_workdir(self, path: str) -> Path:
        """A configured path, taken relative to the workdir unless absolute."""
        candidate = Path(path)
        return candidate if candidate.is_absolute() else self.workdir / candidate

    @property
    def tracking_uri(self) -> str:
        """The tracking/registry URI: explicit setting, else the embedded SQLite store."""
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        return f"sqlite:///{(self.workdir / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        return (self.workdir / "mlartifacts").resolve()

    @property
    def data_path(self) -> Path:
        return self.under_workdir(self.data.path)

    @property
    def monitor_latest(self) -> Path:
        """The last monitor summary: written by the monitor, exported by the API's /metrics."""
        return self.under_workdir(self.monitoring.reports_dir) / "latest.json"


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Merge overlay into base recursively; overlay wins on leaves."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _SettingsLoader(yaml.SafeLoader):
    """YAML 1.2's booleans: only true and false. YAML 1.1 (PyYAML's default) also reads a bare
    on/off/yes/no as a boolean, so `access_log: off` would arrive as false; here it stays the
    text written (pydantic still takes yes/no/on/off for a boolean setting)."""


_SettingsLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SettingsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _moved(raw: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str, str]]:
    """(old key, new key, note) for each key of `raw` that MOVED_KEYS lists, or that is under a
    section it lists."""
    found = []
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if dotted in MOVED_KEYS:
            found.append((dotted, *MOVED_KEYS[dotted]))
        elif f"{dotted}.*" in MOVED_KEYS:
            new, note = MOVED_KEYS[f"{dotted}.*"]
            section = new.removesuffix(".*")
            if isinstance(value, Mapping) and value:
                found += [(f"{dotted}.{k}", f"{section}.{k}", note) for k in value]
            else:
                found.append((dotted, section, note))
        elif isinstance(value, Mapping):
            found += _moved(value, f"{dotted}.")
    return found


def _env_name(dotted: str) -> str:
    return ENV_PREFIX + "__".join(dotted.upper().split("."))


def moved_keys(raw: Mapping[str, Any], environment: bool = False) -> list[str]:
    """One message per key of `raw` that moved (MOVED_KEYS), naming its new key; as
    FRAUDFLOW__ variable names when `raw` came from the environment."""
    problems = []
    for old, new, note in _moved(raw):
        if environment:
            message = f"{_env_name(old)} moved to {_env_name(new)}"
        else:
            message = f"{old} moved to {new}"
        problems.append(f"{message} ({note})" if note else message)
    return problems


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_SettingsLoader)  # a SafeLoader: builds no Python objects


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SettingsError(f"config file not found: {path}")
    try:
        content = _parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(content, dict):
        raise SettingsError(f"config file {path} must hold a mapping at the top level")
    return content


def read_overlay(path: Path) -> dict[str, Any]:
    """A YAML overlay file as a mapping (SettingsError when missing, malformed or not one)."""
    return _read_yaml(path)


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Turn FRAUDFLOW__A__B=value variables into a nested mapping."""
    result: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__") if k]
        if not keys:
            continue
        node = result
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = _parse_yaml(raw) if raw != "" else None
    if environ.get("MLFLOW_TRACKING_URI"):
        result.setdefault("mlflow", {})["tracking_uri"] = environ["MLFLOW_TRACKING_URI"]
    return result


def load_settings(
    config: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings: default.yaml, then `config`, then environment, then `overrides`.
    A key that moved (MOVED_KEYS) is refused in any of them, naming where it was given."""
    raw = _checked(_read_yaml(DEFAULT_CONFIG), f"config file {DEFAULT_CONFIG}")
    if config is not None:
        raw = deep_merge(raw, _checked(_read_yaml(Path(config)), f"config file {config}"))
    from_env = env_overrides(os.environ if environ is None else environ)
    raw = deep_merge(raw, _checked(from_env, "environment", environment=True))
    if overrides:
        raw = deep_merge(raw, _checked(overrides, "overrides"))
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"invalid configuration: {problems}") from exc


def _checked(raw: Mapping[str, Any], where: str, environment: bool = False) -> Mapping[str, Any]:
    problems = moved_keys(raw, environment)
    if problems:
        raise SettingsError(f"{where}: {'; '.join(problems)}")
    return raw
