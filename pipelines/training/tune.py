"""Parameter search: LightGBM's parameters and the class weighting, chosen on validation periods.

A trial trains on the training window of every fold of every dataset and is scored by the
average precision on that fold's validation window (what early stopping follows); the objective
is the mean over datasets x folds, so that the choice is not tuned to one period or one
simulated world. The folds are training's layout, each `tuning.fold_step_days` before the next
(the backtest's step). Every dataset is cut at its newest validation end before its features
are computed: nothing of a test period is featurized, let alone scored. Trial 0 is the
configured parameters, so the best is never worse than today's configuration on the same
objective.

Optuna steps the study one trial at a time (ask and tell), so that a benchmark can interleave
two studies; trials run deterministic (their LightGBM results do not depend on the thread
count), so a search with a trial budget and a fixed seed repeats itself exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from pipelines.evaluate import ranking_metrics
from pipelines.mlflow import tuning as tuning_log
from pipelines.settings import (
    SEARCHABLE_TRAINING,
    SearchBudget,
    SearchRange,
    Settings,
    SettingsError,
    TrainingSettings,
    TuningSettings,
)
from pipelines.split import TrainingWindows, day_after_last, layout_folds
from pipelines.training.train import LabelledPeriod, featurize, fit_booster, select_period

log = logging.getLogger(__name__)

OBJECTIVE = "validation_average_precision"


@dataclass(frozen=True)
class Fold:
    """One validation period of one dataset: its training rows and its validation rows."""

    dataset: int
    fold: int
    windows: TrainingWindows
    train: LabelledPeriod
    validation: LabelledPeriod

    @property
    def name(self) -> str:
        return f"data{self.dataset}_fold{self.fold}"


@dataclass(frozen=True)
class Trial:
    number: int
    params: dict[str, float]
    value: float
    fold_values: dict[str, float]
    best_iterations: dict[str, int]
    seconds: float

    def metrics(self) -> dict[str, float]:
        """What a trial's run logs: the objective, each fold's value and best iteration."""
        return {
            OBJECTIVE: self.value,
            **{f"{OBJECTIVE}_{name}": value for name, value in self.fold_values.items()},
            **{f"best_iteration_{name}": float(it) for name, it in self.best_iterations.items()},
            "duration_s": self.seconds,
        }


@dataclass(frozen=True)
class TuneResult:
    trials: list[Trial]
    best: Trial
    training: TrainingSettings  # the resolved training configuration: the best merged in
    sampler: str
    seed: int
    budget: SearchBudget
    stopped_by: str  # "trials" or "timeout"
    seconds: float
    datasets: list[str]
    run_id: str | None = None
    folds: list[dict[str, str]] = field(default_factory=list)

    @property
    def baseline(self) -> Trial:
        return self.trials[0]

    def overlay(self) -> dict[str, Any]:
        """The resolved configuration as a `--config` overlay."""
        return {"training": self.training.model_dump(mode="json")}

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "best_params": self.best.params,
            "best_value": self.best.value,
            "best_trial": self.best.number,
            "baseline_value": self.baseline.value,
            "improvement": self.best.value - self.baseline.value,
            "objective": f"mean {OBJECTIVE} over datasets x folds",
            "sampler": self.sampler,
            "seed": self.seed,
            "budget": self.budget.model_dump(),
            "stopped_by": self.stopped_by,
            "seconds": round(self.seconds, 3),
            "datasets": self.datasets,
            "folds": self.folds,
            "trials": [asdict(trial) for trial in self.trials],
            "resolved_config": self.overlay(),
        }


def validation_folds(
    transactions: pd.DataFrame,
    settings: Settings,
    dataset: int = 0,
    features: pd.DataFrame | None = None,
) -> list[Fold]:
    """The folds of one dataset, newest first. Rows from the newest validation end on are cut
    before featurizing (point-in-time features of earlier rows do not depend on them); given
    `features` (of all the rows) are cut the same way. Only the labels of the raw rows are
    kept."""
    tuning = settings.tuning
    layouts = layout_folds(
        transactions["tx_datetime"].min(),
        day_after_last(transactions["tx_datetime"]),
        settings.training,
        settings.features.label_delay_days,
        tuning.folds,
        tuning.fold_step_days,
    )
    seen = (transactions["tx_datetime"] < layouts[0].validation.end).to_numpy()
    history = transactions.loc[seen]
    features = featurize(history, settings.features) if features is None else features.loc[seen]
    folds = []
    for number, windows in enumerate(layouts):
        periods = {}
        for name in ("train", "validation"):
            period = select_period(history, features, getattr(windows, name))
            labels = period.labels
            if not (labels == 1).any() or not (labels == 0).any():
                raise ValueError(
                    f"dataset {dataset}, fold {number}: the {name} period "
                    f"{getattr(windows, name).start.date()}..{getattr(windows, name).end.date()} "
                    "needs frauds and genuine transactions"
                )
            periods[name] = LabelledPeriod(period.raw[["tx_fraud"]], period.features)
        folds.append(Fold(dataset, number, windows, periods["train"], periods["validation"]))
    return folds


def configured_point(training: TrainingSettings, space: Mapping[str, SearchRange]) -> dict:
    """The configured value of every dimension of the space: trial 0."""
    point = {}
    for name, dimension in space.items():
        if name in SEARCHABLE_TRAINING:
            value = getattr(training, name)
        else:
            value = training.lightgbm.get(name)
        if value is None or isinstance(value, bool):
            raise SettingsError(
                f"tuning.space.{name}: training.lightgbm sets no number {name}; trial 0 is the "
                "configured parameters, so set it there (or take the range out: null)"
            )
        if dimension.type == "int" and not float(value).is_integer():
            raise SettingsError(f"tuning.space.{name} is an int range, configured: {value}")
        point[name] = int(value) if dimension.type == "int" else float(value)
    return point


def widened(space: Mapping[str, SearchRange], point: Mapping[str, float]) -> dict:
    """The space with every range widened to hold the configured value (trial 0)."""
    ranges = {}
    for name, dimension in space.items():
        value = point[name]
        if not dimension.contains(value):
            if dimension.log and value <= 0:
                raise SettingsError(
                    f"tuning.space.{name} is a log range, the configured value {value} is not > 0"
                )
            log.warning(
                "tuning.space.%s [%s, %s] widened to hold the configured %s",
                name,
                dimension.low,
                dimension.high,
                value,
            )
            dimension = dimension.model_copy(
                update={"low": min(dimension.low, value), "high": max(dimension.high, value)}
            )
        ranges[name] = dimension
    return ranges


def distribution(dimension: SearchRange) -> BaseDistribution:
    if dimension.type == "int":
        return IntDistribution(int(dimension.low), int(dimension.high), log=dimension.log)
    return FloatDistribution(dimension.low, dimension.high, log=dimension.log)


def with_params(training: TrainingSettings, params: Mapping[str, float]) -> TrainingSettings:
    """`training` with a trial's values (LightGBM's into `lightgbm`, the weighting beside it),
    validated as a configuration file is: the allowlist and the ranges hold."""
    lightgbm = {k: v for k, v in params.items() if k not in SEARCHABLE_TRAINING}
    update = {k: v for k, v in params.items() if k in SEARCHABLE_TRAINING}
    return TrainingSettings.model_validate(
        {**training.model_dump(), "lightgbm": {**training.lightgbm, **lightgbm}, **update}
    )


def run_time(training: TrainingSettings, tuning: TuningSettings) -> TrainingSettings:
    """How a trial fits: `tuning.num_threads` threads, deterministic (the same model whatever
    the threads), one histogram layout forced (LightGBM's advice for determinism)."""
    flags: dict[str, Any] = {"num_threads": tuning.num_threads, "deterministic": True}
    if not {"force_row_wise", "force_col_wise"} & set(training.lightgbm):
        flags["force_col_wise"] = True
    return training.model_copy(update={"lightgbm": {**training.lightgbm, **flags}})


def score(folds: Sequence[Fold], training: TrainingSettings, threads: int) -> tuple[dict, dict]:
    """Validation average precision and best iteration of each fold, trained with `training`."""
    values, iterations = {}, {}
    for fold in folds:
        booster = fit_booster(fold.train, fold.validation, training)
        matrix = fold.validation.features.to_numpy(np.float64)
        scores = booster.predict(matrix, num_threads=threads)
        values[fold.name] = ranking_metrics(fold.validation.labels, scores)["average_precision"]
        iterations[fold.name] = int(booster.best_iteration or booster.current_iteration())
    return values, iterations


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SettingsError(f"unknown sampler {name!r}: tpe or random")


class Search:
    """An Optuna study over the folds, stepped one trial at a time; trial 0 is the configured
    point."""

    def __init__(
        self,
        folds: Sequence[Fold],
        training: TrainingSettings,
        tuning: TuningSettings,
        sampler: str | None = None,
        seed: int | None = None,
    ) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead
        self.folds = list(folds)
        self.training = training
        self.tuning = tuning
        self.sampler = sampler or tuning.sampler
        self.seed = tuning.seed if seed is None else seed
        baseline = configured_point(training, tuning.space)
        self.distributions = {
            name: distribution(dimension)
            for name, dimension in widened(tuning.space, baseline).items()
        }
        self.study = optuna.create_study(
            direction="maximize", sampler=make_sampler(self.sampler, self.seed)
        )
        self.study.enqueue_trial(baseline)
        self.trials: list[Trial] = []

    def step(self) -> Trial:
        """Ask for a point, train and score it on every fold, tell the study."""
        started = time.perf_counter()
        asked = self.study.ask(self.distributions)
        params = dict(asked.params)
        try:
            training = run_time(with_params(self.training, params), self.tuning)
            values, iterations = score(self.folds, training, self.tuning.num_threads)
        except BaseException:
            self.study.tell(asked, state=TrialState.FAIL)
            raise
        value = float(np.mean(list(values.values())))
        self.study.tell(asked, value)
        trial = Trial(
            asked.number, params, value, values, iterations, time.perf_counter() - started
        )
        self.trials.append(trial)
        return trial

    @property
    def best(self) -> Trial:
        """The trial with the highest objective (the earliest of equals: trial 0 wins a tie)."""
        return max(self.trials, key=lambda t: (t.value, -t.number))

    def run(self, budget: SearchBudget, on_trial: Callable[[Trial], None] | None = None) -> str:
        """Trials until `budget.trials` are done or, trial 0 done, `budget.timeout_s` seconds
        have passed when the next would start. Returns what stopped it: trials or timeout."""
        started = time.monotonic()
        while len(self.trials) < budget.trials:
            elapsed = time.monotonic() - started
            if self.trials and budget.timeout_s is not None and elapsed >= budget.timeout_s:
                return "timeout"
            trial = self.step()
            log.info(
                "trial %d: %s %.5f (best %.5f, trial 0 %.5f) in %.1f s",
                trial.number,
                OBJECTIVE,
                trial.value,
                self.best.value,
                self.trials[0].value,
                trial.seconds,
            )
            if on_trial is not None:
                on_trial(trial)
        return "trials"


def tune(
    datasets: Sequence[tuple[str, pd.DataFrame]],
    settings: Settings,
    budget: SearchBudget | None = None,
    sampler: str | None = None,
    features: Sequence[pd.DataFrame | None] | None = None,
    log_to_mlflow: bool = True,
    tags: Mapping[str, str] | None = None,
) -> TuneResult:
    """Search `settings.tuning.space` from `settings.training` on the validation folds of every
    dataset (name, labelled transactions; `features` of all their rows, when computed already),
    within `budget` (default: tuning.trials and tuning.timeout_s). Logs a `tune` run (nested
    under an active run, as in a retraining) with one nested run per trial, the best parameters
    and the resolved training configuration."""
    if not datasets:
        raise ValueError("tune needs at least one dataset")
    budget = budget or settings.tuning.budget
    started = time.monotonic()
    folds = [
        fold
        for index, (_, transactions) in enumerate(datasets)
        for fold in validation_folds(
            transactions, settings, index, features[index] if features else None
        )
    ]
    search = Search(folds, settings.training, settings.tuning, sampler)
    names = [name for name, _ in datasets]
    fold_windows = [
        {
            "fold": f.name,
            **f.windows.train.as_dict("train"),
            **f.windows.validation.as_dict("validation"),
        }
        for f in folds
    ]
    if not log_to_mlflow:
        stopped_by = search.run(budget)
        return _result(search, budget, stopped_by, started, names, fold_windows)
    with tuning_log.search_run(settings, _run_params(search, budget, names), tags or {}) as run:
        stopped_by = search.run(
            budget, lambda t: run.trial(t.number, _trial_params(t), t.metrics())
        )
        result = _result(search, budget, stopped_by, started, names, fold_windows, run.run_id)
        run.finish(
            params={f"best_{k}": v for k, v in result.best.params.items()},
            metrics={
                f"best_{OBJECTIVE}": result.best.value,
                f"baseline_{OBJECTIVE}": result.baseline.value,
                "improvement": result.best.value - result.baseline.value,
                "best_trial": float(result.best.number),
                "trials": float(len(result.trials)),
                "elapsed_s": result.seconds,
            },
            tags={"stopped_by": stopped_by},
            training=result.training.model_dump(mode="json"),
            overlay=result.overlay(),
            trials=[asdict(trial) for trial in result.trials],
            folds=fold_windows,
        )
    return result


def _result(
    search: Search,
    budget: SearchBudget,
    stopped_by: str,
    started: float,
    names: list[str],
    folds: list[dict[str, str]],
    run_id: str | None = None,
) -> TuneResult:
    best = search.best
    return TuneResult(
        trials=list(search.trials),
        best=best,
        training=with_params(search.training, best.params),
        sampler=search.sampler,
        seed=search.seed,
        budget=budget,
        stopped_by=stopped_by,
        seconds=time.monotonic() - started,
        datasets=names,
        run_id=run_id,
        folds=folds,
    )


def _run_params(search: Search, budget: SearchBudget, names: list[str]) -> dict[str, Any]:
    tuning = search.tuning
    return {
        "sampler": search.sampler,
        "seed": search.seed,
        "budget_trials": budget.trials,
        "budget_timeout_s": budget.timeout_s,
        "folds": tuning.folds,
        "fold_step_days": tuning.fold_step_days,
        "datasets": len(names),
        **{f"data_{index}": name for index, name in enumerate(names)},
        "objective": f"mean {OBJECTIVE}",
        "space": ", ".join(f"{name}: {d}" for name, d in sorted(search.distributions.items())),
    }


def _trial_params(trial: Trial) -> dict[str, Any]:
    return {**trial.params, "trial": trial.number}
