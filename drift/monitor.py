"""The monitor job: the prediction log of a window against the champion's training reference.

Reads: the registry (champion, reference sample, training-time metrics), the prediction log,
late labels. Produces: `<reports_dir>/<time>-v<version>/` with index.html (verdict and reasons),
drift.html and performance.html (Evidently), summary.json; `<reports_dir>/latest.json` (read by
the API's /metrics); a run in the monitoring experiment; with --retrain, a retraining run.
Exit code: 0 no drift, 1 drift, 2 degraded, 3 error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from drift.decision import Verdict, decide, should_retrain
from drift.page import render
from drift.performance import Performance, assess_performance
from drift.reference import Champion, NoChampionError, load_champion
from drift.report import drift_report, performance_report
from drift.summary import DriftSummary, parse
from pipelines.production import MonitoringInputError, Window, attach_labels, read_predictions
from pipelines.settings import Settings, SettingsError, load_settings
from pipelines.tracking import configure_tracking, ensure_experiment

log = logging.getLogger("fraudflow.monitor")


@dataclass(frozen=True)
class MonitorResult:
    verdict: Verdict
    summary: dict[str, Any]
    folder: Path

    @property
    def index(self) -> Path:
        return self.folder / "index.html"


def scored_by_champion(current: pd.DataFrame, champion: Champion) -> pd.DataFrame:
    """The champion's probability for every row: logged where it scored the row, recomputed
    from the logged features where another version did (before a promotion)."""
    other = (current["model_version"] != champion.version).to_numpy()
    if not other.any():
        return current
    rescored = current["fraud_probability"].to_numpy(float).copy()
    rescored[other] = champion.scorer.predict_proba(current.loc[other])
    return current.assign(fraud_probability=rescored)


def comparison_sample(current: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """A uniform random sample for the drift tests: with 50,000 rows the empirical distribution
    is within about 0.006 (Kolmogorov distance, 95 %) of the whole day's, far below the 0.1
    thresholds, while Evidently's time grows with the rows."""
    if len(current) <= max_rows:
        return current
    return current.sample(max_rows, random_state=0)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)


def reports_dir(settings: Settings) -> Path:
    return settings.under_workdir(settings.monitoring.reports_dir)


def _summary(
    champion: Champion,
    window: Window,
    rows: dict[str, int],
    drift: DriftSummary,
    performance: Performance,
    verdict: Verdict,
    settings: Settings,
    files: dict[str, str],
) -> dict[str, Any]:
    return {
        "verdict": verdict.value,
        "exit_code": verdict.exit_code,
        "checked_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": champion.name, "version": champion.version, "run_id": champion.run_id},
        "window": window.as_dict(),
        "rows": rows,
        "drift": drift.as_dict(),
        "performance": performance.as_dict(),
        "thresholds": {
            "drift_share": settings.monitoring.drift_share,
            "score_drift": settings.monitoring.score_drift,
            "tolerance": settings.monitoring.tolerance,
        },
        "files": files,
    }


def _log_run(summary: dict[str, Any], folder: Path, settings: Settings) -> str:
    experiment_id = ensure_experiment(settings, settings.mlflow.monitoring_experiment)
    drift, performance, model = summary["drift"], summary["performance"], summary["model"]
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"monitor-v{model['version']}"):
        mlflow.set_tags(
            {
                "fraudflow.step": "monitor",
                "verdict": summary["verdict"],
                "model_name": model["name"],
                "model_version": model["version"],
                "model_run_id": model["run_id"],
                "window_start": summary["window"]["start"],
                "window_end": summary["window"]["end"],
                "drifted_features": ",".join(drift["drifted_features"])[:4000],
            }
        )
        metrics = {
            "drifted_share": drift["drifted_share"],
            "drifted_count": drift["drifted_count"],
            "rows_current": summary["rows"]["current"],
            "rows_compared": summary["rows"]["compared"],
            "labelled_rows": performance["labelled_rows"],
            "labelled_frauds": performance["labelled_frauds"],
            **{f"drift_{c['column']}": c["score"] for c in drift["columns"]},
        }
        if drift["score"]:
            metrics["drift_fraud_probability"] = drift["score"]["score"]
        metrics.update({f"production_{k}": v for k, v in performance["production"].items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if pd.notna(v)})
        mlflow.log_artifacts(str(folder), artifact_path="report")
        return mlflow.active_run().info.run_id


def run_monitor(
    settings: Settings, window: Window, label_files: Sequence[Path] = ()
) -> MonitorResult:
    """Check one window: reports, summary, a monitoring run and the verdict."""
    from pipelines.retrain import label_sources

    configure_tracking(settings)
    champion = load_champion(settings)
    monitoring = settings.monitoring
    log_dir = settings.under_workdir(settings.serving.prediction_log_dir)
    features = list(champion.scorer.features)
    current = read_predictions(log_dir, window, features)
    if len(current) < monitoring.min_rows:
        raise MonitoringInputError(
            f"{len(current)} logged predictions in {log_dir} between {window.start.isoformat()} "
            f"and {window.end.isoformat()}; at least monitoring.min_rows={monitoring.min_rows} "
            "are needed for a verdict"
        )
    unlogged = [f for f in features if current[f].isna().all()]
    if unlogged:
        log.warning("features never logged in the window (all missing): %s", unlogged)
    current = attach_labels(
        scored_by_champion(current, champion), label_sources(settings, label_files)
    )
    compared = comparison_sample(current, monitoring.max_rows)
    log.info(
        "drift: %d of %d rows against %d reference rows",
        len(compared),
        len(current),
        len(champion.reference),
    )
    drift_snapshot = drift_report(champion.reference, compared, features, monitoring)
    drift = parse(drift_snapshot.dict())
    k = settings.training.card_precision_k
    performance = assess_performance(
        current, champion.scorer.threshold, champion.training_metrics, monitoring, k
    )
    verdict = decide(drift, performance, monitoring)

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    folder = reports_dir(settings) / f"{stamp}-v{champion.version}"
    folder.mkdir(parents=True, exist_ok=True)
    files = {"index_html": "index.html", "drift_html": "drift.html", "summary_json": "summary.json"}
    drift_snapshot.save_html(str(folder / files["drift_html"]))
    if performance.assessed and "tx_fraud" in champion.reference:
        labelled = current.loc[current["tx_fraud"].notna().to_numpy()]
        files["performance_html"] = "performance.html"
        performance_report(champion.reference, labelled, champion.scorer.threshold).save_html(
            str(folder / files["performance_html"])
        )
    rows = {
        "current": len(current),
        "compared": len(compared),
        "reference": len(champion.reference),
    }
    summary = _summary(champion, window, rows, drift, performance, verdict, settings, files)
    _write_pages(summary, folder)
    summary["run_id"] = _log_run(summary, folder, settings)
    summary["report"] = str(folder / files["index_html"])

    _write_json(settings.monitor_latest, summary)
    return MonitorResult(verdict, summary, folder)


def _write_pages(summary: dict[str, Any], folder: Path) -> None:
    """The report folder's summary.json and index.html, from the summary."""
    _write_json(folder / summary["files"]["summary_json"], summary)
    (folder / summary["files"]["index_html"]).write_text(render(summary))


def _update(result: MonitorResult, settings: Settings) -> None:
    """Rewrite the report files, their MLflow copy and latest.json after a retraining."""
    summary = result.summary
    _write_pages(summary, result.folder)
    mlflow.log_artifacts(str(result.folder), artifact_path="report", run_id=summary["run_id"])
    _write_json(settings.monitor_latest, summary)


def retrain_after(
    settings: Settings,
    result: MonitorResult,
    label_files: Sequence[Path] = (),
    data: Path | None = None,
) -> MonitorResult:
    """Retrain because of this monitor run; the runs link up by tags. A failed retraining is
    recorded in the summary (and re-raised): the verdict stays, serving is untouched."""
    try:
        result.summary["retrain"] = _retrain(settings, result.summary, label_files, data)
    except Exception as exc:
        result.summary["retrain_error"] = f"{type(exc).__name__}: {exc}"
        _update(result, settings)
        raise
    _update(result, settings)
    return result


def _retrain(
    settings: Settings, summary: dict[str, Any], label_files: Sequence[Path], data: Path | None
) -> dict[str, Any]:
    from pipelines.data import load_transactions
    from pipelines.retrain import production_transactions, retrain

    path = data or settings.data_path
    history = load_transactions(path, settings.data.columns, require_labels=True)
    production = production_transactions(settings, label_files)
    trigger = {
        "fraudflow.trigger": f"monitor:{summary['verdict']}",
        "monitor_run_id": summary["run_id"],
        "monitor_report": summary["report"],
    }
    result = retrain(settings, history, production, trigger, data_path=str(path))
    client = configure_tracking(settings)
    for key, value in (
        ("retrain_run_id", result.run_id),
        ("challenger_version", result.version),
        ("challenger_promoted", str(result.decision.promoted).lower()),
    ):
        client.set_tag(summary["run_id"], key, value)
    return result.as_dict()


def record_error(settings: Settings, message: str) -> None:
    """An error is a verdict too: /metrics shows it, so an alert can fire on a broken monitor."""
    folder = reports_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "verdict": Verdict.ERROR.value,
        "exit_code": Verdict.ERROR.exit_code,
        "checked_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "error": message,
    }
    _write_json(settings.monitor_latest, payload)


def window_from(args: argparse.Namespace, settings: Settings) -> Window:
    if args.day:
        return Window.day(args.day)
    if args.since or args.until:
        try:
            until = pd.Timestamp(args.until or datetime.now(timezone.utc))
            since = (
                pd.Timestamp(args.since)
                if args.since
                else until - pd.Timedelta(hours=settings.monitoring.window_hours)
            )
        except ValueError as exc:
            raise MonitoringInputError(f"--since/--until must be ISO times: {exc}") from exc
        since = since.tz_localize("UTC") if since.tzinfo is None else since
        until = until.tz_localize("UTC") if until.tzinfo is None else until
        if since >= until:
            raise MonitoringInputError(f"empty window: --since {since} is not before {until}")
        return Window(since.to_pydatetime(), until.to_pydatetime())
    return Window.last_hours(settings.monitoring.window_hours)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fraudflow monitor", description=__doc__)
    parser.add_argument("--config", help="YAML overlay on conf/default.yaml")
    parser.add_argument("--data", help="history for a retraining (default: data.path)")
    parser.add_argument("--output", help="also write the JSON summary here")
    parser.add_argument("--day", help="a UTC day YYYY-MM-DD (default: the last window_hours)")
    parser.add_argument("--since", help="window start, ISO time (UTC unless given)")
    parser.add_argument("--until", help="window end, ISO time (default: now)")
    parser.add_argument("--labels", action="append", default=[], help="labelled file(s)")
    parser.add_argument("--retrain", action="store_true", help="retrain if the verdict says so")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("config", "data", "output", "day", "since", "until"):
        if getattr(args, name) == "":
            setattr(args, name, None)  # MLproject passes unset optional parameters as ""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("alembic", "mlflow.store", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"fraudflow monitor: error: {exc}", file=sys.stderr)
        return Verdict.ERROR.exit_code
    started = time.perf_counter()
    labels = [Path(p) for p in args.labels]
    try:
        result = run_monitor(settings, window_from(args, settings), labels)
    except (MonitoringInputError, NoChampionError, FileNotFoundError) as exc:
        record_error(settings, str(exc))
        print(f"fraudflow monitor: error: {exc}", file=sys.stderr)
        return Verdict.ERROR.exit_code
    except Exception as exc:  # a crash must not exit 1, which a scheduler reads as "drift"
        log.exception("monitor failed")
        record_error(settings, f"{type(exc).__name__}: {exc}")
        print(f"fraudflow monitor: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return Verdict.ERROR.exit_code
    print(verdict_line(result.summary, time.perf_counter() - started))
    print(f"report: {result.index}", flush=True)
    code = result.verdict.exit_code
    if args.retrain and should_retrain(result.verdict, settings.monitoring):
        print("retraining on the latest labelled data ...", flush=True)
        try:
            retrain_after(settings, result, labels, Path(args.data) if args.data else None)
            r = result.summary["retrain"]
            print(
                f"retraining: challenger v{r['challenger_version']} -> {r['stage']}: {r['reason']}"
            )
        except Exception as exc:
            log.exception("retraining failed")
            print(f"fraudflow monitor: retraining failed: {exc}", file=sys.stderr)
            code = Verdict.ERROR.exit_code
    elif args.retrain:
        print(f"no retraining: the verdict is {result.verdict.value}")
    if args.output:
        _write_json(Path(args.output), result.summary)
    return code


def verdict_line(summary: dict[str, Any], seconds: float) -> str:
    drift, performance = summary["drift"], summary["performance"]
    parts = [
        f"verdict {summary['verdict'].upper()}:",
        f"{drift['drifted_count']}/{len(drift['columns'])} features drifted",
        f"({', '.join(drift['drifted_features'][:5]) or 'none'})",
    ]
    if drift["score"]:
        parts.append(f"score drift {drift['score']['score']:.3f}")
    if performance["assessed"]:
        p = performance["production"]
        parts.append(f"recall {p['recall']:.3f} precision {p['precision']:.3f}")
        parts.append(f"AP {p['average_precision']:.3f}")
        if performance["degraded_metrics"]:
            parts.append(f"degraded: {', '.join(performance['degraded_metrics'])}")
    else:
        parts.append(f"performance not assessed ({performance['labelled_frauds']} labelled frauds)")
    model = summary["model"]
    parts.append(
        f"- {model['name']} v{model['version']}, {summary['rows']['current']:,} predictions"
    )
    parts.append(f"in {seconds:.1f}s")
    return " ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
