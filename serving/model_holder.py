"""The model in service: loaded from the registry, polled, swapped atomically.

Each worker holds one `ServedModel` reference; a request reads it once and finishes on that
model even if a newer one is swapped in meanwhile. Registry failures never unload a model.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.features import feature_names
from pipelines.model import FraudScorer
from pipelines.registry import served_uri, served_version
from pipelines.settings import Settings
from serving.online_scorer import OnlineScorer

log = logging.getLogger(__name__)
# the user:password of a URL (a tracking URI with credentials, echoed in an exception)
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str) -> str:
    """`text` with the credentials of any URL in it replaced: it goes to the server log."""
    return _USERINFO.sub("***@", text)


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
        }


@dataclass
class RegistryStatus:
    reachable: bool = False
    last_check: float | None = None
    last_error: str | None = None
    reloads: int = 0
    reload_failures: int = 0
    listeners: list[Callable[[str, ServedModel | None], None]] = field(default_factory=list)


class ModelHolder:
    """Resolves the served version (stage or alias), loads it in the background, swaps it in."""

    def __init__(self, settings: Settings, client: MlflowClient | None = None) -> None:
        self.settings = settings
        self.client = client or tracking.client(settings)
        self.status = RegistryStatus()
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
        """Check the registry once; load and swap in a new version. True if it swapped."""
        with self._lock:
            try:
                target = served_version(self.client, self.settings)
                self.status.reachable = True
                self.status.last_error = None
                self._notify("registry_ok", self._model)
            except Exception as exc:  # network, HTTP 5xx, database: keep serving what we have
                self.status.reachable = False
                self.status.last_error = redact(f"{type(exc).__name__}: {exc}")[:500]
                log.warning("registry unreachable: %s", self.status.last_error)
                self._notify("registry_error", self._model)
                return False
            finally:
                self.status.last_check = time.time()
            if target is None or (self._model and self._model.version == str(target.version)):
                return False
            try:
                scorer = tracking.load_scorer(
                    self.settings, f"models:/{target.name}/{target.version}"
                )
                expected = tuple(feature_names(self.settings.features))
                if scorer.features != expected:
                    missing = sorted(set(expected) - set(scorer.features))
                    extra = sorted(set(scorer.features) - set(expected))
                    raise ValueError(
                        "trained on other features than this service computes (align the "
                        f"features settings): model lacks {missing}, has extra {extra}"
                    )
            except Exception as exc:
                self.status.reload_failures += 1
                self.status.last_error = redact(f"loading v{target.version} failed: {exc}")[:500]
                log.error("%s", self.status.last_error)
                self._notify("reload_failure", self._model)
                return False
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
            log.info("serving %s v%s", target.name, target.version)
            self._notify("reload", self._model)
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
