"""`fraudflow demo`: the whole loop on the embedded store, in this process.

The training half simulates (unless data exists), trains, registers, auto-promotes and prints a
summary. The serving half trains a second version and sets it as the challenger, starts the
API (gunicorn, the only other process), replays the last days' traffic and labels with the
challenger in shadow, compares the two on that live record (the monitor's report and
`promote --auto` on live evidence), hot-swaps the second version in, sends a drifted slice,
runs the monitor with retraining while the API serves, and stops the API.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd

from drift.monitor import MonitorFailed, run_job
from drift.window import Window
from fraudflow.logs import logging_to
from pipelines.data import load_transactions
from pipelines.files import write_json_atomic
from pipelines.log.reader import log_files
from pipelines.log.record import log_folder
from pipelines.mlflow import store
from pipelines.mlflow.promotion import (
    PromotionDecision,
    live_comparison,
    promote_if_better,
    set_challenger,
    set_stage,
)
from pipelines.mlflow.registry import champion_version, served_version
from pipelines.mlflow.store import MlflowClient
from pipelines.monitor_summary import Verdict
from pipelines.settings import CONFIG_ENV, Settings
from pipelines.state.factory import open_state
from pipelines.training import record
from pipelines.training.simulate import fraud_summary, simulate_transactions, write_daily_parquet
from pipelines.training.train import train_model
from serving.gunicorn_command import gunicorn_command


def _has_data(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.parquet"))


def run_training_half(
    settings: Settings, data: str | None = None, fresh: bool = False
) -> dict[str, Any]:
    """Run the training side end to end on the configured (by default embedded) store."""
    path = Path(data) if data else settings.data_path
    if data is None and (fresh or not _has_data(path)):
        print(f"[1/12] simulating transactions into {path}")
        simulated = simulate_transactions(settings.simulation, progress=True)
        write_daily_parquet(simulated, path, progress=True, overwrite=True)
        print(f"      {fraud_summary(simulated)}")
    else:
        print(f"[1/12] using transactions in {path}")
    transactions = load_transactions(path, settings.data.columns, require_labels=True)

    print(f"[2/12] training on {len(transactions):,} transactions (features, LightGBM)")
    result = train_model(transactions, settings)
    description = record.data_description(path, transactions)
    print("[3/12] logging the run and registering the model in MLflow")
    run_id, version = record.log_training_run(result, settings, description)

    print("[4/12] gated promotion: newest version against the champion")
    decision = promote_if_better(settings, transactions)
    client = store.client(settings)
    champion = champion_version(client, settings.mlflow.model_name, settings.mlflow.champion_alias)
    registered = client.get_model_version(settings.mlflow.model_name, version.version)
    summary = {
        "run_id": run_id,
        "model": settings.mlflow.model_name,
        "version": version.version,
        "stage": registered.current_stage,
        "aliases": list(registered.aliases or []),
        "champion": champion.version if champion else None,
        "decision": decision.reason,
        "test_metrics": result.test_metrics,
        "tracking_uri": settings.tracking_uri,
    }
    _print_summary(summary, result.windows.as_dict(), settings)
    return summary


def _print_summary(summary: dict[str, Any], windows: dict[str, str], settings: Settings) -> None:
    metrics = summary["test_metrics"]
    k = settings.training.card_precision_k
    rows = [
        ("ROC-AUC", metrics["roc_auc"]),
        ("average precision", metrics["average_precision"]),
        (f"card precision@{k}", metrics[f"card_precision_at_{k}"]),
        ("precision", metrics["precision"]),
        ("recall", metrics["recall"]),
        ("F1", metrics["f1"]),
    ]
    print()
    print(f"test period {windows['test_start']} .. {windows['test_end']} (exclusive):")
    print(pd.DataFrame(rows, columns=["metric", "value"]).to_string(index=False))
    aliases = ", ".join("@" + a for a in summary["aliases"]) or "no alias"
    print(
        f"\nregistered {summary['model']} v{summary['version']}: stage {summary['stage']}, "
        f"{aliases}; champion: v{summary['champion']}"
    )
    print(f"promotion: {summary['decision']}")
    ui = _mlflow_ui(settings)
    print(f"\nopen the MLflow UI on this store:\n  .venv/bin/{ui}\n  then http://127.0.0.1:5000")


def _mlflow_ui(settings: Settings) -> str:
    """The command that opens the MLflow UI on this store."""
    ui = f"mlflow ui --backend-store-uri {settings.tracking_uri}"
    if not settings.mlflow.tracking_uri:
        ui += f" --default-artifact-root {settings.artifact_root.as_uri()}"
    return ui


def print_ui_promotion(settings: Settings, client: MlflowClient, config: str | None) -> None:
    """How a person promotes another version in the MLflow UI on the demo's store, and what
    then happens (README, "Promote from the MLflow UI")."""
    name = settings.mlflow.model_name
    served = served_version(client, settings)
    others = [
        v.version
        for v in client.search_model_versions(f"name = '{name}'")
        if served is None or v.version != served.version
    ]
    if not others:
        return
    version = max(others, key=int)
    config = f" --config {config}" if config else ""
    print(
        "\npromote from the MLflow UI on this store:\n"
        f"  .venv/bin/fraudflow serve{config}   (the API, with the registry sync beside it)\n"
        f"  .venv/bin/{_mlflow_ui(settings)}\n"
        f"  open http://127.0.0.1:5000/#/models/{name}/versions/{version}\n"
        f'    MLflow 3\'s default UI: Aliases "Add", type {settings.mlflow.champion_alias}, '
        '"Save aliases"\n'
        '    or the legacy UI ("New model registry UI" off): Stage, "Transition to -> '
        'Production", OK\n'
        f"  the API takes up v{version} at its next poll (serving.poll_interval_s, "
        f"{settings.serving.poll_interval_s:g} s); the other marker follows, and "
        "`fraudflow promote --history` records it"
    )


# the days replayed with the challenger in shadow: the live record it is judged on
SHADOW_DAYS = 3
DRIFTED = 1000
BATCH = 50


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(url: str, body: Any = None, timeout: float = 10) -> tuple[int, Any]:
    """JSON over HTTP with the standard library; returns (status, parsed body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited with code {process.returncode}")
        try:
            if call(f"{url}/ready", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the API at {url} was not ready within {timeout:.0f}s")


def _raw(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {
            "transaction_id": r.transaction_id,
            "tx_datetime": r.tx_datetime.isoformat(),
            "customer_id": r.customer_id,
            "terminal_id": r.terminal_id,
            "tx_amount": r.tx_amount,
        }
        for r in frame.itertuples()
    ]


def _reset_state(settings: Settings, history: pd.DataFrame) -> None:
    """A fresh online state and prediction log, so that a second demo starts like the first."""
    path = settings.under_workdir(settings.state.sqlite_path)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    for file in log_files(log_folder(settings)):
        file.unlink()
    added = open_state(settings).warm(history)
    print(f"      online state warmed with {added:,} transactions of history")


def _replay(url: str, replay: pd.DataFrame) -> pd.DataFrame:
    results = []
    for start in range(0, len(replay), BATCH):
        chunk = replay.iloc[start : start + BATCH]
        status, body = call(f"{url}/predict", _raw(chunk))
        if status != 200:
            raise RuntimeError(f"/predict answered {status}: {body}")
        results += body["predictions"]
        labels = [
            {"transaction_id": r.transaction_id, "tx_fraud": int(r.tx_fraud)}
            for r in chunk.itertuples()
        ]
        status, body = call(f"{url}/feedback", labels)
        if status != 200:
            raise RuntimeError(f"/feedback answered {status}: {body}")
    scored = pd.DataFrame(results).set_index("transaction_id")
    return scored.join(replay.set_index("transaction_id")[["tx_amount", "tx_fraud"]])


def _print_replay(scored: pd.DataFrame) -> None:
    counts = scored["decision"].value_counts()
    flagged = scored[scored["decision"] != "approve"]
    caught = int(flagged["tx_fraud"].sum())
    print(
        f"      {len(scored):,} transactions scored: "
        + ", ".join(f"{counts.get(d, 0)} {d}" for d in ("approve", "review", "decline"))
        + f"; {caught} of {int(scored['tx_fraud'].sum())} frauds flagged"
    )
    print("      highest scores, with the reasons the model gives:")
    for tid, row in scored.sort_values("fraud_probability", ascending=False).head(5).iterrows():
        reasons = ", ".join(
            f"{r['feature']}={r['value'] if r['value'] is None else round(r['value'], 2)}"
            for r in row["reasons"]
        )
        truth = "fraud" if row["tx_fraud"] else "genuine"
        print(
            f"        tx {tid}: p={row['fraud_probability']:.3f} {row['decision']:<7} "
            f"amount {row['tx_amount']:8.2f} ({truth}) because {reasons}"
        )


def _challenger(settings: Settings, transactions: pd.DataFrame, before: pd.Timestamp) -> str:
    """A second version trained on the data before the shadow period, set as the challenger:
    the API scores it beside the champion from its first request."""
    earlier = settings.model_copy(
        update={"training": settings.training.model_copy(update={"end_date": before.date()})}
    )
    print(f"[5/12] training a second version on data up to {before.date()}; it becomes @challenger")
    result = train_model(transactions, earlier)
    _, version = record.log_training_run(result, earlier, {"data_path": "demo: before the shadow"})
    set_challenger(settings, str(version.version), "demo: scored in shadow first", "demo")
    metrics = result.test_metrics
    print(
        f"      v{version.version}: test average precision {metrics['average_precision']:.3f}, "
        f"ROC-AUC {metrics['roc_auc']:.3f}"
    )
    return str(version.version)


def _shadow_verdict(settings: Settings, champion: str, challenger: str) -> None:
    """The two models on the shadow period's record (the prediction log, labels as fed)."""
    comparison = live_comparison(settings, champion, challenger)
    print(
        f"      shadow: {comparison.rows:,} transactions scored by both, decisions agreed on "
        f"{comparison.agreement_rate:.1%}, top-{comparison.k} overlap "
        f"{comparison.top_k_overlap:.1%}, score PSI {comparison.score_psi:.3f}"
    )
    print(f"      {comparison.summary_line()}")
    for reason in comparison.reasons:
        print(f"        {reason}")


def _swap(url: str, settings: Settings, version: str, reason: str, probe: pd.DataFrame) -> None:
    """Promote `version` by hand and time how long the API takes to answer with it."""
    _, before = call(f"{url}/model")
    promoted_at = time.monotonic()
    set_stage(settings, version, "Production", reason, "demo")
    _wait_swap(url, before["version"], version, promoted_at, probe)


def _wait_swap(
    url: str, before: str, version: str, promoted_at: float, probe: pd.DataFrame
) -> None:
    requests_sent, failures, current = 0, 0, before
    body = _raw(probe.head(1))[0]
    while current != version and time.monotonic() - promoted_at < 60:
        body["transaction_id"] = f"swap-probe-{requests_sent}"
        status, answer = call(f"{url}/predict", body)
        requests_sent += 1
        if status != 200:
            failures += 1
        else:
            current = answer["model"]["version"]
        time.sleep(0.05)
    print(
        f"      the API switched from v{before} to v{current} "
        f"{time.monotonic() - promoted_at:.1f}s after the promotion; {requests_sent} requests "
        f"meanwhile, {failures} failed"
    )


def _promote_on_evidence(
    url: str, settings: Settings, transactions: pd.DataFrame, challenger: str, probe: pd.DataFrame
) -> None:
    """`promote --auto` on live evidence; the hot swap either way (by hand when it holds)."""
    print("[8/12] promote --auto on live evidence: the challenger's record beside the champion")
    _, before = call(f"{url}/model")
    started = time.monotonic()
    decision: PromotionDecision = promote_if_better(
        settings, transactions, actor="demo", live_evidence=True
    )
    print(f"      {'promoted' if decision.promoted else 'held'}: {decision.reason}")
    if decision.promoted:
        _wait_swap(url, before["version"], challenger, started, probe)
        return
    print(f"      promoting v{challenger} by hand anyway, to show the hot swap")
    _swap(url, settings, challenger, "demo: show the hot swap", probe)


def drifted_slice(transactions: pd.DataFrame, rows: int, factor: float) -> pd.DataFrame:
    """The next day's traffic as the last day's, with every amount multiplied by `factor` (a
    price change or a new spending pattern): new ids, one day later."""
    tail = transactions.iloc[-rows:]
    return tail.assign(
        transaction_id="drift-" + tail["transaction_id"].astype(str),
        tx_datetime=tail["tx_datetime"] + pd.Timedelta(days=1),
        tx_amount=(tail["tx_amount"] * factor).round(2),
    )


def _score_only(url: str, frame: pd.DataFrame) -> None:
    for start in range(0, len(frame), BATCH):
        status, body = call(f"{url}/predict", _raw(frame.iloc[start : start + BATCH]))
        if status != 200:
            raise RuntimeError(f"/predict answered {status}: {body}")


def _monitor(url: str, settings: Settings, data: str | None, retrain: bool = True) -> None:
    """`fraudflow monitor [--retrain]` on the last day while the API runs: the API picks up a
    promotion by itself. The monitor's log goes to a file beside the demo's store."""
    output = settings.workdir / "demo-monitor.json"
    output.unlink(missing_ok=True)
    _, before = call(f"{url}/model")
    window = Window.last_hours(settings.monitoring.window_hours)
    log_path = settings.workdir / "demo-monitor.log"
    with logging_to(log_path):
        try:
            result = run_job(
                settings,
                window,
                [],
                retrain=retrain,
                data=Path(data) if data else None,
                say=lambda line: print(f"      {line}", flush=True),
            )
        except MonitorFailed as exc:  # recorded as the error verdict
            print(f"fraudflow monitor: error: {exc}", file=sys.stderr)
            result = None
    if result is not None:
        write_json_atomic(output, result.summary.as_dict())
        if result.summary.retrain_error:
            print(
                f"fraudflow monitor: retraining failed: {result.summary.retrain_error}",
                file=sys.stderr,
            )
    code = result.outcome.exit_code if result else Verdict.ERROR.exit_code
    print(f"      exit code {code} (0 no drift, 1 drift, 2 degraded, 3 error)")
    if result is None or result.summary.retrain_error:
        raise RuntimeError(f"the monitor failed; its log: {log_path}")
    retrain = result.summary.retrain
    if not retrain or not retrain["promoted"]:
        return
    deadline, current = time.monotonic() + 30, before
    while current["version"] != retrain["challenger_version"] and time.monotonic() < deadline:
        time.sleep(0.5)
        _, current = call(f"{url}/model")
    print(f"      the API switched by itself from v{before['version']} to v{current['version']}")


def run_serving_half(settings: Settings, config: str | None, data: str | None = None) -> int:
    """Serve the champion with a challenger in shadow, drive traffic, the live comparison, a
    hot swap, drift and the monitor through it."""
    client = store.client(settings)
    champion = champion_version(client, settings.mlflow.model_name, settings.mlflow.champion_alias)
    if champion is None:
        print("no champion to serve: the newest model was held by the gates (see above)")
        return 1
    transactions = load_transactions(data or settings.data_path, settings.data.columns, True)
    start = transactions["tx_datetime"].max().floor("D") - pd.Timedelta(days=SHADOW_DAYS - 1)
    replay = transactions[transactions["tx_datetime"] >= start]
    history = transactions[
        (transactions["tx_datetime"] >= start - pd.Timedelta(days=40))
        & (transactions["tx_datetime"] < start)
    ]
    challenger = _challenger(settings, transactions, start)
    evidence = settings.promotion.live_evidence
    if evidence.min_days > SHADOW_DAYS:
        print(
            f"      (the demo's shadow period is {SHADOW_DAYS} days: live evidence asks for "
            f"{SHADOW_DAYS} days here, promotion.live_evidence.min_days is {evidence.min_days})"
        )
        evidence = evidence.model_copy(update={"min_days": SHADOW_DAYS})
        settings = settings.model_copy(
            update={"promotion": settings.promotion.model_copy(update={"live_evidence": evidence})}
        )
    print(
        f"[6/12] starting the API (gunicorn, 2 workers) on champion v{champion.version}, "
        f"challenger v{challenger} in shadow"
    )
    _reset_state(settings, history)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, FRAUDFLOW__SERVING__POLL_INTERVAL_S="1")
    if config:
        env[CONFIG_ENV] = str(Path(config).resolve())
    command = gunicorn_command(bind=f"127.0.0.1:{port}")
    log_path = settings.workdir / "demo-api.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(url, process)
        _wait_challenger(url, challenger, settings.serving.workers)
        print(f"      {url} ready (log: {log_path})")
        print(
            f"[7/12] shadow period: the last {SHADOW_DAYS} days, {len(replay):,} transactions, "
            "through /predict and /feedback; the champion answers, the challenger is logged"
        )
        _print_replay(_replay(url, replay))
        _shadow_verdict(settings, str(champion.version), challenger)
        print("      the monitor's report on the shadow period (drift, champion vs challenger):")
        _monitor(url, settings, data, retrain=False)
        _promote_on_evidence(url, settings, transactions, challenger, replay)
        drifted = drifted_slice(transactions, DRIFTED, 3.0)
        print(
            f"[9/12] sending {len(drifted):,} transactions of the next day with amounts x3 "
            "(a drifted slice, labels not known yet)"
        )
        _score_only(url, drifted)
        print("[10/12] monitor: the day's prediction log against the champion's training reference")
        _monitor(url, settings, data)
    finally:
        print("[11/12] stopping the API")
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    print(f"      stopped (exit code {process.returncode})")
    reports = settings.under_workdir(settings.monitoring.reports_dir)
    print(f"[12/12] reports in {reports}; open the newest index.html in a browser")
    print_ui_promotion(settings, client, config)
    return 0


def _wait_challenger(url: str, version: str, workers: int, timeout: float = 60) -> None:
    """Until every worker scores the challenger: each loads it in the background at its own
    poll, so one worker's /model says nothing of the others; the version gauge is exported by
    every live worker (labelled with its pid)."""
    deadline = time.monotonic() + timeout
    prefix = 'fraudflow_model_version{model_role="challenger",pid="'
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            text = response.read().decode()
        values = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(prefix)]
        if len(values) == workers and all(float(v) == float(version) for v in values):
            return
        time.sleep(0.3)
    raise TimeoutError(f"not every worker loaded challenger v{version} within {timeout:.0f}s")
