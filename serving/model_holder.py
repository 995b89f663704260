"""The model in service: loaded from the registry, polled, swapped atomically.

Each worker holds one `ServedModel` reference; a request reads it once and finishes on that
model even if a newer one is swapped in meanwhile. Registry failures never unload a model.
Every model loaded from the registry is kept in the replica's model cache; a worker that has no
model and cannot get one from the registry serves the cached one until the registry answers.
With `mlflow.model_source: markers` it follows the registry marker (alias or stage) that moved
since its last poll (`pipelines.mlflow.markers`). A holder given `integrity.model_key` loads only
versions whose files match their signature (from the registry and from the cache alike), before
any parser reads them. Every version's files are
checked (hashes, the booster text) and loaded and scored in a child process (`ModelProbe`)
before this process parses them; a version that fails is retried with a doubling back-off.
"""

from __future__ import annotations

import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pipelines.features import feature_names
from pipelines.integrity import MODEL_SIGNATURE_TAG, check_model, read_key
from pipelines.mlflow import models, store
from pipelines.mlflow.markers import Markers, follow, read_markers
from pipelines.mlflow.registry import alias_version, served_uri, served_version
from pipelines.mlflow.store import MlflowClient, ModelVersion
from pipelines.model import FraudScorer, check_model_files
from pipelines.settings import Settings
from serving.model_cache import PROBED, ModelCache
from serving.model_probe import ModelProbe
from serving.online_scorer import OnlineScorer

log = logging.getLogger(__name__)
# the user:password of a URL (a tracking URI with credentials, echoed in an exception)
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
# the user:password@host:port of a URL
_AUTHORITY = re.compile(r"://[^/\s'\"]+")


def redact(text: str) -> str:
    """`text` with the credentials of any URL in it replaced: it goes to the server log."""
    return _USERINFO.sub("***@", text)


def public(text: str) -> str:
    """`text` fit for an HTTP answer: no credentials and no host of any URL in it (the server
    log has them)."""
    return _AUTHORITY.sub("://***", text)


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    stage: str
    aliases: tuple[str, ...]
    run_id: str
    scorer: FraudScorer
    online: OnlineScorer
    loaded_at: str
    # "registry", or "cache": loaded from the model cache while the registry could not serve it
    source: str = "registry"

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "stage": self.stage,
            "aliases": list(self.aliases),
            "run_id": self.run_id,
            "threshold": self.scorer.threshold,
            "features": list(self.scorer.features),
            "loaded_at": self.loaded_at,
            "model_source": self.source,
        }


@dataclass
class RegistryStatus:
    reachable: bool = False
    last_check: float | None = None
    last_error: str | None = None
    reloads: int = 0
    reload_failures: int = 0
    # the version the registry serves that failed to load at its last attempt, and why (public
    # text); None once a version loads, or when the registry serves none
    failed_version: str | None = None
    load_error: str | None = None
    # the failed version is not tried again before this (time.monotonic()); the wait doubles
    # after each failure, from serving.poll_interval_s up to model.retry_max_s
    retry_at: float | None = None
    retry_delay_s: float | None = None
    # the signature tag the failed version had: a version signed since is tried at once
    failed_signature: str | None = None
    # with mlflow.model_source "markers": both markers at the last poll, and which one named
    # the version followed ("alias", "stage", "both" or "start")
    markers: Markers | None = None
    followed: str | None = None
    gesture: str | None = None
    listeners: list[Callable[[str, ServedModel | None], None]] = field(default_factory=list)


class ModelHolder:
    """Resolves the served version (both markers, or the one `mlflow.model_source` names),
    loads it in the background, swaps it in."""

    # a champion is kept in the replica's model cache and served from it while the registry
    # cannot be read; a challenger is not (it never answers alone)
    caches = True

    def __init__(self, settings: Settings, client: MlflowClient | None = None) -> None:
        self.settings = settings
        self.client = client or store.client(settings)
        self.status = RegistryStatus()
        # configured but unreadable: the service does not start (it would serve unchecked)
        self.model_key = read_key(settings.integrity.model_key, "integrity.model_key")
        folder = settings.serving.model_cache_dir
        cache = ModelCache(settings.under_workdir(folder)) if folder else None
        self.cache = cache if self.caches else None
        self.limits = settings.model.booster_limits()
        self.probe = ModelProbe(
            self.limits,
            settings.model.probe_timeout_s,
            cache.folder / PROBED if cache is not None else None,
        )
        self._cache_tried = False
        self._model: ServedModel | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def model(self) -> ServedModel | None:
        return self._model

    @property
    def target_uri(self) -> str:
        return served_uri(self.settings)

    def refresh(self) -> bool:
        """Check the registry once; load and swap in a new version. True if it swapped.

        Without a model yet, a registry that cannot be read or a version that cannot be loaded
        falls back to the model cache (once per process)."""
        with self._lock:
            try:
                target = self._resolve()
                self.status.reachable = True
                self.status.last_error = None
                self._notify("registry_ok", self._model)
            except Exception as exc:  # network, HTTP 5xx, database: keep serving what we have
                self.status.reachable = False
                self.status.last_error = redact(f"{type(exc).__name__}: {exc}")[:500]
                log.warning("registry unreachable: %s", self.status.last_error)
                self._notify("registry_error", self._model)
                return self._serve_cached()
            finally:
                self.status.last_check = time.time()
            if target is None:
                self._loaded()
                self._nothing_named()
                return False
            current = self._model
            if current and current.version == str(target.version) and current.source != "cache":
                self._loaded()  # back to the version in service: no failure stands
                return False
            signature = (target.tags or {}).get(MODEL_SIGNATURE_TAG)
            if self._backing_off(str(target.version), signature):
                return self._serve_cached()
            try:
                with tempfile.TemporaryDirectory() as folder:
                    booster, meta = models.download_model_files(
                        self.settings, f"models:/{target.name}/{target.version}", Path(folder)
                    )
                    self._check_signature(
                        target.name, str(target.version), booster, meta, signature
                    )
                    scorer = self._trusted(booster, meta, models.expected_hashes(target))
                    self._swap(target, scorer)
                    self._keep(booster, meta, signature)
            except Exception as exc:
                self._failed(str(target.version), signature, exc)
                return self._serve_cached()
            return True

    def _resolve(self) -> ModelVersion | None:
        """The version to serve now. With `mlflow.model_source: markers`, both markers are read
        and the one that moved since the last poll wins (`pipelines.mlflow.markers.follow`; the
        alias at the first poll); otherwise the one marker configured."""
        if self.settings.mlflow.model_source != "markers":
            return served_version(self.client, self.settings)
        mlflow = self.settings.mlflow
        now = read_markers(self.client, mlflow.model_name, mlflow.champion_alias)
        status = self.status
        choice = follow(status.markers, now, status.followed)
        if choice.gesture != "kept" or status.gesture is None:
            status.gesture = choice.gesture
        status.markers, status.followed = now, choice.version
        self._notify("markers_agree" if now.agree else "markers_disagree", self._model)
        if choice.version is None:
            return None
        return self.client.get_model_version(mlflow.model_name, choice.version)

    def _nothing_named(self) -> None:
        """The registry names no version: the champion keeps what it serves (a marker taken
        away by mistake must not stop the service)."""

    def describe_markers(self) -> dict[str, object] | None:
        """Both markers at the last poll and which one the API follows (`/model`); None unless
        `mlflow.model_source` is markers and the registry answered once."""
        status = self.status
        if status.markers is None:
            return None
        return {**status.markers.describe(), "followed": status.followed, "by": status.gesture}

    def _trusted(self, booster: Path, meta: Path, expected: dict[str, str]) -> FraudScorer:
        """The model of these files, parsed in this process only once they passed every check
        here (hashes, sizes, the booster text, the features) and a child process loaded and
        scored them (`ModelProbe`)."""
        checked = check_model_files(booster, meta, self.limits, expected)
        self._check_features(checked.features)
        self.probe.require(booster, meta)
        return FraudScorer.from_checked(checked)

    def _backing_off(self, version: str, signature: str | None) -> bool:
        """True while the version that failed last waits for its next try (a version signed
        since it failed is tried at once: the registry sync signs what it promotes)."""
        status = self.status
        return (
            status.failed_version == version
            and status.failed_signature == signature
            and status.retry_at is not None
            and time.monotonic() < status.retry_at
        )

    def _failed(self, version: str, signature: str | None, exc: Exception) -> None:
        status = self.status
        poll = self.settings.serving.poll_interval_s
        again = status.failed_version == version and status.retry_delay_s is not None
        delay = min(
            2 * status.retry_delay_s if again else 2 * poll, self.settings.model.retry_max_s
        )
        status.reload_failures += 1
        status.last_error = redact(f"loading v{version} failed: {exc}")[:500]
        status.failed_version = version
        status.failed_signature = signature
        status.load_error = public(f"{type(exc).__name__}: {exc}")[:500]
        status.retry_delay_s = delay
        status.retry_at = time.monotonic() + delay
        log.error("%s (next try in %.0f s)", status.last_error, delay)
        self._notify("reload_failure", self._model)

    def _loaded(self) -> None:
        """No load failure stands: the served version loaded, or the registry serves none."""
        self.status.failed_version = None
        self.status.failed_signature = None
        self.status.load_error = None
        self.status.retry_at = None
        self.status.retry_delay_s = None

    @property
    def failing(self) -> bool:
        """True when the registry serves a version, it failed to load at its last attempt and
        no model (not even a cached one) is served: this replica cannot score until someone
        fixes or replaces that version."""
        return self._model is None and self.status.failed_version is not None

    def _check_signature(
        self, name: str, version: str, booster: Path, meta: Path, signature: str | None
    ) -> None:
        """With a model key, refuse files that do not match the version's signature."""
        if self.model_key is not None:
            check_model(self.model_key, name, version, booster, meta, signature)

    def _check_features(self, features: tuple[str, ...]) -> None:
        """Refuse a model not trained on the features this service computes."""
        expected = tuple(feature_names(self.settings.features))
        if features != expected:
            missing = sorted(set(expected) - set(features))
            extra = sorted(set(features) - set(expected))
            raise ValueError(
                "trained on other features than this service computes (align the "
                f"features settings): model lacks {missing}, has extra {extra}"
            )

    def _swap(self, target: ModelVersion, scorer: FraudScorer) -> None:
        self._model = ServedModel(
            name=target.name,
            version=str(target.version),
            stage=target.current_stage,
            aliases=tuple(target.aliases or ()),
            run_id=target.run_id,
            scorer=scorer,
            online=OnlineScorer(scorer),
            loaded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        self.status.reloads += 1
        self._loaded()
        log.info("serving %s v%s", target.name, target.version)
        self._notify("reload", self._model)

    def _keep(self, booster: Path, meta: Path, signature: str | None) -> None:
        """Cache the files of the model just swapped in; a failure only costs the cache."""
        model = self._model
        if self.cache is None or model is None:
            return
        try:
            self.cache.save(
                booster,
                meta,
                name=model.name,
                version=model.version,
                stage=model.stage,
                aliases=model.aliases,
                run_id=model.run_id,
                signature=signature,
            )
        except Exception as exc:
            log.warning("could not cache v%s at %s: %s", model.version, self.cache.folder, exc)

    def _serve_cached(self) -> bool:
        """Serve the cached model if there is no model yet; True if it was swapped in."""
        if self._model is not None or self.cache is None or self._cache_tried:
            return False
        self._cache_tried = True
        folder = self.cache.folder
        try:
            cached = self.cache.load(
                self.settings.mlflow.model_name,
                self.limits,
                self._check_features,
                self.probe,
                check=self._check_signature,
            )
            if cached is None:
                log.warning("no model from the registry and none cached at %s", folder)
                return False
            scorer = cached.scorer
        except Exception as exc:  # damaged, altered, half-written or another model: never served
            log.error("model cache at %s ignored, nothing served from it: %s", folder, exc)
            return False
        self._model = ServedModel(
            name=cached.name,
            version=cached.version,
            stage=cached.stage,
            aliases=cached.aliases,
            run_id=cached.run_id,
            scorer=scorer,
            online=OnlineScorer(scorer),
            loaded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            source="cache",
        )
        log.warning(
            "serving %s v%s from the model cache at %s (cached %s) until the registry serves",
            cached.name,
            cached.version,
            folder,
            cached.cached_at,
        )
        self._notify("cache_load", self._model)
        return True

    def add_listener(self, listener: Callable[[str, ServedModel | None], None]) -> None:
        self.status.listeners.append(listener)

    def _notify(self, event: str, model: ServedModel | None) -> None:
        for listener in self.status.listeners:
            listener(event, model)

    def start(self) -> None:
        """First load now (the service starts even without a model), then poll in background."""
        self.refresh()
        if self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="model-poller", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.serving.poll_interval_s):
            try:
                self.refresh()
            except Exception:  # never let the poller die
                log.exception("model refresh failed")


class ChallengerHolder(ModelHolder):
    """The version under the challenger alias (`mlflow.challenger_alias`), loaded, checked,
    probed and swapped exactly as the champion is, but never cached and never served alone:
    when the alias goes away, the challenger is dropped. A registry outage keeps it."""

    caches = False

    @property
    def target_uri(self) -> str:
        return f"models:/{self.settings.mlflow.model_name}@{self.settings.mlflow.challenger_alias}"

    def _resolve(self) -> ModelVersion | None:
        mlflow = self.settings.mlflow
        return alias_version(self.client, mlflow.model_name, mlflow.challenger_alias)

    def start(self) -> None:
        """Poll in the background from the start: the champion serves meanwhile."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._poll, name="challenger-poller", daemon=True
            )
            self._thread.start()

    def _poll(self) -> None:
        try:
            self.refresh()
        except Exception:  # never let the poller die
            log.exception("challenger refresh failed")
        super()._poll()

    def _nothing_named(self) -> None:
        if self._model is not None:
            log.info("challenger alias removed: v%s no longer scored", self._model.version)
            self._model = None
            self._notify("unloaded", None)
