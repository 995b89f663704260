"""The ablation as MLflow runs: a parent `ablation` run, one nested run per variant, and under
each one nested run per simulator seed (its fold metrics as steps)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import mlflow

from pipelines.mlflow.store import experiment, finite, use_store
from pipelines.settings import Settings

# a parameter value MLflow keeps whole (its limit is 6,000 characters)
_PARAM_CHARS = 6000


def log_ablation(
    settings: Settings,
    params: Mapping[str, Any],
    summary: Mapping[str, Any],
    folds: Mapping[str, Mapping[int, Sequence[Mapping[str, float]]]],
    table: str,
) -> str:
    """Log `summary` (`ablation.report`) with each variant's folds; returns the parent run id."""
    use_store(settings)
    experiment_id = experiment(settings, settings.mlflow.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name="ablation") as parent:
        mlflow.set_tag("fraudflow.step", "ablation")
        mlflow.log_params(dict(params))
        for variant in summary["variants"]:
            with mlflow.start_run(
                experiment_id=experiment_id, run_name=variant["name"], nested=True
            ):
                mlflow.set_tags(
                    {"fraudflow.step": "ablation-variant", "fraudflow.verdict": variant["verdict"]}
                )
                mlflow.log_params(
                    {
                        "description": variant["description"][:_PARAM_CHARS],
                        "features": ",".join(variant["columns"])[:_PARAM_CHARS],
                        "n_features": len(variant["columns"]),
                    }
                )
                mlflow.log_metrics(
                    finite(
                        {
                            f"{metric}_{stat}": value
                            for metric, stats in variant["summary"].items()
                            for stat, value in stats.items()
                        }
                    )
                )
                for seed, fold_metrics in folds[variant["name"]].items():
                    with mlflow.start_run(
                        experiment_id=experiment_id, run_name=f"seed-{seed}", nested=True
                    ):
                        mlflow.set_tag("fraudflow.step", "ablation-seed")
                        mlflow.log_param("simulation_seed", seed)
                        mlflow.log_metrics(finite(variant["per_seed"][str(seed)]))
                        for step, metrics in enumerate(fold_metrics):
                            mlflow.log_metrics(
                                finite({f"fold_{k}": v for k, v in metrics.items()}), step=step
                            )
        mlflow.log_text(table, "ablation.md")
        mlflow.log_dict(dict(summary), "ablation.json")
    return parent.info.run_id
