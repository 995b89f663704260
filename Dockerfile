# One image for every fraudflow process: the scoring API (default: gunicorn), the MLflow tracking
# server (`mlflow server`, PostgreSQL driver included) and the jobs (`fraudflow train|promote|
# monitor|retrain`). Settings come from the environment: FRAUDFLOW__SECTION__KEY=value,
# MLFLOW_TRACKING_URI, FRAUDFLOW_CONFIG (an overlay file) and gunicorn's own GUNICORN_CMD_ARGS.
# The base image is pinned to a full Python and Debian release in the `python-base` stage, a
# plain FROM line that Dependabot updates (it does not follow ARGs); `--build-arg
# PYTHON_IMAGE=<image>` builds on another one instead, e.g. a mirror's copy or a digest.
ARG PYTHON_IMAGE=python-base

FROM python:3.11.16-slim-bookworm AS python-base

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /app
# python3: the official python images and Debian's own python3 package both have it
RUN python3 -m venv /opt/venv
# Third-party dependencies first, from the package's own pins (setup.cfg) constrained by
# constraints.txt: this layer is rebuilt only when those change, not on every code change.
COPY setup.cfg constraints.txt ./
RUN python -c "import configparser; c = configparser.ConfigParser(); c.read('setup.cfg'); print(c['options']['install_requires'])" > requirements.txt \
    && pip install --no-cache-dir "pip==26.3" \
    && pip install --no-cache-dir -c constraints.txt -r requirements.txt
COPY pyproject.toml README.md MLproject python_env.yaml conda.yaml ./
COPY conf ./conf
COPY fraudflow ./fraudflow
COPY pipelines ./pipelines
COPY serving ./serving
COPY drift ./drift
# editable: the settings read conf/default.yaml beside the packages, in /app
RUN pip install --no-cache-dir --no-deps -e .

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="fraudflow" \
      org.opencontainers.image.description="MLflow-centred card fraud detection: scoring API, tracking server and jobs"
# LightGBM's wheel links the OpenMP runtime (libgomp.so.1) from the system: without it no model
# loads. `fraudflow backup` runs pg_dump/pg_restore (postgresql-client-15) and redis-cli --rdb
# (redis-tools). Pinned to bookworm's upstream releases; the Debian revision floats, because a
# point release or security update removes the old revision from the mirror (an exact pin would
# stop the image from building within weeks).
RUN apt-get update \
    && apt-get install -y --no-install-recommends "libgomp1=12.2.0-*" \
       "postgresql-client-15=15.*" "redis-tools=5:7.0.*" \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 fraudflow \
    && useradd --system --uid 10001 --gid fraudflow --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin fraudflow \
    && mkdir -p /data \
    && chown fraudflow:fraudflow /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    FRAUDFLOW__WORKDIR=/data \
    FRAUDFLOW__SERVING__HOST=0.0.0.0 \
    FRAUDFLOW__SERVING__PORT=8080
WORKDIR /app
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('FRAUDFLOW__SERVING__PORT', '8080'), timeout=2)"]
ENTRYPOINT ["gunicorn", "-c", "/app/serving/gunicorn.conf.py"]
CMD ["serving.app:create_app()"]
