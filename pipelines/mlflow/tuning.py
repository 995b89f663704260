"""Parameter-search runs: a `tune` run with one nested run per trial, and the newest finished
search read back (what a retraining with `retraining.params: last_search` trains with).

A search run is tagged `fraudflow.kind: tune` wherever it stands: on its own in the training
experiment, or nested in a `retrain` run. It holds the resolved training configuration twice:
`config/training.json` (as a training run logs it, read back by `runs.training_configuration`)
and `tuning/config.yaml`, a `--config` overlay a person can pass to `fraudflow train`."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import mlflow

from pipelines.mlflow.runs import TRAINING_CONFIG_ARTIFACT, training_configuration
from pipelines.mlflow.store import experiment, finite, use_store
from pipelines.settings import Settings, TrainingSettings

log = logging.getLogger(__name__)

KIND_TAG = "fraudflow.kind"
SEARCH_KIND = "tune"
OVERLAY_ARTIFACT = "tuning/config.yaml"
TRIALS_ARTIFACT = "tuning/trials.json"
FOLDS_ARTIFACT = "tuning/folds.json"


@dataclass(frozen=True)
class SearchRun:
    """The open `tune` run: trials nest under it as they finish, the result goes on it last."""

    experiment_id: str
    run_id: str

    def trial(self, number: int, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        with mlflow.start_run(
            experiment_id=self.experiment_id,
            run_name=f"trial-{number}",
            nested=True,
            tags={"fraudflow.step": "tune-trial"},
        ):
            mlflow.log_params(dict(params))
            mlflow.log_metrics(finite(dict(metrics)))

    def finish(
        self,
        *,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
        training: dict[str, Any],
        overlay: dict[str, Any],
        trials: list[dict[str, Any]],
        folds: list[dict[str, str]],
    ) -> None:
        """The best parameters, the search's figures, and the resolved configuration."""
        mlflow.log_params(dict(params))
        mlflow.log_metrics(finite(dict(metrics)))
        mlflow.set_tags(dict(tags))
        mlflow.log_dict(training, TRAINING_CONFIG_ARTIFACT)
        mlflow.log_dict(overlay, OVERLAY_ARTIFACT)
        mlflow.log_dict({"trials": trials}, TRIALS_ARTIFACT)
        mlflow.log_dict({"folds": folds}, FOLDS_ARTIFACT)


@contextmanager
def search_run(
    settings: Settings, params: Mapping[str, Any], tags: Mapping[str, str]
) -> Iterator[SearchRun]:
    """A `tune` run in the training experiment, nested under the active run if there is one
    (a retraining's). A search that fails ends the run FAILED: no later retraining takes it."""
    use_store(settings)
    experiment_id = experiment(settings, settings.mlflow.experiment)
    nested = mlflow.active_run() is not None
    run_tags = {"fraudflow.step": "tune", KIND_TAG: SEARCH_KIND, **tags}
    with mlflow.start_run(
        experiment_id=experiment_id, run_name="tune", nested=nested, tags=run_tags
    ) as run:
        mlflow.log_params(dict(params))
        yield SearchRun(experiment_id, run.info.run_id)


def last_search(settings: Settings) -> tuple[str, TrainingSettings] | None:
    """The newest finished search run (by its end) holding a resolved configuration, and
    `settings.training` with the model configuration it resolved; None when there is none."""
    mlflow_client = use_store(settings)
    found = mlflow.get_experiment_by_name(settings.mlflow.experiment)
    if found is None:
        return None
    for run in mlflow_client.search_runs(
        [found.experiment_id],
        f"tags.`{KIND_TAG}` = '{SEARCH_KIND}' and attributes.status = 'FINISHED'",
        order_by=["attributes.end_time DESC"],
        max_results=20,
    ):
        training = training_configuration(settings, run.info.run_id)
        if training is not None:
            return run.info.run_id, training
        log.warning("search run %s holds no resolved configuration: skipped", run.info.run_id)
    return None
