"""Prometheus metrics, declared once per app with a small fixed set of label values.

Under gunicorn (PROMETHEUS_MULTIPROC_DIR set) every worker writes its own files and /metrics
adds them up; in-process (tests, `flask run`) each app gets a fresh registry.
"""

from __future__ import annotations

import glob
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flask import Flask
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_flask_exporter import PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

from pipelines.log.record import ROLES
from serving.model_holder import ServedModel
from serving.monitor_metrics import MonitorCollector
from serving.predictor import Prediction

PROBABILITY_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99, 1.0)
LOOKUP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
DECISIONS = ("approve", "review", "decline")


@dataclass
class ServiceMetrics:
    exporter: PrometheusMetrics
    predictions: Counter
    probability: Histogram
    lookup: Histogram
    model_version: Gauge
    model_loaded_at: Gauge
    registry_up: Gauge
    markers_disagree: Gauge
    reloads: Counter
    reload_failures: Counter
    feedback: Counter
    # what the model that did not answer said (the challenger in shadow, the champion for a
    # canary's cards), and the challenger's failures to score
    shadow_decisions: Counter
    challenger_errors: Counter
    challenger_load_failures: Counter
    canary_rolled_back: Gauge
    canary_percent: Gauge
    # one child per decision and role, resolved once: `.labels()` on every prediction costs a
    # lock and a lookup
    by_decision: dict[tuple[str, str], Counter] = field(default_factory=dict)
    shadow_by_decision: dict[tuple[str, str], Counter] = field(default_factory=dict)

    def scored(
        self, decision: str, probability: float, lookup_seconds: float, role: str = "champion"
    ) -> None:
        """One answered transaction: its decision and the role that took it, its probability,
        its feature lookup time."""
        self.by_decision[decision, role].inc()
        self.probability.observe(probability)
        self.lookup.observe(lookup_seconds)

    def shadowed(self, prediction: Prediction) -> None:
        """What the model that did not answer said of a transaction."""
        silent = "challenger" if prediction.model_role == "champion" else "champion"
        score = prediction.challenger if silent == "challenger" else prediction.champion
        if score is None or score.decision is None:
            self.challenger_errors.inc()
            return
        self.shadow_by_decision[score.decision, silent].inc()

    def on_model_event(self, event: str, model: ServedModel | None) -> None:
        """The champion's ModelHolder listener: reloads, failures, registry health and whether
        the registry's two markers (alias and stage) name different versions."""
        version = self.model_version.labels(model_role="champion")
        if event in ("markers_agree", "markers_disagree"):
            self.markers_disagree.set(1.0 if event == "markers_disagree" else 0.0)
            return
        if event == "cache_load" and model is not None:  # the registry stays down
            version.set(float(model.version))
            self.model_loaded_at.set(time.time())
            return
        if event == "reload" and model is not None:
            self.reloads.inc()
            version.set(float(model.version))
            self.model_loaded_at.set(time.time())
        elif event == "reload_failure":
            self.reload_failures.inc()
        self.registry_up.set(0.0 if event == "registry_error" else 1.0)

    def on_challenger_event(self, event: str, model: ServedModel | None) -> None:
        """The challenger's holder listener: its version gauge (0 while none is loaded) and its
        load failures; the champion's reload figures and registry health are not its to move."""
        version = self.model_version.labels(model_role="challenger")
        if event == "reload" and model is not None:
            version.set(float(model.version))
        elif event == "unloaded":
            version.set(0.0)
        elif event == "reload_failure":
            self.challenger_load_failures.inc()

    def on_canary_event(self, event: str, record: dict) -> None:
        """CanaryGuard listener: 1 once this worker learns its challenger's canary stopped,
        0 again when a canary (a new challenger version) opens."""
        if event in ("canary_rolled_back", "canary_open"):
            self.canary_rolled_back.set(1.0 if event == "canary_rolled_back" else 0.0)

    def canary_share(self, percent: float) -> Callable[[str, dict], None]:
        """A CanaryGuard listener: the share of cards this worker sends to the challenger,
        `percent` once its canary opens, 0 once it stops."""

        def listener(event: str, record: dict) -> None:
            if event == "canary_open":
                self.canary_percent.set(percent)
            elif event == "canary_rolled_back":
                self.canary_percent.set(0.0)

        return listener


class StartingWorkerTolerantCollector(MultiProcessCollector):
    """The workers' metric files, leaving out a file a starting worker has created but not yet
    sized (prometheus_client issue 1199): read as it is, it fails the whole scrape with a 500.
    Such a file holds no sample yet, so nothing is lost."""

    def collect(self):
        files = glob.glob(os.path.join(self._path, "*.db"))
        return self.merge([f for f in files if _readable(f)], accumulate=True)


def _readable(path: str) -> bool:
    try:
        MmapedDict.read_all_values_from_file(path)
    except FileNotFoundError:
        return False  # a dead worker's live gauge, removed since the glob
    except (struct.error, ValueError):
        return False  # created, not sized yet
    return True


class GunicornExporter(GunicornInternalPrometheusMetrics):
    """The exporter of gunicorn's multiprocess mode, plus collectors computed at scrape time.

    Its /metrics builds a fresh registry per scrape (the workers' files), so collectors
    registered on `registry` would be left out; they are added to each scrape here instead.
    """

    def __init__(self, app: Flask, **kwargs) -> None:
        self.scrape_collectors: list[Collector] = []
        super().__init__(app, **kwargs)

    def generate_metrics(self, accept_header=None, names=None):
        registry = CollectorRegistry()
        StartingWorkerTolerantCollector(registry)
        for collector in self.scrape_collectors:
            registry.register(collector)
        if names:
            registry = registry.restricted_registry(names)
        encode, content_type = choose_encoder(accept_header)
        return encode(registry).decode("utf-8"), content_type


def multiprocess_mode() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def create_metrics(
    app: Flask, monitor_summary: Path | None = None, storage: Collector | None = None
) -> ServiceMetrics:
    """`monitor_summary`: the monitor's latest.json, exported as gauges at each scrape;
    `storage`: a collector of the data volume's figures, also read at each scrape."""
    if multiprocess_mode():
        exporter: PrometheusMetrics = GunicornExporter(app, group_by="endpoint")
        registry = None  # values live in the multiprocess files, collected at /metrics
    else:
        registry = CollectorRegistry()
        exporter = PrometheusMetrics(app, registry=registry, group_by="endpoint")
    metrics = ServiceMetrics(
        exporter=exporter,
        predictions=Counter(
            "fraudflow_predictions_total",
            "Answered transactions by decision and by the role of the model that decided",
            ["decision", "model_role"],
            registry=registry,
        ),
        probability=Histogram(
            "fraudflow_fraud_probability",
            "Predicted fraud probability",
            buckets=PROBABILITY_BUCKETS,
            registry=registry,
        ),
        lookup=Histogram(
            "fraudflow_feature_lookup_seconds",
            "Online features: storing the transaction, reading its history, computing them",
            buckets=LOOKUP_BUCKETS,
            registry=registry,
        ),
        model_version=Gauge(
            "fraudflow_model_version",
            "Registry version of the model in service, by role (champion decides; challenger "
            "is scored beside it, 0 when none is loaded)",
            ["model_role"],
            multiprocess_mode="liveall",
            registry=registry,
        ),
        model_loaded_at=Gauge(
            "fraudflow_model_loaded_timestamp_seconds",
            "When the model in service was loaded",
            multiprocess_mode="liveall",
            registry=registry,
        ),
        registry_up=Gauge(
            "fraudflow_registry_up",
            "1 if the last registry check succeeded",
            multiprocess_mode="liveall",
            registry=registry,
        ),
        markers_disagree=Gauge(
            "fraudflow_registry_markers_disagree",
            "1 if, at the last poll, the champion alias and the Production stage named different "
            "versions (a promotion outside fraudflow the registry sync has not aligned yet)",
            multiprocess_mode="liveall",
            registry=registry,
        ),
        reloads=Counter(
            "fraudflow_model_reloads_total", "Models loaded and swapped in", registry=registry
        ),
        reload_failures=Counter(
            "fraudflow_model_reload_failures_total", "Failed model loads", registry=registry
        ),
        feedback=Counter(
            "fraudflow_feedback_labels_total", "Late labels received", ["label"], registry=registry
        ),
        shadow_decisions=Counter(
            "fraudflow_shadow_decisions_total",
            "Decisions of the model that did not answer (the challenger in shadow, the champion "
            "on a canary's cards), by decision and role",
            ["decision", "model_role"],
            registry=registry,
        ),
        challenger_errors=Counter(
            "fraudflow_challenger_errors_total",
            "Transactions the challenger failed to score (the champion answered them)",
            registry=registry,
        ),
        challenger_load_failures=Counter(
            "fraudflow_challenger_load_failures_total",
            "Failed loads of the challenger version (the champion is not affected)",
            registry=registry,
        ),
        canary_percent=Gauge(
            "fraudflow_canary_percent",
            "The share of cards (percent) this worker sends to the challenger: the canary's "
            "percent while it is open, 0 in shadow, before it opens and once it stopped",
            multiprocess_mode="liveall",
            registry=registry,
        ),
        canary_rolled_back=Gauge(
            "fraudflow_canary_rolled_back",
            "1 while the canary of this worker's challenger version is stopped (it left the band "
            "around the champion; /model's challenger section holds the stop record)",
            multiprocess_mode="liveall",
            registry=registry,
        ),
    )
    scraped: list[Collector] = [] if storage is None else [storage]
    if monitor_summary is not None:
        scraped.append(MonitorCollector(monitor_summary))
    for collector in scraped:
        if isinstance(exporter, GunicornExporter):
            exporter.scrape_collectors.append(collector)
        else:
            exporter.registry.register(collector)
    for role in ROLES:
        metrics.model_version.labels(model_role=role).set(0.0)  # none loaded yet
    for decision in DECISIONS:
        for role in ROLES:
            metrics.by_decision[decision, role] = metrics.predictions.labels(decision, role)
            metrics.shadow_by_decision[decision, role] = metrics.shadow_decisions.labels(
                decision, role
            )
    for label in ("0", "1"):
        metrics.feedback.labels(label=label)
    return metrics
