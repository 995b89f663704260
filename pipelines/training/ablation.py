"""The ablation: does each feature and training choice earn its place, across simulator seeds?

Every variant is the backtest (`backtest.py`, the handbook's prequential folds) of one model
configuration on the same data: `today` (the reference configuration, `conf/model-reference.yaml`
over the defaults), `new` (the configured one), `new` less each feature it adds over today's,
`new` with each of today's training choices put back, and `new` plus each candidate group
(`pipelines/feature_candidates.py`). Each runs on every simulator seed given, none of them the
default (the data the configuration was developed on); a variant's figure is its mean over
seeds of the mean over folds, with the standard deviation over seeds.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.feature_candidates import GROUPS, build_candidates
from pipelines.features import build_features, feature_names
from pipelines.settings import Settings
from pipelines.training.backtest import backtest_folds
from pipelines.training.simulate import simulate_transactions

# the figures a variant is judged on: (key in a fold's metrics, short name)
JUDGED = (("average_precision", "ap"), ("card_precision_at_{k}", "cp"), ("roc_auc", "auc"))
# the training choices a variant can put back to today's, one at a time
TRAINING_CHOICES = (
    "backtest.train_days",
    "training.validation_days",
    "training.imbalance_power",
    "training.max_rounds",
    "training.early_stopping_rounds",
)


class UnknownVariant(ValueError):
    """A variant asked for by name that the configurations do not make (checked before any
    work)."""


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    settings: Settings
    columns: tuple[str, ...]


@dataclass
class VariantResult:
    variant: Variant
    # seed -> short metric name -> mean over folds
    per_seed: dict[int, dict[str, float]] = field(default_factory=dict)
    # seed -> fold metrics, as the backtest gives them
    folds: dict[int, list[dict[str, float]]] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean and standard deviation (over seeds, ddof 0) of each judged metric."""
        out = {}
        for _, short in JUDGED:
            values = np.array([m[short] for m in self.per_seed.values()], dtype=float)
            out[short] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
        return out


def _get(settings: Settings, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(settings, section), key)


def _with(settings: Settings, dotted: str, value: Any) -> Settings:
    section, key = dotted.split(".")
    part = getattr(settings, section).model_copy(update={key: value})
    return settings.model_copy(update={section: part})


def _with_lightgbm(settings: Settings, lightgbm: Mapping[str, Any]) -> Settings:
    return _with(settings, "training.lightgbm", dict(lightgbm))


def reference_settings(settings: Settings, overlay: Mapping[str, Any]) -> Settings:
    """`settings` with the reference overlay's sections laid over them, key by key, except that
    `training.lightgbm` is replaced whole (today's parameters, not a merge with the new)."""
    raw = settings.model_dump()
    for section, values in overlay.items():
        if section not in raw or not isinstance(values, Mapping):
            raise ValueError(f"the reference configuration's {section!r} is not a section")
        raw[section] = {**raw[section], **values}
    try:
        return Settings.model_validate(raw)
    except ValueError as exc:
        raise ValueError(f"invalid reference configuration: {exc}") from exc


def variants(
    settings: Settings, reference: Settings, groups: Mapping[str, Sequence[str]] = GROUPS
) -> list[Variant]:
    """today, new, and new with one thing changed each (see the module docstring)."""
    today_columns = tuple(feature_names(reference.features))
    new_columns = tuple(feature_names(settings.features))
    out = [
        Variant("today", "the reference configuration", reference, today_columns),
        Variant("new", "the configured model", settings, new_columns),
    ]
    for name in new_columns:
        if name not in today_columns:
            kept = tuple(c for c in new_columns if c != name)
            out.append(Variant(f"new - {name}", f"without {name}", settings, kept))
    for choice in TRAINING_CHOICES:
        before, now = _get(reference, choice), _get(settings, choice)
        if before != now:
            out.append(
                Variant(
                    f"new, {choice} {before}",
                    f"{choice} back to today's {before} (new: {now})",
                    _with(settings, choice, before),
                    new_columns,
                )
            )
    if reference.training.lightgbm != settings.training.lightgbm:
        out.append(
            Variant(
                "new, today's LightGBM parameters",
                "training.lightgbm back to today's",
                _with_lightgbm(settings, reference.training.lightgbm),
                new_columns,
            )
        )
    for group, names in groups.items():
        added = tuple(n for n in names if n not in new_columns)
        if added:
            out.append(
                Variant(f"new + {group}", f"with {', '.join(added)}", settings, new_columns + added)
            )
    return _distinct(out)


def _distinct(found: list[Variant]) -> list[Variant]:
    """Each model once: a variant equal to an earlier one (today's window put back when the
    window is all that changed is today) is left out."""
    out: list[Variant] = []
    for variant in found:
        if not any(v.settings == variant.settings and v.columns == variant.columns for v in out):
            out.append(variant)
    return out


def seed_features(
    transactions: pd.DataFrame, settings: Settings, reference: Settings
) -> pd.DataFrame:
    """Every column any variant uses: the model's features under both configurations and
    every candidate (a name in two of them has one definition, so one value)."""
    frames = [build_features(transactions, settings.features)]
    if reference.features != settings.features:
        frames.append(build_features(transactions, reference.features))
    frames.append(build_candidates(transactions, settings.features))
    combined = pd.concat(frames, axis=1)
    return combined.loc[:, ~combined.columns.duplicated()]


def simulated(settings: Settings, seed: int) -> pd.DataFrame:
    """The simulator's default world under another seed."""
    return simulate_transactions(settings.simulation.model_copy(update={"seed": seed}))


def _one_thread(settings: Settings) -> Settings:
    return _with_lightgbm(settings, {**settings.training.lightgbm, "num_threads": 1})


def seed_run(
    settings: Settings, reference: Settings, seed: int, chosen: Sequence[Variant]
) -> dict[str, list[dict[str, float]]]:
    """Every chosen variant's fold metrics on one seed's simulated data, by variant name."""
    transactions = simulated(settings, seed)
    features = seed_features(transactions, settings, reference)
    out = {}
    for variant in chosen:
        folds, _ = backtest_folds(
            transactions, variant.settings, features.loc[:, list(variant.columns)]
        )
        out[variant.name] = [dict(fold.metrics) for fold in folds]
    return out


def run_ablation(
    settings: Settings,
    reference: Settings,
    seeds: Sequence[int],
    chosen: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    jobs: int = 1,
) -> list[VariantResult]:
    """Backtest every variant (or those named in `chosen`) on every seed's simulated data.

    Every model trains on one LightGBM thread, so that the figures do not depend on how many
    seeds run at once (`jobs` processes, one seed each): LightGBM's sums, and with them its
    splits, can differ with the thread count.
    """
    one, other = _one_thread(settings), _one_thread(reference)
    all_variants = variants(one, other)
    if chosen:
        unknown = sorted(set(chosen) - {v.name for v in all_variants})
        if unknown:
            raise UnknownVariant(
                f"unknown variant {unknown[0]!r}; known: {', '.join(v.name for v in all_variants)}"
            )
        all_variants = [v for v in all_variants if v.name in chosen]
    results = [VariantResult(v) for v in all_variants]
    k = settings.training.card_precision_k
    if jobs > 1 and len(seeds) > 1:
        if progress:
            progress(f"seeds {list(seeds)}: {len(all_variants)} variants, {jobs} at once")
        n = len(seeds)
        # spawned, not forked: a fork copies the locks other threads hold (MLflow's, the
        # logging module's) into a child that then waits on them for ever
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, n), mp_context=spawn) as pool:
            found = pool.map(seed_run, [one] * n, [other] * n, seeds, [all_variants] * n)
            runs = dict(zip(seeds, found))
    else:
        runs = {}
        for seed in seeds:
            if progress:
                progress(f"seed {seed}: {len(all_variants)} variants")
            runs[seed] = seed_run(one, other, seed, all_variants)
    for seed, by_variant in runs.items():
        for result in results:
            metrics = by_variant[result.variant.name]
            result.folds[seed] = metrics
            result.per_seed[seed] = {
                short: float(np.mean([m[key.format(k=k)] for m in metrics]))
                for key, short in JUDGED
            }
    return results


def verdicts(results: Sequence[VariantResult]) -> dict[str, str]:
    """Per variant against `new`: a feature or choice earns its place when taking it away
    (or, for a candidate, leaving it out) lowers the mean AP over seeds by more than the
    standard deviation of the per-seed differences, and CP@100 and ROC-AUC do not gain from
    its absence beyond theirs."""
    by_name = {r.variant.name: r for r in results}
    new = by_name.get("new")
    out: dict[str, str] = {}
    if new is None:
        return out
    for result in results:
        name = result.variant.name
        if name in ("new", "today"):
            continue
        seeds = [s for s in result.per_seed if s in new.per_seed]
        diff = {
            short: np.array([new.per_seed[s][short] - result.per_seed[s][short] for s in seeds])
            for _, short in JUDGED
        }
        if name.startswith("new + "):
            diff = {short: -values for short, values in diff.items()}
        gain = {short: float(values.mean()) for short, values in diff.items()}
        spread = {short: float(values.std()) for short, values in diff.items()}
        earns = (
            gain["ap"] > spread["ap"]
            and gain["cp"] >= -spread["cp"]
            and gain["auc"] >= -spread["auc"]
        )
        subject = {"new + ": "candidate", "new - ": "feature"}.get(name[:6], "choice")
        figures = f"AP {gain['ap']:+.4f} ± {spread['ap']:.4f}"
        out[name] = f"{subject} {'earns' if earns else 'does not earn'} its place ({figures})"
    return out


def report(results: Sequence[VariantResult], seeds: Sequence[int]) -> dict[str, Any]:
    """The whole result as data: per variant, per seed and the summary over seeds."""
    judged = verdicts(results)
    return {
        "seeds": list(seeds),
        "variants": [
            {
                "name": r.variant.name,
                "description": r.variant.description,
                "columns": list(r.variant.columns),
                "per_seed": {str(s): m for s, m in r.per_seed.items()},
                "summary": r.summary(),
                "verdict": judged.get(r.variant.name, ""),
            }
            for r in results
        ],
    }


def markdown(summary: Mapping[str, Any]) -> str:
    """The report as a Markdown table: mean ± std over seeds, then each seed's AP."""
    seeds = summary["seeds"]
    head = ["variant", "AP", "CP@100", "ROC-AUC", *[f"AP seed {s}" for s in seeds], "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant in summary["variants"]:
        stats = variant["summary"]
        cells = [
            variant["name"],
            *[f"{stats[m]['mean']:.4f} ± {stats[m]['std']:.4f}" for m in ("ap", "cp", "auc")],
            *[f"{variant['per_seed'][str(s)]['ap']:.4f}" for s in seeds],
            variant["verdict"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
