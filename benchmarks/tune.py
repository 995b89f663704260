"""Which sampler finds better parameters per minute: Optuna's TPE or random search.

    .venv/bin/python -m benchmarks.tune [--seeds 0 1 2] [--budget-s 120] [--marks 15 30 60 90 120]
                                        [--data-seed 0] [--markdown FILE] [--json FILE]

Setup (not timed): the default simulated world (`simulate_transactions`, --data-seed) in a
temporary workdir, featurized once and cut into the search's validation folds
(`pipelines.training.tune.validation_folds`). Then one study per sampler and seed, over the same
folds and the same space (`tuning.space` of conf/default.yaml, trial 0 the configured point),
each given `--budget-s` seconds of its own trials' wall time. All studies run interleaved in one
process: the study with the least time spent so far takes the next trial, so that other jobs on
the machine slow every study alike. Reported: the best objective (mean validation average
precision over the folds) each study had reached at each elapsed-time mark, the median over
seeds per sampler; the same after N trials; the trials done within the budget.

The training windows are shortened (`training.train_days`, default 14) so that a trial takes
seconds and a study many trials; every other setting is the default.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

from pipelines.settings import Settings, load_settings
from pipelines.training.simulate import simulate_transactions
from pipelines.training.tune import Search, Trial, validation_folds

SAMPLERS = ("tpe", "random")


def settings_for(workdir: Path, train_days: int, early_stopping: int, data_seed: int) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "workdir": str(workdir),
            "simulation": {"seed": data_seed},
            "training": {"train_days": train_days, "early_stopping_rounds": early_stopping},
        },
    )


def best_by(trials: list[dict], mark: float) -> float:
    """The best value among the trials finished within `mark` seconds of the study's time."""
    values = [trial["value"] for trial in trials if trial["at_s"] <= mark]
    return max(values) if values else math.nan


def run(
    seeds: list[int], budget_s: float, train_days: int, early_stopping: int, data_seed: int
) -> tuple[dict, Settings]:
    with tempfile.TemporaryDirectory() as workdir:
        settings = settings_for(Path(workdir), train_days, early_stopping, data_seed)
        started = time.perf_counter()
        transactions = simulate_transactions(settings.simulation)
        folds = validation_folds(transactions, settings)
        setup_s = time.perf_counter() - started
    studies = {
        (sampler, seed): Search(folds, settings.training, settings.tuning, sampler, seed)
        for seed in seeds
        for sampler in SAMPLERS
    }
    spent = {key: 0.0 for key in studies}
    history: dict[tuple[str, int], list[tuple[float, Trial]]] = {key: [] for key in studies}
    wall = time.perf_counter()
    while True:
        open_studies = [key for key in studies if spent[key] < budget_s]
        if not open_studies:
            break
        key = min(open_studies, key=lambda k: (spent[k], SAMPLERS.index(k[0]), k[1]))
        trial = studies[key].step()
        spent[key] += trial.seconds
        history[key].append((spent[key], trial))
    report = {
        "setup_s": setup_s,
        "wall_s": time.perf_counter() - wall,
        "rows": len(transactions),
        "folds": [
            {
                **f.windows.train.as_dict("train"),
                **f.windows.validation.as_dict("validation"),
                "train_rows": len(f.train.raw),
            }
            for f in folds
        ],
        "studies": {
            f"{sampler}/{seed}": [
                {
                    "at_s": at,
                    "number": t.number,
                    "value": t.value,
                    "seconds": t.seconds,
                    "params": t.params,
                    "best_iterations": t.best_iterations,
                }
                for at, t in history[(sampler, seed)]
            ]
            for sampler, seed in studies
        },
    }
    return report, settings


def median(values: list[float]) -> float:
    """The median, or NaN when a seed has no value (never an order of NaNs)."""
    return math.nan if any(math.isnan(v) for v in values) else statistics.median(values)


def summarize(report: dict, seeds: list[int], marks: list[float], counts: list[int]) -> dict:
    """Median over seeds, per sampler: best at each time mark and after each trial count (when
    every seed got that far); each seed's best within the budget."""
    summary: dict = {}
    for sampler in SAMPLERS:
        runs = [report["studies"][f"{sampler}/{seed}"] for seed in seeds]
        summary[sampler] = {
            "at_s": {
                str(mark): median([best_by(trials, mark) for trials in runs]) for mark in marks
            },
            "after_trials": {
                str(n): median(
                    [
                        max(t["value"] for t in trials[:n]) if len(trials) >= n else math.nan
                        for trials in runs
                    ]
                )
                for n in counts
            },
            "best_per_seed": {
                str(seed): max(t["value"] for t in trials) for seed, trials in zip(seeds, runs)
            },
            "trials_done": statistics.median(len(trials) for trials in runs),
            "seconds_per_trial": statistics.median(
                statistics.median(t["seconds"] for t in trials) for trials in runs
            ),
            "baseline": statistics.median(trials[0]["value"] for trials in runs),
        }
    return summary


def markdown(summary: dict, marks: list[float], counts: list[int], meta: dict) -> str:
    lines = [
        f"Machine: {meta['machine']}; command: `{meta['command']}`",
        "",
        f"Best mean validation average precision reached (median over sampler seeds "
        f"{meta['seeds']}), {meta['folds']} folds of {meta['train_days']}-day training windows "
        f"on the default world ({meta['rows']:,} transactions, data seed {meta['data_seed']}); "
        f"trial 0 (the configured point) {summary['tpe']['baseline']:.4f}:",
        "",
        "| sampler | " + " | ".join(f"{mark:g} s" for mark in marks) + " | trials in budget "
        "| s per trial |",
        "|---|" + "---|" * (len(marks) + 2),
    ]
    for sampler in SAMPLERS:
        row = summary[sampler]
        lines.append(
            f"| {sampler} | "
            + " | ".join(_fmt(row["at_s"][str(mark)]) for mark in marks)
            + f" | {row['trials_done']:g} | {row['seconds_per_trial']:.1f} |"
        )
    lines += [
        "",
        "| sampler | " + " | ".join(f"after {n} trials" for n in counts) + " |",
        "|---|" + "---|" * len(counts),
    ]
    for sampler in SAMPLERS:
        row = summary[sampler]
        lines.append(
            f"| {sampler} | " + " | ".join(_fmt(row["after_trials"][str(n)]) for n in counts) + " |"
        )
    lines += [
        "",
        "Each seed's best within the budget: "
        + "; ".join(
            f"{sampler} "
            + " / ".join(f"{v:.4f}" for v in summary[sampler]["best_per_seed"].values())
            for sampler in SAMPLERS
        )
        + f" (seeds {' / '.join(summary[SAMPLERS[0]]['best_per_seed'])}).",
        "",
        f"Wall time {meta['wall_s']:.0f} s for all studies, setup {meta['setup_s']:.1f} s.",
    ]
    return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget-s", type=float, default=120.0)
    parser.add_argument("--marks", type=float, nargs="+", default=[15, 30, 60, 90, 120])
    parser.add_argument("--counts", type=int, nargs="+", default=[5, 10, 20, 30])
    parser.add_argument("--train-days", type=int, default=7)
    parser.add_argument("--early-stopping", type=int, default=50)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report, _ = run(args.seeds, args.budget_s, args.train_days, args.early_stopping, args.data_seed)
    summary = summarize(report, args.seeds, args.marks, args.counts)
    meta = {
        "machine": f"{platform.machine()}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}",
        "command": "python -m benchmarks.tune "
        + f"--seeds {' '.join(map(str, args.seeds))} --budget-s {args.budget_s:g}",
        "seeds": args.seeds,
        "folds": len(report["folds"]),
        "train_days": args.train_days,
        "rows": report["rows"],
        "data_seed": args.data_seed,
        "wall_s": report["wall_s"],
        "setup_s": report["setup_s"],
    }
    text = markdown(summary, args.marks, args.counts, meta)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "summary": summary, **report}, indent=1))


if __name__ == "__main__":
    main()
