"""The `fraudflow` command line: one thin sub-command per lifecycle step.

Every sub-command takes --config (an overlay on conf/default.yaml); commands that read
transactions take --data, commands that produce a result take --output (JSON summaries).
Every step runs in this process; only `serve` replaces it with gunicorn.

Exit codes: 0 done; 2 a command line, a setting or an input that cannot be used; 1 a step that
failed. Two commands answer with their exit code: `monitor` (0 no drift, 1 drift, 2 degraded,
3 error: every failure of the monitor, a bad command line included, is 3, never a code a
scheduler reads as drift) and `check-gates` (1: the model misses a gate).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from drift.window import Window
from fraudflow.logs import setup_logging
from pipelines.backup.postgres import PostgresError
from pipelines.backup.redis_snapshot import RedisBackupError
from pipelines.data import DataValidationError, load_transactions
from pipelines.files import write_json_atomic
from pipelines.monitor_summary import Verdict
from pipelines.settings import CONFIG_ENV, Settings, SettingsError, load_settings
from pipelines.state.protocol import StateUnavailable

log = logging.getLogger("fraudflow")
# `warm` loads the history in slices of this many rows (one transaction each on SQLite)
WARM_SLICE_ROWS = 100_000
USAGE_EXIT, FAILED_EXIT = 2, 1
# the monitor's exit code is its verdict: any failure of it is the error verdict
MONITOR_FAILED_EXIT = Verdict.ERROR.exit_code
# `registry-account` reads the account's password from here, never from the command line
ACCOUNT_PASSWORD_ENV = "FRAUDFLOW_REGISTRY_ACCOUNT_PASSWORD"
RECORD_DEFAULT = "deploy/model-version.json"


class UsageError(ValueError):
    """A command line that asks for something impossible."""


class DemoError(RuntimeError):
    """A step of the demo failed; its own output says why."""


class StepFailed(RuntimeError):
    """A step that could not be done (a room's error the main loop does not import)."""


@dataclass(frozen=True)
class Answer:
    """A command whose exit code is its answer: the summary (written to --output) and the code."""

    summary: dict[str, Any] | None
    code: int


def _write_json(payload: Any, output: str | None) -> None:
    if output:
        log.info("wrote %s", write_json_atomic(Path(output), payload))


def _data_path(args: argparse.Namespace, settings: Settings) -> Path:
    return Path(args.data) if args.data else settings.data_path


def _load(args: argparse.Namespace, settings: Settings, require_labels: bool):
    path = _data_path(args, settings)
    log.info("reading transactions from %s", path)
    frame = load_transactions(path, settings.data.columns, require_labels=require_labels)
    log.info(
        "%d transactions, %s .. %s",
        len(frame),
        frame["tx_datetime"].min(),
        frame["tx_datetime"].max(),
    )
    return path, frame


def _given(**values: Any) -> dict[str, Any]:
    """The settings a command line gave (an option left out is None), as overrides."""
    return {key: value for key, value in values.items() if value is not None}


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Reads: simulation settings. Produces: one Parquet file per day under --output."""
    from pipelines.training.simulate import (
        fraud_summary,
        simulate_transactions,
        write_daily_parquet,
    )

    overrides = _given(
        n_customers=args.customers,
        n_terminals=args.terminals,
        n_days=args.days,
        seed=args.seed,
        start_date=args.start_date,
    )
    simulation = settings.simulation.model_validate(
        {**settings.simulation.model_dump(), **overrides}
    )
    folder = Path(args.output) if args.output else settings.data_path
    existing = sorted(folder.glob("*.parquet")) + sorted(folder.glob("*.csv"))
    if existing and not args.overwrite:
        raise UsageError(
            f"{folder} already holds {len(existing)} data files; pass --overwrite to replace them"
        )
    transactions = simulate_transactions(simulation, progress=True)
    files = write_daily_parquet(transactions, folder, progress=True, overwrite=args.overwrite)
    summary = {"folder": str(folder), "files": len(files), **fraud_summary(transactions)}
    print(
        f"simulated {summary['transactions']} transactions "
        f"({summary['fraud_rate']:.2%} fraud) into {len(files)} daily files in {folder}"
    )
    return summary


def cmd_train(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Reads: labelled transactions. Produces: an MLflow run and a registered model version."""
    from pipelines.training.record import data_description, log_training_run
    from pipelines.training.train import train_model

    path, transactions = _load(args, settings, require_labels=True)
    result = train_model(transactions, settings)
    run_id, version = log_training_run(result, settings, data_description(path, transactions))
    summary = {
        "run_id": run_id,
        "model_name": version.name,
        "model_version": version.version,
        "threshold": result.scorer.threshold,
        "best_iteration": result.best_iteration,
        "windows": result.windows.as_dict(),
        "row_counts": result.row_counts,
        "test_metrics": result.test_metrics,
    }
    m = result.test_metrics
    print(
        f"trained {version.name} v{version.version} (run {run_id}): test AP "
        f"{m['average_precision']:.4f}, ROC-AUC {m['roc_auc']:.4f}, "
        f"CP@{settings.training.card_precision_k} "
        f"{m[f'card_precision_at_{settings.training.card_precision_k}']:.4f}, "
        f"precision {m['precision']:.4f}, recall {m['recall']:.4f}, F1 {m['f1']:.4f} "
        f"at threshold {result.scorer.threshold:.4f}"
    )
    return summary


def cmd_ablate(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Reads: the simulator settings and the reference configuration (conf/model-reference.yaml
    over the same layers). Produces: an `ablation` MLflow run (a nested run per variant, under
    it one per seed), the table (--markdown) and the JSON summary (--output)."""
    from pipelines.mlflow.ablation_runs import log_ablation
    from pipelines.settings import REFERENCE_MODEL_CONFIG, read_overlay
    from pipelines.training import ablation

    reference_file = Path(args.reference) if args.reference else REFERENCE_MODEL_CONFIG
    try:
        reference = ablation.reference_settings(
            load_settings(args.config or os.environ.get(CONFIG_ENV) or None),
            read_overlay(reference_file),
        )
    except ValueError as exc:
        raise SettingsError(f"{reference_file}: {exc}") from exc
    seeds = args.seeds or list(settings.ablation.seeds)
    if settings.simulation.seed in seeds:
        raise SettingsError(
            f"seed {settings.simulation.seed} is the simulator's default (the data the "
            "configuration was developed on): the ablation judges on other seeds"
        )
    try:
        results = ablation.run_ablation(
            settings,
            reference,
            seeds,
            args.variant,
            progress=lambda step: log.info("%s", step),
            jobs=args.jobs or settings.ablation.jobs,
        )
    except ablation.UnknownVariant as exc:
        raise UsageError(str(exc)) from exc
    summary = ablation.report(results, seeds)
    table = ablation.markdown(summary)
    summary["run_id"] = log_ablation(
        settings,
        {"seeds": ",".join(map(str, seeds)), "reference": str(reference_file)},
        summary,
        {r.variant.name: r.folds for r in results},
        table,
    )
    if args.markdown:
        Path(args.markdown).write_text(table)
    print(table, end="")
    return summary


def cmd_backtest(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Reads: labelled transactions. Produces: a parent MLflow run with one nested run per fold."""
    from pipelines.training.backtest import run_backtest

    if args.folds is not None:
        settings = settings.model_copy(
            update={"backtest": settings.backtest.model_copy(update={"folds": args.folds})}
        )
    _, transactions = _load(args, settings, require_labels=True)
    report = run_backtest(transactions, settings, progress=True)
    for fold in report["folds"]:
        m = fold["metrics"]
        print(
            f"fold {fold['fold']} test {fold['windows']['test_start']}..: AUC {m['roc_auc']:.4f}"
            f"  AP {m['average_precision']:.4f}"
            f"  CP@{settings.training.card_precision_k} "
            f"{m[f'card_precision_at_{settings.training.card_precision_k}']:.4f}"
        )
    for metric, stats in report["summary"].items():
        print(f"{metric}: {stats['mean']:.4f} ± {stats['std']:.4f}")
    return report


def cmd_tune(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Reads: labelled transactions (--data, once or more: e.g. several simulated worlds),
    their validation periods only. Produces: a `tune` MLflow run with one nested run per trial,
    the best parameters and the resolved training configuration (tuning/config.yaml, a
    --config overlay for `train`)."""
    from pipelines.training.tune import tune

    overrides = _given(trials=args.trials, timeout_s=args.timeout, sampler=args.sampler)
    if overrides:
        settings = load_settings(
            args.config or os.environ.get(CONFIG_ENV) or None, overrides={"tuning": overrides}
        )
    paths = [Path(p) for p in (args.data or []) if p] or [settings.data_path]
    datasets = []
    for path in paths:
        log.info("reading transactions from %s", path)
        transactions = load_transactions(path, settings.data.columns, require_labels=True)
        datasets.append((str(path), transactions))
    result = tune(datasets, settings)
    print(
        f"tuned over {len(result.trials)} trials ({result.sampler}, stopped by "
        f"{result.stopped_by}, {result.seconds:.0f} s; run {result.run_id}): best "
        f"validation AP {result.best.value:.4f} (trial {result.best.number}), configured "
        f"{result.baseline.value:.4f}"
    )
    for name, value in result.best.params.items():
        print(f"  {name}: {value:.6g}")
    return result.as_dict()


def cmd_score(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Reads: raw transactions and a model. Produces: transaction_id, fraud_probability rows,
    streamed in chunks of batch.chunk_rows on batch.threads threads (see README, Batch
    scoring)."""
    from pipelines.batch.local import score_path
    from pipelines.mlflow import store
    from pipelines.mlflow.models import load_scorer
    from pipelines.mlflow.registry import served_model_uri

    if not args.output:
        raise UsageError("score needs --output FILE (.csv, .csv.gz or .parquet)")
    uri = args.model_uri or served_model_uri(store.client(settings), settings)
    if args.engine == "spark":
        return _score_spark(args, settings, uri)
    if args.master:
        raise UsageError("--master is for --engine spark")
    scorer = load_scorer(settings, uri)
    path = _data_path(args, settings)
    log.info("scoring transactions from %s in chunks of %d", path, settings.batch.chunk_rows)
    run = score_path(path, Path(args.output), scorer, settings, model_label=uri)
    if not run.labelled:
        log.warning("no labels in the input: terminal risk features count no known fraud")
    print(
        f"scored {run.rows} transactions with {uri} into {args.output} in {run.seconds:.1f} s "
        f"({run.rows_per_second:,.0f} tx/s; {run.engine}, {run.threads} threads, "
        f"{run.chunks} chunks)"
    )
    return {
        "model_uri": uri,
        "rows": run.rows,
        "output": args.output,
        "engine": run.engine,
        "threads": run.threads,
        "seconds": round(run.seconds, 3),
    }


def _score_spark(args: argparse.Namespace, settings: Settings, uri: str) -> dict[str, Any]:
    """The Spark engine: a Parquet folder partitioned by day (pipelines/batch/spark)."""
    try:
        from pipelines.batch.spark.read import check_input
        from pipelines.batch.spark.score import OutputError, check_output, score_with_spark
        from pipelines.batch.spark.session import DEFAULT_MASTER, SparkUnavailable, spark_session
    except ImportError as exc:
        raise UsageError(f"--engine spark needs pyspark: pip install '.[spark]' ({exc})") from exc
    master = args.master or DEFAULT_MASTER
    path = _data_path(args, settings)
    try:
        check_output(args.output)
        check_input(path, settings.data.columns)  # bad files fail before Spark starts
        with spark_session(master, app_name="fraudflow-score") as spark:
            result = score_with_spark(spark, settings, path, args.output, uri)
    except (SparkUnavailable, OutputError) as exc:
        raise UsageError(str(exc)) from exc
    print(
        f"scored {result.rows} transactions with {uri} on Spark ({master}) into "
        f"{result.output} ({result.days} days)"
    )
    return {"model_uri": uri, "rows": result.rows, "output": str(result.output), "master": master}


def cmd_promote(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Reads: the registry (and, with --auto, recent labelled data; with
    promotion.live_evidence.required, the prediction log and late labels too). Produces: a
    stage change, the champion alias and a promotion record; with --challenger, the challenger
    alias on --version and its record."""
    from pipelines.mlflow import promotion

    if args.history:
        history = promotion.promotion_history(settings)
        print(history.to_string(index=False) if not history.empty else "no promotion yet")
        return {"history": history.to_dict(orient="records")}
    if args.challenger:
        if args.version is None or args.stage is not None or args.auto:
            raise UsageError("promote --challenger needs --version N (and no --stage or --auto)")
        reason = args.reason or "challenger by hand"
        decision = promotion.set_challenger(settings, args.version, reason, args.actor)
        print(
            f"{settings.mlflow.model_name} v{decision.version} is the challenger "
            f"(@{settings.mlflow.challenger_alias}): {decision.reason}"
        )
        return decision.as_dict()
    if args.auto:
        _, transactions = _load(args, settings, require_labels=True)
        decision = promotion.promote_if_better(settings, transactions, args.actor)
    else:
        if args.version is None or args.stage is None:
            raise UsageError("promote needs --version N --stage Production|Staging, or --auto")
        reason = args.reason or f"manual promotion to {args.stage}"
        decision = promotion.set_stage(settings, args.version, args.stage, reason, args.actor)
    verb = "promoted to" if decision.promoted else "placed in"
    print(f"{settings.mlflow.model_name} v{decision.version} {verb} {decision.stage}: ")
    print(f"  {decision.reason}")
    return decision.as_dict()


def cmd_serve(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Reads: the registry. Runs: the scoring API on gunicorn until stopped."""
    from serving.gunicorn_command import gunicorn_command

    env = dict(os.environ)
    if args.config:
        env[CONFIG_ENV] = str(Path(args.config).resolve())
    command = gunicorn_command(args.bind, args.workers)
    sys.stdout.flush()
    os.execvpe(command[0], command, env)
    return {}  # not reached: exec replaces this process


def cmd_registry_sync(args: argparse.Namespace, settings: Settings) -> Answer:
    """Reads and writes: the registry's markers of the model in service (it needs the write
    account). Produces: after a promotion made outside fraudflow (the alias moved, or a stage
    transition), the other marker moved into line, the previous Production version archived, a
    promotion record; a heartbeat file. With --health: exit 0 when the loop is alive and
    reaches the registry, 1 otherwise; with --live: 0 when the loop is alive."""
    from fraudflow import registry_sync

    if args.health or args.live:
        healthy, why = registry_sync.health(settings, live_only=args.live)
        print(f"registry sync {'healthy' if healthy else 'unhealthy'}: {why}")
        return Answer({"healthy": healthy, "reason": why}, 0 if healthy else FAILED_EXIT)
    code = registry_sync.run(settings, once=args.once, parent=args.parent)
    return Answer(None, code)


def cmd_warm(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Reads: historical transactions. Produces: the serving's online feature state, warmed."""
    from pipelines.state.factory import open_state

    path, transactions = _load(args, settings, require_labels=False)
    backend = settings.state.backend
    state = open_state(settings)
    started = time.perf_counter()
    added = 0
    # slices in time order, each its own write: a bar on a terminal, the same rows stored
    with tqdm(total=len(transactions), desc="warming", unit="tx", disable=None) as bar:
        for start in range(0, len(transactions), WARM_SLICE_ROWS):
            part = transactions.iloc[start : start + WARM_SLICE_ROWS]
            added += state.warm(part)
            bar.update(len(part))
    seconds = time.perf_counter() - started
    rate = len(transactions) / seconds if seconds > 0 else 0.0
    print(
        f"online state ({backend}): {added} transactions added ({len(transactions)} read from "
        f"{path}) in {seconds:.1f} s, {rate:,.0f} rows/s"
    )
    return {
        "added": added,
        "read": len(transactions),
        "data": str(path),
        "backend": backend,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rate, 1),
    }


def cmd_prune(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Reads: the prediction log, the reports, the online state. Produces: closed log days
    compacted to Parquet; log days, labels, report folders and state rows past their retention
    deleted (prediction_log.retention_days, monitoring.reports_retention_days, the
    features' longest window + label delay + a margin)."""
    from fraudflow.prune import prune_and_describe

    result, line = prune_and_describe(settings)
    print(line)
    return result


def cmd_backup(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Reads: the MLflow store (SQLite or PostgreSQL) and its artifacts, the online state, the
    prediction log and the reports, while the API serves. Produces: the next backup-NNNNNN
    under --output (default: backup.root) with a manifest of sizes and SHA-256s; backups
    beyond backup.keep deleted."""
    from pipelines.backup.run import describe, make_backup

    result = make_backup(settings, args.output)
    print(describe(result))
    return result.as_dict()


def cmd_restore(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Reads: a backup (--input: one backup-NNNNNN, or a backup root: its newest). Produces: the
    stores the settings name, restored; refused, with nothing changed, when the backup fails its
    manifest or its signature (integrity.backup_key; --allow-unsigned: not required), or a
    target is in use, or holds data without --force."""
    from pipelines.backup.run import RestoreRefused, restore_backup

    only = [p.strip() for p in args.only.split(",") if p.strip()] if args.only else None
    try:
        result = restore_backup(
            settings,
            Path(args.input),
            force=args.force,
            only=only,
            allow_unsigned=args.allow_unsigned,
        )
    except RestoreRefused as exc:
        if not exc.not_empty:
            raise
        raise StepFailed(f"{exc} (--force replaces what they hold)") from exc
    print(
        f"restored {', '.join(result.parts)} from {result.folder} in {result.seconds:.1f} s"
        + (f" (replaced: {', '.join(result.replaced)})" if result.replaced else "")
        + ("" if result.signed else "; its signature was NOT checked (--allow-unsigned)")
    )
    return result.as_dict()


def cmd_monitor(args: argparse.Namespace, settings: Settings) -> Answer:
    """Reads: the registry (model in service, its reference sample and training metrics), the
    prediction log, late labels. Produces: HTML reports and a JSON summary under reports/, a
    monitoring run; with --retrain, a retraining run. Exit code: 0 no drift, 1 drift,
    2 degraded, 3 error."""
    from drift.monitor import MonitorFailed, run_job

    window = monitor_window(settings, args.day, args.since, args.until)
    try:
        result = run_job(
            settings,
            window,
            [Path(p) for p in args.labels],
            retrain=args.retrain,
            data=Path(args.data) if args.data else None,
            say=print,
            progress=True,
        )
    except MonitorFailed as exc:  # already recorded as the error verdict
        print(f"fraudflow monitor: error: {exc}", file=sys.stderr)
        return Answer(None, MONITOR_FAILED_EXIT)
    if result.summary.retrain_error:
        print(
            f"fraudflow monitor: retraining failed: {result.summary.retrain_error}",
            file=sys.stderr,
        )
    return Answer(result.summary.as_dict(), result.outcome.exit_code)


def monitor_window(
    settings: Settings, day: str | None, since: str | None, until: str | None
) -> Window:
    """The window --day, or --since/--until, or (none of them) the last
    monitoring.window_hours name."""
    if day and (since or until):
        raise UsageError("--day and --since/--until exclude each other")
    if day:
        try:
            return Window.day(day)
        except ValueError as exc:
            raise UsageError(f"--day: {exc}") from exc
    if not (since or until):
        return Window.last_hours(settings.monitoring.window_hours)
    try:
        end = pd.Timestamp(until or datetime.now(timezone.utc))
        start = (
            pd.Timestamp(since)
            if since
            else end - pd.Timedelta(hours=settings.monitoring.window_hours)
        )
    except ValueError as exc:
        raise UsageError(f"--since/--until must be ISO times: {exc}") from exc
    start = start.tz_localize("UTC") if start.tzinfo is None else start
    end = end.tz_localize("UTC") if end.tzinfo is None else end
    if start >= end:
        raise UsageError(f"empty window: --since {start} is not before {end}")
    return Window(start.to_pydatetime(), end.to_pydatetime())


def cmd_retrain(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Reads: labelled history, the prediction log and late labels. Produces: a retraining run,
    a challenger version in Staging, promoted to Production only if it beats the champion."""
    import getpass

    from pipelines.log.traffic import production_transactions
    from pipelines.training.retrain import retrain

    path, history = _load(args, settings, require_labels=True)
    production = production_transactions(settings, [Path(p) for p in args.labels])
    trigger = {"fraudflow.trigger": args.trigger, "actor": args.actor or getpass.getuser()}
    result = retrain(settings, history, production, trigger, data_path=str(path))
    print(
        f"retrained on {result.rows['training_data_rows']:,} transactions "
        f"({result.rows['new_production_rows']:,} from production): challenger "
        f"{settings.mlflow.model_name} v{result.version} -> {result.decision.stage}"
        + (f", @{settings.mlflow.challenger_alias}" if result.challenger else "")
    )
    print(f"  {result.decision.reason}")
    return result.as_dict()


def cmd_demo(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Simulate (unless data exists), train, auto-promote, summarise; then serve, replay
    traffic, hot-swap a second version, send drifted traffic, monitor and retrain, and stop the
    API."""
    from fraudflow.demo import run_serving_half, run_training_half

    summary = run_training_half(settings, data=args.data, fresh=args.fresh)
    if not args.skip_serving and run_serving_half(settings, args.config, args.data) != 0:
        raise DemoError("the serving part of the demo failed (see its output above)")
    return summary


def _train_summary(path: str, *keys: str) -> dict[str, Any]:
    """The JSON summary `fraudflow train --output` wrote, holding `keys`."""
    try:
        summary = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"--summary {path} is not JSON: {exc}") from exc
    missing = [k for k in keys if not isinstance(summary, dict) or k not in summary]
    if missing:
        raise UsageError(
            f"--summary {path} lacks {', '.join(missing)}: not what `fraudflow train --output` "
            "writes"
        )
    return summary


def cmd_check_gates(args: argparse.Namespace, settings: Settings) -> Answer:
    """Reads: the JSON summary of `fraudflow train --output` and the promotion.gates of the
    same --config, so that CI and `fraudflow promote --auto` judge a model by the same
    minimums. Exit code: 0 passes every gate, 1 misses one."""
    from pipelines.mlflow.promotion import training_gate_failures

    gates = settings.promotion.gates
    metrics = _train_summary(args.summary, "test_metrics")["test_metrics"]
    for name, minimum in sorted(gates.items()):
        print(f"{name:>20}: {metrics.get(name, float('nan')):.4f} (gate {minimum})")
    failures = training_gate_failures(metrics, gates)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    summary = {"summary": args.summary, "gates": gates, "passed": not failures}
    return Answer({**summary, "failures": failures}, FAILED_EXIT if failures else 0)


def cmd_export_model(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Reads: the JSON summary of `fraudflow train --output` and the registry. Produces: the
    MLflow model folder of the version it registered (MLmodel, the booster, its environment
    files) in --output, replaced: the copy of every model CI trained that CI keeps outside the
    MLflow store."""
    from pipelines.mlflow.models import ModelExportError, export_model

    if not args.output:
        raise UsageError("export-model needs --output FOLDER")
    trained = _train_summary(args.summary, "model_name", "model_version")
    name, version = trained["model_name"], str(trained["model_version"])
    try:
        folder = export_model(settings, name, version, Path(args.output))
    except ModelExportError as exc:
        raise StepFailed(str(exc)) from exc
    print(f"exported {version} to {folder}")
    return {"model_name": name, "model_version": version, "folder": str(folder)}


def cmd_record_promotion(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Reads: the registry. Produces: the version in service (stage or alias, as
    serving.model_source says), its promotion tags and test metrics in a small JSON file
    (--output) that a pull request records: when the file changes, a new version was
    promoted."""
    from pipelines.mlflow.promotion import champion_record

    if not args.output:
        raise UsageError("record-promotion needs --output FILE")
    record = champion_record(settings)
    print(f"champion: {record['name']} v{record['version']} -> {args.output}")
    return record


def cmd_registry_account(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Creates a service account on an MLflow tracking server run with the basic-auth app, or
    sets its password when it exists (running it again rotates the password). Acts as the
    admin MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD name; the account's password
    comes from $FRAUDFLOW_REGISTRY_ACCOUNT_PASSWORD, never from the command line (which `ps`
    shows)."""
    from pipelines.mlflow.accounts import AccountError, ensure_account

    tracking_uri = args.tracking_uri or settings.mlflow.tracking_uri
    if not tracking_uri:
        raise UsageError("no tracking server: set MLFLOW_TRACKING_URI or pass --tracking-uri")
    password = os.environ.get(ACCOUNT_PASSWORD_ENV, "")
    if not password:
        raise UsageError(f"set {ACCOUNT_PASSWORD_ENV} to the account's password")
    try:
        outcome = ensure_account(tracking_uri, args.username, password)
    except AccountError as exc:
        raise StepFailed(str(exc)) from exc
    print(f"registry account {args.username!r} {outcome}")
    return {"username": args.username, "outcome": outcome}


def _whole(text: str) -> int:
    """An integer, also when MLflow passes it as a float ("5000.0")."""
    value = float(text)
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


class Parser(argparse.ArgumentParser):
    """Refuses a bad command line with its command's usage exit code: 2, or the monitor's error
    verdict (3), since a scheduler reads the monitor's 2 as "degraded"."""

    usage_exit = USAGE_EXIT
    commands: dict[str, "Parser"]

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(self.usage_exit, f"{self.prog}: error: {message}\n")


def build_parser() -> Parser:
    parser = Parser(prog="fraudflow", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = sub.choices

    def add(
        name: str,
        func,
        help_text: str,
        data: bool = False,
        summary: bool = True,
        output_help: str | None = None,
        **output,
    ) -> Parser:
        p = sub.add_parser(name, help=help_text, description=func.__doc__)
        p.add_argument(
            "--config", help="YAML overlay on conf/default.yaml (default: $FRAUDFLOW_CONFIG)"
        )
        if data:
            p.add_argument("--data", help="CSV/Parquet file or folder (default: data.path)")
        target = "JSON summary" if summary else "data"
        p.add_argument(
            "--output", help=output_help or f"where to write the result ({target})", **output
        )
        p.set_defaults(func=func, writes_summary=summary)
        return p

    p = add(
        "simulate", cmd_simulate, "simulate transactions, one Parquet file per day", summary=False
    )
    p.add_argument("--customers", type=_whole)
    p.add_argument("--terminals", type=_whole)
    p.add_argument("--days", type=_whole)
    p.add_argument("--seed", type=_whole)
    p.add_argument("--start-date")
    p.add_argument("--overwrite", action="store_true", help="replace existing day files")
    add("train", cmd_train, "train, log and register a model", data=True)
    p = add("backtest", cmd_backtest, "prequential evaluation over weekly folds", data=True)
    p.add_argument("--folds", type=_whole)
    p = add("ablate", cmd_ablate, "which features and training choices earn their place")
    p.add_argument("--seeds", type=_whole, nargs="+", help="simulator seeds (ablation.seeds)")
    p.add_argument("--reference", help="today's model configuration (conf/model-reference.yaml)")
    p.add_argument("--variant", action="append", help="run only this variant (repeatable)")
    p.add_argument("--markdown", help="also write the table here")
    p.add_argument("--jobs", type=_whole, help="seeds run at once (ablation.jobs)")
    p = add("tune", cmd_tune, "parameter search on validation periods (MLflow runs)")
    p.add_argument(
        "--data",
        action="append",
        help="CSV/Parquet file or folder; repeat for several datasets (default: data.path)",
    )
    p.add_argument("--trials", type=_whole, help="trial budget (tuning.trials)")
    p.add_argument(
        "--timeout",
        type=float,
        help="time budget in seconds: no trial starts after it (tuning.timeout_s)",
    )
    p.add_argument("--sampler", choices=["tpe", "random"], help="tuning.sampler")
    p = add("score", cmd_score, "batch-score raw transactions", data=True, summary=False)
    p.add_argument("--model-uri", help="default: the model in service (stage or alias)")
    p.add_argument(
        "--engine",
        choices=["local", "spark"],
        default="local",
        help="local: this process, one output file; spark: a Parquet folder partitioned by day",
    )
    p.add_argument("--master", help="Spark master URL for --engine spark (default: local[*])")
    p = add("promote", cmd_promote, "promote a model version", data=True)
    p.add_argument("--version", help="version number, or 'auto' (same as --auto)")
    p.add_argument("--stage", choices=["Production", "Staging"])
    p.add_argument("--reason")
    p.add_argument("--actor", help="who decides (default: the OS user)")
    p.add_argument(
        "--auto",
        action="store_true",
        help="newest vs champion, gated (the challenger, on live evidence, when "
        "promotion.live_evidence.required)",
    )
    p.add_argument(
        "--challenger",
        action="store_true",
        help="make --version the challenger (scored beside the champion)",
    )
    p.add_argument("--history", action="store_true", help="print the promotion history")
    p = add("serve", cmd_serve, "run the scoring API (gunicorn)", summary=False)
    p.add_argument("--bind", help="host:port (default: serving.host:serving.port)")
    p.add_argument("--workers", type=_whole)
    p = add(
        "registry-sync",
        cmd_registry_sync,
        "bring the registry's alias and stage into line after a promotion in the MLflow UI",
        summary=False,
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one pass, then exit")
    mode.add_argument(
        "--health",
        action="store_true",
        help="exit 0 when the loop's last pass is recent and reached the registry",
    )
    mode.add_argument(
        "--live", action="store_true", help="exit 0 when the loop's last pass is recent"
    )
    p.add_argument("--parent", type=_whole, help=argparse.SUPPRESS)
    add("warm", cmd_warm, "load history into the online state", data=True, summary=False)
    add("prune", cmd_prune, "compact the log, delete what is past its retention")
    p = add("retrain", cmd_retrain, "retrain on the latest labelled data, gated", data=True)
    p.add_argument("--labels", action="append", default=[], help="labelled file(s)")
    p.add_argument("--trigger", default="manual", help="why (tagged on the runs)")
    p.add_argument("--actor", help="who (default: the OS user)")
    p = add(
        "monitor",
        cmd_monitor,
        "drift and performance check of the prediction log (history for --retrain: --data)",
        data=True,
    )
    p.usage_exit = MONITOR_FAILED_EXIT
    p.add_argument("--day", help="a UTC day YYYY-MM-DD (default: the last window_hours)")
    p.add_argument("--since", help="window start, ISO time (UTC unless given)")
    p.add_argument("--until", help="window end, ISO time (default: now)")
    p.add_argument("--labels", action="append", default=[], help="labelled file(s)")
    p.add_argument("--retrain", action="store_true", help="retrain if the verdict says so")
    add(
        "backup",
        cmd_backup,
        "back up every store into a numbered, checksummed folder under --output",
        summary=False,
    )
    p = add("restore", cmd_restore, "restore a backup into empty stores (--force: replace)")
    p.add_argument("--input", required=True, help="a backup folder, or a root of backups")
    p.add_argument("--force", action="store_true", help="replace stores that hold data")
    p.add_argument("--only", help="comma-separated parts (default: all the backup holds)")
    p.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="restore a backup whose signature cannot be checked (unsigned, or no "
        "integrity.backup_key here); a signature that does not match is always refused",
    )
    p = add("demo", cmd_demo, "the whole flow on the embedded store", data=True)
    p.add_argument("--fresh", action="store_true", help="re-simulate even if data exists")
    p.add_argument("--skip-serving", action="store_true", help="stop after the training side")
    trained = "the JSON summary `fraudflow train --output` wrote"
    p = add("check-gates", cmd_check_gates, "fail unless a trained model meets promotion.gates")
    p.add_argument("--summary", required=True, help=trained)
    p = add(
        "export-model",
        cmd_export_model,
        "copy a trained version's MLflow model folder out of the registry",
        summary=False,
        output_help="the folder to write the model to (replaced)",
        required=True,
    )
    p.add_argument("--summary", required=True, help=trained)
    add(
        "record-promotion",
        cmd_record_promotion,
        "write the version in service to a JSON file a pull request records",
        output_help=f"the JSON file to write (default: {RECORD_DEFAULT})",
        default=RECORD_DEFAULT,
    )
    p = add(
        "registry-account",
        cmd_registry_account,
        "create a service account (not an admin) on the tracking server, or rotate its password",
    )
    p.add_argument("--username", required=True, help="the service account's name")
    p.add_argument(
        "--tracking-uri",
        help="the tracking server (default: mlflow.tracking_uri, or $MLFLOW_TRACKING_URI)",
    )
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line, refused (SystemExit) with its command's usage exit code."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse leaves these to the top parser, which knows no command's code
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    for name in (
        "config",
        "data",
        "output",
        "model_uri",
        "version",
        "day",
        "since",
        "until",
        "only",
        "master",
    ):
        if getattr(args, name, None) == "":
            setattr(args, name, None)  # MLproject passes unset optional parameters as ""
    if getattr(args, "version", None) == "auto":
        args.version, args.auto = None, True
    setup_logging(args.verbose)
    monitor = args.command == "monitor"
    usage_exit = MONITOR_FAILED_EXIT if monitor else USAGE_EXIT
    failed_exit = MONITOR_FAILED_EXIT if monitor else FAILED_EXIT
    try:
        # the API and the jobs of one image read the same overlay: gunicorn takes it from
        # $FRAUDFLOW_CONFIG, and so does every command without --config
        settings = load_settings(args.config or os.environ.get(CONFIG_ENV) or None)
        result = args.func(args, settings)
        code = 0
        if isinstance(result, Answer):  # a command whose exit code is its answer
            result, code = result.summary, result.code
        if args.writes_summary and result is not None:
            _write_json(result, args.output)
        return code
    except (SettingsError, DataValidationError, UsageError, FileNotFoundError) as exc:
        print(f"fraudflow {args.command}: error: {exc}", file=sys.stderr)
        return usage_exit
    except (
        ValueError,
        DemoError,
        StepFailed,
        StateUnavailable,
        PostgresError,
        RedisBackupError,
    ) as exc:
        print(f"fraudflow {args.command}: failed: {exc}", file=sys.stderr)
        return failed_exit
    except Exception as exc:
        if not monitor:
            raise
        # a crash of the monitor must not exit 1, which a scheduler reads as "drift"
        log.exception("monitor failed")
        print(f"fraudflow monitor: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return MONITOR_FAILED_EXIT


if __name__ == "__main__":
    sys.exit(main())
