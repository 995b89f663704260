"""The throw-away world the load benchmark serves: store, promoted model, warm state, payloads.

Built fresh on every run so that each measurement starts from the same state, whatever earlier
runs stored; nothing here is timed.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.env import BIN, ROOT, clean_env


@dataclass
class World:
    """The temporary store, the served model and what the load scripts send."""

    root: Path
    config: Path
    redis_config: Path
    tracking_uri: str
    model_name: str
    version: str
    invocation_body: str
    booster: Path
    sample: Path
    start_s: float
    step_s: float
    history_rows: int
    # per backend: the warm's seconds and rows/s (as `fraudflow warm` reports them) and the
    # state's bytes after it
    warm: dict[str, dict[str, float]]


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


def build_world(root: Path, redis_url: str) -> World:
    """Simulate, train, register and promote; warm the online state on both backends (SQLite,
    and the Redis server at REDIS_URL); write the payloads.

    /predict must see real customer/terminal pairs and time moving past the warmed history, and
    both /invocations the same finite feature row, or the targets would not be comparable."""
    from pipelines.data import load_transactions
    from pipelines.model import BOOSTER_FILE
    from pipelines.state.factory import open_state
    from pipelines.training.simulate import simulate_transactions, write_daily_parquet
    from tests.support.models import train_and_register
    from tests.support.settings import make_settings, write_config

    settings = make_settings(
        root / "work",
        serving={"metrics_dir": str(root / "prom-api")},
        state={"sqlite_path": str(root / "state.sqlite")},
        prediction_log={"dir": str(root / "predictions")},
    )
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
    config = write_config(root / "serve.yaml", settings)
    model_files = root / "model"
    result.scorer.save(model_files)  # the booster file as logged, for MLServer
    redis_settings = make_settings(
        root / "work",
        serving={"metrics_dir": str(root / "prom-api-redis")},
        state={"backend": "redis", "url": redis_url},
        prediction_log={"dir": str(root / "predictions-redis")},
    )
    redis_config = write_config(root / "serve-redis.yaml", redis_settings)
    warm = {"sqlite": warm_state(config, data), "redis": warm_state(redis_config, data)}
    warm["sqlite"]["bytes"] = open_state(settings).size_bytes() or 0.0
    warm["redis"]["bytes"] = open_state(redis_settings).size_bytes() or 0.0

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
    sample = root / "sample.lua"
    lines = [
        f'{{"{c}","{t}",{a:.2f}}},'
        for c, t, a in zip(
            picked["customer_id"].astype(str),
            picked["terminal_id"].astype(str),
            picked["tx_amount"].astype(float),
        )
    ]
    sample.write_text("return {\n" + "\n".join(lines) + "\n}\n")
    start = last.tz_localize(None) if last.tzinfo else last
    start_s = (start - pd.Timestamp("1970-01-01")).total_seconds() + 60
    return World(
        root=root,
        config=config,
        redis_config=redis_config,
        tracking_uri=settings.tracking_uri,
        model_name=settings.mlflow.model_name,
        version=version,
        invocation_body=body,
        booster=model_files / BOOSTER_FILE,
        sample=sample,
        start_s=start_s,
        step_s=step_s,
        history_rows=len(transactions),
        warm=warm,
    )
