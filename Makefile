# fraudflow: `make demo` and `make test` build the environment from scratch when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format benchmark clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@$(PYTHON) -c "import sys; assert sys.version_info[:2] == (3, 11), sys.version" || { echo "fraudflow needs Python 3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==26.3"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/fraudflow demo

test: install
	$(PY) -m pytest --cov --cov-report=term --cov-report=xml

lint: install
	$(PY) -m black --check .
	$(PY) -m isort --check-only .
	$(PY) -m flake8

format: install
	$(PY) -m isort .
	$(PY) -m black .

benchmark: install
	mkdir -p benchmarks/out && $(PY) -m benchmarks.run --markdown benchmarks/out/run.md

clean:
	rm -rf $(VENV) .fraudflow .pytest_cache .coverage coverage.xml
