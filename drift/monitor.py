"""The monitor job: the prediction log of a window against the champion's training reference.

Reads: the registry (champion, reference sample, training-time metrics), the prediction log,
late labels. Produces: `<reports_dir>/<time>-v<version>/` with index.html (verdict and reasons),
drift.html and performance.html (Evidently), summary.json; the latest summary (read by the
API's /metrics); a run in the monitoring experiment; on request, a retraining run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from drift.challenger import live_section, registry_challenger
from drift.decision import decide, should_retrain
from drift.page import render
from drift.performance import Performance, assess_performance
from drift.reference import Champion, NoChampionError, load_champion
from drift.report import drift_report, performance_report
from drift.report_parse import DriftSummary, parse
from drift.window import Window
from pipelines.data import load_transactions
from pipelines.live_evidence import flat_metrics
from pipelines.log.reader import MonitoringInputError, read_log
from pipelines.log.record import log_folder
from pipelines.log.traffic import attach_labels, label_sources, production_transactions
from pipelines.mlflow import runs
from pipelines.monitor_summary import MonitorSummary, Verdict, write_summary
from pipelines.settings import Settings
from pipelines.training.retrain import retrain

log = logging.getLogger("fraudflow.monitor")


@dataclass(frozen=True)
class MonitorResult:
    summary: MonitorSummary
    folder: Path

    @property
    def verdict(self) -> Verdict:
        return self.summary.verdict

    @property
    def index(self) -> Path:
        return self.folder / "index.html"

    @property
    def outcome(self) -> Verdict:
        """What a scheduler acts on: the verdict, or the error verdict when the retraining it
        asked for failed (the verdict itself stays in the summary)."""
        return Verdict.ERROR if self.summary.retrain_error else self.summary.verdict


def scored_by_champion(current: pd.DataFrame, champion: Champion, threads: int = 1) -> pd.DataFrame:
    """The champion's probability for every row: logged where its version scored the row (the
    answer, or beside a challenger's answer: canary rows, or rows of a challenger since
    promoted), recomputed from the logged features where only other versions did (before a
    promotion)."""
    probability = current["fraud_probability"].to_numpy(float).copy()
    known = (current["model_version"] == champion.version).to_numpy()
    for role in ("challenger", "champion"):  # the champion's own field has the last word
        if f"{role}_version" not in current:
            continue
        logged = (
            (current[f"{role}_version"].astype(str) == champion.version)
            & current[f"{role}_probability"].notna()
        ).to_numpy()
        probability[logged] = current[f"{role}_probability"].to_numpy(float)[logged]
        known |= logged
    if not known.all():
        probability[~known] = champion.scorer.predict_proba(current.loc[~known], threads)
    return current.assign(fraud_probability=probability)


def comparison_sample(current: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """A uniform random sample for the drift tests: with 50,000 rows the empirical distribution
    is within about 0.006 (Kolmogorov distance, 95 %) of the whole day's, far below the 0.1
    thresholds, while Evidently's time grows with the rows."""
    if len(current) <= max_rows:
        return current
    return current.sample(max_rows, random_state=0)


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
    live: dict[str, Any] | None,
) -> MonitorSummary:
    return MonitorSummary(
        verdict=verdict,
        model={"name": champion.name, "version": champion.version, "run_id": champion.run_id},
        window=window.as_dict(),
        rows=rows,
        drift=drift.as_dict(),
        performance=performance.as_dict(),
        thresholds={
            "drift_share": settings.monitoring.drift_share,
            "score_drift": settings.monitoring.score_drift,
            "tolerance": settings.monitoring.tolerance,
        },
        files=files,
        live=live,
    )


def _log_run(summary: MonitorSummary, folder: Path, settings: Settings) -> str:
    drift, performance, model = summary.drift, summary.performance, summary.model
    tags = {
        "verdict": summary.verdict.value,
        "model_name": model["name"],
        "model_version": model["version"],
        "model_run_id": model["run_id"],
        "window_start": summary.window["start"],
        "window_end": summary.window["end"],
        "drifted_features": ",".join(drift["drifted_features"])[:4000],
    }
    metrics = {
        "drifted_share": drift["drifted_share"],
        "drifted_count": drift["drifted_count"],
        "rows_current": summary.rows["current"],
        "rows_compared": summary.rows["compared"],
        "labelled_rows": performance["labelled_rows"],
        "labelled_frauds": performance["labelled_frauds"],
        "torn_log_records": summary.rows.get("torn_records", 0),
        **{f"drift_{c['column']}": c["score"] for c in drift["columns"]},
    }
    if drift["score"]:
        metrics["drift_fraud_probability"] = drift["score"]["score"]
    metrics.update({f"production_{k}": v for k, v in performance["production"].items()})
    if summary.live:
        tags["live_challenger_version"] = summary.live["challenger_version"]
        tags["live_verdict"] = summary.live["verdict"]
        metrics.update(flat_metrics(summary.live))
    return runs.log_monitor_run(settings, f"monitor-v{model['version']}", tags, metrics, folder)


MONITOR_STEPS = ("model", "prediction log", "re-score", "drift", "performance", "reports")


def run_monitor(
    settings: Settings, window: Window, label_files: Sequence[Path] = (), progress: bool = False
) -> MonitorResult:
    """Check one window: reports, summary, a monitoring run and the verdict. With
    `progress`, a bar of its steps on a terminal (none when stderr is not one)."""
    with tqdm(
        total=len(MONITOR_STEPS), desc="monitor", unit="step", disable=None if progress else True
    ) as bar:
        return _run_monitor(settings, window, label_files, bar)


def _step(bar: tqdm, name: str) -> None:
    bar.set_postfix_str(name, refresh=False)
    bar.update(1)


def _run_monitor(
    settings: Settings, window: Window, label_files: Sequence[Path], bar: tqdm
) -> MonitorResult:
    champion = load_champion(settings)
    _step(bar, "model")
    monitoring = settings.monitoring
    log_dir = log_folder(settings)
    features = list(champion.scorer.features)
    logged = read_log(log_dir, window.start, window.end, features, roles=True)
    _step(bar, "prediction log")
    current = logged.predictions
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
        scored_by_champion(current, champion, settings.batch.resolved_threads),
        label_sources(settings, label_files),
    )
    _step(bar, "re-score")
    compared = comparison_sample(current, monitoring.max_rows)
    log.info(
        "drift: %d of %d rows against %d reference rows",
        len(compared),
        len(current),
        len(champion.reference),
    )
    drift_snapshot = drift_report(champion.reference, compared, features, monitoring)
    drift = parse(drift_snapshot.dict())
    _step(bar, "drift")
    k = settings.training.card_precision_k
    performance = assess_performance(
        current, champion.scorer.threshold, champion.training_metrics, monitoring, k
    )
    verdict = decide(drift, performance, monitoring)
    live = live_section(current, champion.version, settings, registry_challenger(settings))
    _step(bar, "performance")

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
        # records a failed or killed writer never finished (never acknowledged), left out
        "torn_records": logged.torn_records,
    }
    summary = _summary(champion, window, rows, drift, performance, verdict, settings, files, live)
    _write_pages(summary, folder)
    summary.run_id = _log_run(summary, folder, settings)
    summary.report = str(folder / files["index_html"])

    write_summary(settings.monitor_latest, summary)
    _step(bar, "reports")
    return MonitorResult(summary, folder)


def _write_pages(summary: MonitorSummary, folder: Path) -> None:
    """The report folder's summary.json and index.html, from the summary."""
    write_summary(folder / summary.files["summary_json"], summary)
    (folder / summary.files["index_html"]).write_text(render(summary.as_dict()))


def _update(result: MonitorResult, settings: Settings) -> None:
    """Rewrite the report files, their MLflow copy and the latest summary after a retraining."""
    _write_pages(result.summary, result.folder)
    runs.log_report(settings, result.summary.run_id, result.folder)
    write_summary(settings.monitor_latest, result.summary)


def retrain_after(
    settings: Settings,
    result: MonitorResult,
    label_files: Sequence[Path] = (),
    data: Path | None = None,
) -> MonitorResult:
    """Retrain because of this monitor run; the runs link up by tags. A failed retraining is
    recorded in the summary (and re-raised): the verdict stays, serving is untouched."""
    try:
        result.summary.retrain = _retrain(settings, result.summary, label_files, data)
    except Exception as exc:
        result.summary.retrain_error = f"{type(exc).__name__}: {exc}"
        _update(result, settings)
        raise
    _update(result, settings)
    return result


def _retrain(
    settings: Settings, summary: MonitorSummary, label_files: Sequence[Path], data: Path | None
) -> dict[str, Any]:
    path = data or settings.data_path
    history = load_transactions(path, settings.data.columns, require_labels=True)
    production = production_transactions(settings, label_files)
    trigger = {
        "fraudflow.trigger": f"monitor:{summary.verdict.value}",
        "monitor_run_id": summary.run_id,
        "monitor_report": summary.report,
    }
    result = retrain(settings, history, production, trigger, data_path=str(path))
    runs.tag_run(
        settings,
        summary.run_id,
        {
            "retrain_run_id": result.run_id,
            "challenger_version": result.version,
            "challenger_promoted": str(result.decision.promoted).lower(),
        },
    )
    return result.as_dict()


def record_error(settings: Settings, message: str) -> MonitorSummary:
    """An error is a verdict too: /metrics shows it, so an alert can fire on a broken monitor."""
    summary = MonitorSummary(verdict=Verdict.ERROR, error=message)
    write_summary(settings.monitor_latest, summary)
    return summary


def verdict_line(summary: MonitorSummary, seconds: float) -> str:
    """The one line a person or a scheduler's log reads."""
    drift, performance = summary.drift, summary.performance
    parts = [
        f"verdict {summary.verdict.value.upper()}:",
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
    if summary.live:
        live = summary.live
        parts.append(
            f"challenger v{live['challenger_version']} on {live['rows']:,} shared predictions: "
            f"{live['verdict']}"
        )
    model = summary.model
    parts.append(f"- {model['name']} v{model['version']}, {summary.rows['current']:,} predictions")
    if summary.rows.get("torn_records"):
        parts.append(f"({summary.rows['torn_records']} torn log records skipped)")
    parts.append(f"in {seconds:.1f}s")
    return " ".join(parts)


class MonitorFailed(RuntimeError):
    """The check reached no verdict; the error is already recorded as the error verdict."""


def run_job(
    settings: Settings,
    window: Window,
    labels: Sequence[Path],
    retrain: bool,
    data: Path | None,
    say: Callable[[str], None],
    progress: bool = False,
) -> MonitorResult:
    """The daily job: check the window, say the verdict, retrain if the verdict says so.

    Any failure of the check is recorded as the error verdict and raised as MonitorFailed; a
    failed retraining is recorded in the summary (`retrain_error`) and the result returned, so
    its report is still written and the verdict stays."""
    started = time.perf_counter()
    try:
        result = run_monitor(settings, window, labels, progress)
    except (MonitoringInputError, NoChampionError, FileNotFoundError) as exc:
        record_error(settings, str(exc))
        raise MonitorFailed(str(exc)) from exc
    except Exception as exc:  # any crash is the error verdict, never one read as "drift"
        log.exception("monitor failed")
        message = f"{type(exc).__name__}: {exc}"
        record_error(settings, message)
        raise MonitorFailed(message) from exc
    say(verdict_line(result.summary, time.perf_counter() - started))
    say(f"report: {result.index}")
    if retrain and should_retrain(result.verdict, settings.monitoring):
        say("retraining on the latest labelled data ...")
        try:
            retrain_after(settings, result, labels, data)
        except Exception:
            log.exception("retraining failed")
        else:
            r = result.summary.retrain
            say(f"retraining: challenger v{r['challenger_version']} -> {r['stage']}: {r['reason']}")
    elif retrain:
        say(f"no retraining: the verdict is {result.verdict.value}")
    return result
