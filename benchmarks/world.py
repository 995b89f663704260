"""The throw-away world the load benchmark serves: store, promoted model, warm state, payloads.

Built fresh on every run so that each measurement starts from the same state, whatever earlier
runs stored; nothing here is timed. Beside the champion (in Production) the registry holds a
second version under the challenger alias, trained on another window with another seed, so that
an API with `serving.challenger.mode` shadow or canary really scores a second booster.

When asked, a second store beside it holds a model trained and promoted under the reference model
configuration (conf/model-reference.yaml, what issue 22's acceptance calls today's) laid over the
same settings as the configured one, with its own warmed state and the API's --config file, so
that /predict can be measured under both configurations in the same run.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from benchmarks.env import BIN, ROOT, clean_env

if TYPE_CHECKING:
    from pipelines.model import FraudScorer
    from pipelines.settings import Settings

# the API servers on the SQLite state and the challenger mode each runs with; every one has its
# own copy of the warmed state, prediction log and metrics folder
CHALLENGER_MODES = {"api": "off", "api_shadow": "shadow", "api_canary": "canary"}
# the challenger: a longer training window than the champion's, and another seed
CHALLENGER_TRAIN_DAYS = 42
CHALLENGER_SEED = 7
# the API server on the reference model configuration (its own store and copy of the state)
REFERENCE_SERVER = "api_reference"


@dataclass
class World:
    """The temporary store, the served model and what the load scripts send."""

    root: Path
    config: Path
    redis_config: Path | None
    # per API server name (CHALLENGER_MODES, and api_redis and api_reference when built): its
    # --config file
    configs: dict[str, Path]
    tracking_uri: str
    model_name: str
    version: str
    challenger_version: str
    # per role (champion, challenger, and reference when built): its version, the booster's
    # trees, its training days and its number of features
    models: dict[str, dict[str, int]]
    invocation_body: str
    booster: Path
    sample: Path
    # the same customer/terminal/amount picks as `sample`, for the paced generator
    sample_rows: list[tuple[str, str, float]]
    start_s: float
    step_s: float
    history_rows: int
    # per backend: the warm's seconds and rows/s (as `fraudflow warm` reports them) and the
    # state's bytes after it
    warm: dict[str, dict[str, float]]
    # per API server name whose champion is not `version` (REFERENCE_SERVER): the one it serves
    served_versions: dict[str, str] = field(default_factory=dict)

    def served_version(self, server: str) -> str:
        """The model version API server SERVER serves in Production."""
        return self.served_versions.get(server, self.version)


WARM_LINE = re.compile(r"in ([\d.]+) s, ([\d,]+) rows/s")


def warm_state(config: Path, data: Path) -> dict[str, float]:
    """`fraudflow warm` with CONFIG: its own figures (the load alone, process start-up apart)."""
    warm = subprocess.run(
        [str(BIN / "fraudflow"), "warm", "--config", str(config), "--data", str(data)],
        env=clean_env({}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if warm.returncode != 0:
        raise RuntimeError(f"fraudflow warm failed ({warm.returncode}):\n{warm.stderr[-2000:]}")
    found = WARM_LINE.search(warm.stdout)
    if found is None:
        raise RuntimeError(f"no timing in fraudflow warm's output:\n{warm.stdout[-2000:]}")
    return {"seconds": float(found[1]), "rows_per_s": float(found[2].replace(",", ""))}


def reference_config(configured: Settings) -> Settings:
    """CONFIGURED with the features of the reference model configuration
    (conf/model-reference.yaml, laid as the ablation lays it): what /predict computes is
    today's, while the benchmark's short training stays the same for both models, so that the
    two servers differ in their features only."""
    from pipelines.settings import REFERENCE_MODEL_CONFIG, read_overlay
    from pipelines.training.ablation import reference_settings

    reference = reference_settings(configured, read_overlay(REFERENCE_MODEL_CONFIG))
    return configured.model_copy(update={"features": reference.features})


def model_figures(version: str, scorer: FraudScorer, train_days: int) -> dict[str, int]:
    """What the report says of a served model: its version, trees, window and features."""
    return {
        "version": int(version),
        "trees": scorer.booster.num_trees(),
        "train_days": train_days,
        "features": len(scorer.features),
    }


def build_reference(
    configured: Settings, transactions: pd.DataFrame, data: Path, config: Path
) -> tuple[str, dict[str, int]]:
    """Under the reference configuration over CONFIGURED (its own store, state and serving
    folders): train on TRANSACTIONS, register and promote a model, warm the SQLite state with
    the history in DATA, and write the API's --config file to CONFIG. Returns the version and
    its figures (model_figures)."""
    from tests.support.models import train_and_register
    from tests.support.settings import write_config

    settings = reference_config(configured)
    version, result = train_and_register(
        transactions,
        settings,
        "HTTP load benchmark, reference model configuration",
        data={"data_path": str(data)},
        actor="benchmarks.load",
    )
    warm_state(write_config(config, settings), data)
    return version, model_figures(version, result.scorer, settings.training.train_days)


def build_world(
    root: Path, redis_url: str | None, canary_percent: float = 10.0, reference: bool = False
) -> World:
    """Simulate, train, register and promote a champion, register a challenger (alias) beside
    it; warm the online state on SQLite (one copy per challenger mode) and, with REDIS_URL, on
    that Redis server; with REFERENCE, build the reference configuration's own store, model
    and state too (build_reference); write the payloads.

    /predict must see real customer/terminal pairs and time moving past the warmed history, and
    both /invocations the same finite feature row, or the targets would not be comparable."""
    from pipelines.backup.sqlite_files import backup_sqlite
    from pipelines.data import load_transactions
    from pipelines.mlflow import store
    from pipelines.model import BOOSTER_FILE
    from pipelines.settings import load_settings
    from pipelines.state.factory import open_state
    from pipelines.training.simulate import simulate_transactions, write_daily_parquet
    from tests.support.models import train_and_register
    from tests.support.settings import FAST_TRAINING, make_settings, write_config

    # the configured features, the whole section (the test settings turn every switchable one
    # on): what the served API and the challenger compute
    features = load_settings().features.model_dump(mode="json")

    def api_settings(name: str, state: dict[str, str], workdir: str = "work") -> Settings:
        mode = CHALLENGER_MODES.get(name, "off")
        return make_settings(
            root / workdir,
            serving={
                "metrics_dir": str(root / f"prom-{name}"),
                "challenger": {"mode": mode, "canary_percent": canary_percent},
            },
            state=state,
            prediction_log={"dir": str(root / f"predictions-{name}")},
            # no registry sync beside each API: a process of the server's tree that works every
            # few seconds, whatever the load, so its CPU per request would fall as throughput
            # rose; the benchmark's store sees no promotion for it to follow
            registry_sync={"with_api": False},
            features=features,
        )

    # warmed once, then copied for each SQLite API: the same file for every challenger mode
    settings = api_settings("api", {"sqlite_path": str(root / "state-warm.sqlite")})
    data = root / "data"
    write_daily_parquet(simulate_transactions(settings.simulation), data)
    transactions = load_transactions(data, require_labels=True)
    version, result = train_and_register(
        transactions,
        settings,
        "HTTP load benchmark",
        data={"data_path": str(data)},
        actor="benchmarks.load",
    )
    training = {
        **FAST_TRAINING,
        "train_days": CHALLENGER_TRAIN_DAYS,
        "lightgbm": {**FAST_TRAINING["lightgbm"], "seed": CHALLENGER_SEED},
    }
    challenger_settings = make_settings(root / "work", training=training, features=features)
    challenger_version, challenger = train_and_register(
        transactions, challenger_settings, data={"data_path": str(data)}
    )
    store.client(settings).set_registered_model_alias(
        settings.mlflow.model_name, settings.mlflow.challenger_alias, challenger_version
    )
    models = {
        "champion": model_figures(version, result.scorer, settings.training.train_days),
        "challenger": model_figures(challenger_version, challenger.scorer, CHALLENGER_TRAIN_DAYS),
    }
    model_files = root / "model"
    result.scorer.save(model_files)  # the booster file as logged, for MLServer
    warm = {"sqlite": warm_state(write_config(root / "serve-warm.yaml", settings), data)}
    warm["sqlite"]["bytes"] = open_state(settings).size_bytes() or 0.0
    configs: dict[str, Path] = {}
    for name in CHALLENGER_MODES:
        copy = backup_sqlite(Path(settings.state.sqlite_path), root / f"state-{name}.sqlite")
        configs[name] = write_config(
            root / f"serve-{name}.yaml", api_settings(name, {"sqlite_path": str(copy)})
        )
    config = configs["api"]
    redis_config = None
    if redis_url is not None:
        redis_settings = api_settings("api_redis", {"backend": "redis", "url": redis_url})
        redis_config = write_config(root / "serve-api_redis.yaml", redis_settings)
        configs["api_redis"] = redis_config
        warm["redis"] = warm_state(redis_config, data)
        warm["redis"]["bytes"] = open_state(redis_settings).size_bytes() or 0.0
    served_versions: dict[str, str] = {}
    if reference:
        # its own store (workdir) and state file, and the serving folders of its name
        state = {"sqlite_path": str(root / f"state-{REFERENCE_SERVER}.sqlite")}
        configs[REFERENCE_SERVER] = root / f"serve-{REFERENCE_SERVER}.yaml"
        served_versions[REFERENCE_SERVER], models["reference"] = build_reference(
            api_settings(REFERENCE_SERVER, state, "reference"),
            transactions,
            data,
            configs[REFERENCE_SERVER],
        )

    columns = list(result.scorer.features)
    test_rows = result.test.features.loc[:, columns]
    finite = test_rows[np.isfinite(test_rows.to_numpy(dtype=np.float64)).all(axis=1)]
    row = [float(v) for v in finite.iloc[-1].tolist()]
    body = json.dumps({"dataframe_split": {"columns": columns, "data": [row]}})
    (root / "invocation.json").write_text(body)

    times = transactions["tx_datetime"]
    last = times.max()
    step_s = (last - times.min()).total_seconds() / max(len(transactions) - 1, 1)
    recent = transactions[times > last - pd.Timedelta(days=30)]
    picked = recent.sample(n=min(5000, len(recent)), random_state=0)
    rows = [
        (c, t, round(a, 2))
        for c, t, a in zip(
            picked["customer_id"].astype(str),
            picked["terminal_id"].astype(str),
            picked["tx_amount"].astype(float),
        )
    ]
    sample = root / "sample.lua"
    lines = [f'{{"{c}","{t}",{a:.2f}}},' for c, t, a in rows]
    sample.write_text("return {\n" + "\n".join(lines) + "\n}\n")
    start = last.tz_localize(None) if last.tzinfo else last
    start_s = (start - pd.Timestamp("1970-01-01")).total_seconds() + 60
    return World(
        root=root,
        config=config,
        redis_config=redis_config,
        configs=configs,
        tracking_uri=settings.tracking_uri,
        model_name=settings.mlflow.model_name,
        version=version,
        challenger_version=challenger_version,
        models=models,
        invocation_body=body,
        booster=model_files / BOOSTER_FILE,
        sample=sample,
        sample_rows=rows,
        start_s=start_s,
        step_s=step_s,
        history_rows=len(transactions),
        warm=warm,
        served_versions=served_versions,
    )
