"""What the tests (and the benchmarks) run on, by job; the fixtures stay in tests/conftest.py.

- processes: free ports, readiness polls, a clean environment, background servers, system tools
- servers: our API under gunicorn, and a plain `mlflow server`
- stack: the compose stack without containers (PostgreSQL, the compose `mlflow server`,
  Prometheus, Alertmanager) and the project files it reads
- redis: a real redis-server
- docker_engine: a Docker engine (one per machine) and the local base image
- settings: settings of the small simulated world, config overlays, private serving folders
- models: the one train-register-promote helper, and copies of a store
- traffic: production traffic in the prediction log for the monitoring tests
- browser: a headless Chromium, waits and clicks like a person, failure screenshots and consoles
- mlflow_ui: the MLflow UI's run and model-version pages, and promoting in them as a person does
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
