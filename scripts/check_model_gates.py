"""Fail CI when a freshly trained model misses the quality gates of its configuration.

Reads the JSON summary of `fraudflow train --output` and the `promotion.gates` of the same
--config, so CI and `fraudflow promote --auto` judge a model by the same minimums.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pipelines.mlflow.promotion import gate_failures
from pipelines.settings import load_settings


def check(summary: dict, gates: dict[str, float]) -> list[str]:
    """Reasons the summary's test metrics miss the gates (empty: passes)."""
    metrics = summary["test_metrics"]
    unknown = sorted(set(gates) - set(metrics))
    if unknown:
        return [f"gate on {name}, which training does not report" for name in unknown]
    return gate_failures(metrics, gates)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="the overlay training used")
    parser.add_argument("--summary", required=True, help="fraudflow train --output JSON")
    args = parser.parse_args(argv)
    gates = load_settings(args.config).promotion.gates
    summary = json.loads(Path(args.summary).read_text())
    for name, minimum in sorted(gates.items()):
        print(f"{name:>20}: {summary['test_metrics'].get(name, float('nan')):.4f} (gate {minimum})")
    failures = check(summary, gates)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
