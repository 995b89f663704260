"""Copy the MLflow model folder of the version `fraudflow train --output` registered (MLmodel,
the booster, its environment files) out of the registry, for CI to keep as a workflow
artifact: a copy of every model CI trained, outside the MLflow store."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import mlflow

from pipelines.mlflow.store import use_store
from pipelines.settings import load_settings


def export(config: str, summary: Path, output: Path) -> Path:
    """Download models:/<name>/<version> of the summary into `output` (replaced)."""
    trained = json.loads(summary.read_text())
    settings = load_settings(config)
    use_store(settings)
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    uri = f"models:/{trained['model_name']}/{trained['model_version']}"
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(output)))
    if not (folder / "MLmodel").is_file():
        raise FileNotFoundError(f"{uri} downloaded to {folder} holds no MLmodel file")
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="the overlay training used")
    parser.add_argument("--summary", required=True, help="fraudflow train --output's JSON")
    parser.add_argument("--output", required=True, help="the folder to write the model to")
    args = parser.parse_args(argv)
    folder = export(args.config, Path(args.summary), Path(args.output))
    print(f"exported {json.loads(Path(args.summary).read_text())['model_version']} to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
