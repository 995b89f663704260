"""Write the version the API serves to a small JSON file that a pull request can record.

The daily monitoring workflow runs it after `fraudflow monitor --retrain`: when the file changes,
a new version was promoted, and the pull request leaves a reviewed trace in git of what serves.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.mlflow import runs, store
from pipelines.mlflow.registry import served_version
from pipelines.settings import Settings, load_settings

RECORDED_TAGS = ("threshold", "promotion.at", "promotion.by", "promotion.reason")


def champion_record(settings: Settings) -> dict[str, Any]:
    """The served version's identity, promotion tags and test metrics (stage or alias, as
    `mlflow.model_source` says)."""
    client = store.client(settings)
    name = settings.mlflow.model_name
    version = served_version(client, settings)
    if version is None:
        raise SystemExit(f"no version of {name!r} is in service: nothing to record")
    tags = dict(version.tags or {})
    return {
        "name": name,
        "version": str(version.version),
        "alias": settings.mlflow.champion_alias,
        "stage": version.current_stage,
        "run_id": version.run_id,
        "source": version.source,
        "tags": {
            key: tags[key]
            for key in sorted(tags)
            if key in RECORDED_TAGS or key.startswith(runs.TEST_METRIC_TAG)
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="YAML overlay on conf/default.yaml")
    parser.add_argument("--output", default="deploy/model-version.json")
    args = parser.parse_args(argv)
    record = champion_record(load_settings(args.config))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"champion: {record['name']} v{record['version']} -> {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
