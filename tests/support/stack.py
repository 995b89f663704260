"""The compose stack's servers without containers, on loopback: PostgreSQL (Debian's package),
`mlflow server` as docker-compose.yml runs it, Prometheus and Alertmanager.

Every server runs in its own process group on a free port and is stopped with it.
"""

from __future__ import annotations

import configparser
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.support import REPO
from tests.support.processes import BIN, background, clean_env, free_port, system_tool, wait_for

PROMETHEUS_CONF = REPO / "conf" / "prometheus" / "prometheus.yml"
RULES = REPO / "conf" / "prometheus" / "rules" / "fraudflow.yml"
AUTH_CONF = REPO / "conf" / "mlflow" / "basic_auth.ini"
DASHBOARD = REPO / "conf" / "grafana" / "dashboards" / "fraudflow.json"


def alert_rules() -> list[dict]:
    """Every alerting rule of conf/prometheus/rules."""
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard_expressions() -> list[str]:
    """Every PromQL expression of the Grafana dashboard (panels and annotations)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return exprs + [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]


def _as_postgres_user() -> tuple[list[str], str | None]:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` account."""
    if os.geteuid() != 0:
        return [], None
    for account in ("postgres", "nobody"):
        try:
            pwd.getpwnam(account)
        except KeyError:
            continue
        return [shutil.which("runuser") or "runuser", "-u", account, "--"], account
    pytest.fail("running as root and no `postgres` account to run PostgreSQL as")


@contextmanager
def postgres_server(database: str = "mlflow", user: str = "mlflow") -> Iterator[str]:
    """A throw-away PostgreSQL cluster (initdb, trust auth on loopback); yields its URI."""
    import psycopg2

    initdb, pg_ctl = system_tool("initdb"), system_tool("pg_ctl")
    prefix, account = _as_postgres_user()
    # not under pytest's tmp_path: its parents are private to root, the server's user must enter
    root = Path(tempfile.mkdtemp(prefix="fraudflow-pg-"))
    if account:
        shutil.chown(root, account)
    data, port = root / "data", free_port()
    done = subprocess.run(
        prefix + [initdb, "-D", str(data), "-U", user, "-A", "trust", "-E", "UTF8", "--no-sync"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    ctl = prefix + [pg_ctl, "-D", str(data), "-l", str(root / "postgres.log"), "-w"]
    done = subprocess.run(ctl + ["-o", options, "start"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr + (root / "postgres.log").read_text()
    try:
        connection = psycopg2.connect(host="127.0.0.1", port=port, user=user, dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{database}"')
        connection.close()
        yield f"postgresql+psycopg2://{user}@127.0.0.1:{port}/{database}"
    finally:
        subprocess.run(ctl + ["-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def compose_service(name: str) -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"][name]


def mlflow_server_command(port: int, artifacts: Path) -> list[str]:
    """The compose file's `mlflow server` command line, bound to loopback and a temp folder."""
    service = compose_service("mlflow")
    command = list(service["entrypoint"]) + [str(part) for part in service["command"]]
    local = {"--host": "127.0.0.1", "--port": str(port), "--artifacts-destination": str(artifacts)}
    for flag, value in local.items():
        assert flag in command, f"docker-compose.yml's mlflow command lost {flag}"
        command[command.index(flag) + 1] = value
    command[0] = str(BIN / command[0])
    return command


def registry_auth_config(path: Path, database: Path) -> Path:
    """conf/mlflow/basic_auth.ini as the compose file's server reads it, its user store moved
    to `database` (the container's /data is not here); every other setting kept."""
    config = configparser.ConfigParser()
    config.read(AUTH_CONF)
    assert config["mlflow"]["database_uri"].startswith("sqlite:////data/")
    config["mlflow"]["database_uri"] = f"sqlite:///{database}"
    with open(path, "w") as out:
        config.write(out)
    return path


def new_password() -> str:
    """A throw-away password (MLflow wants 12 characters at least)."""
    return secrets.token_urlsafe(18)


@contextmanager
def compose_mlflow_server(root: Path, backend_uri: str, admin: tuple[str, str]) -> Iterator[str]:
    """`mlflow server` as the compose file runs it (the basic-auth app included), on the given
    backend store, its admin account created from `admin` (username, password) as the compose
    file's environment does; yields its URL."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    service = compose_service("mlflow")
    wanted = {
        "MLFLOW_BACKEND_STORE_URI",
        "MLFLOW_AUTH_CONFIG_PATH",
        "MLFLOW_AUTH_ADMIN_USERNAME",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
    }
    assert wanted <= set(service["environment"]), "docker-compose.yml's mlflow env changed"
    auth = registry_auth_config(root / "basic_auth.ini", root / "mlflow-auth.db")
    env = clean_env(
        {
            "MLFLOW_BACKEND_STORE_URI": backend_uri,
            "MLFLOW_AUTH_CONFIG_PATH": str(auth),
            "MLFLOW_AUTH_ADMIN_USERNAME": admin[0],
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
        }
    )
    command = mlflow_server_command(port, root / "artifacts")
    # run in its folder: with no database reachable it would otherwise fall back to ./mlflow.db
    with background(command, root / "mlflow-server.log", env, grace=5.0, cwd=root) as process:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/health", process=process, timeout=120)
        yield url


def prometheus_config(
    targets: dict[str, str], credentials_file: Path, interval: str = "1s"
) -> dict:
    """The project's prometheus.yml with its targets on loopback, short intervals, and the
    metrics token read from `credentials_file` instead of the container's secret.

    Every scrape job must be given a target here: a job added to the project file without
    one fails the stack test instead of being silently left out.
    """
    config = yaml.safe_load(PROMETHEUS_CONF.read_text())
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    config["rule_files"] = [
        str(PROMETHEUS_CONF.parent / pattern) for pattern in config["rule_files"]
    ]
    for alertmanagers in config["alerting"]["alertmanagers"]:
        alertmanagers["static_configs"] = [{"targets": [targets["alertmanager"]]}]
    for job in config["scrape_configs"]:
        for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
            del job[key]
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        if "credentials_file" in job.get("authorization", {}):
            job["authorization"]["credentials_file"] = str(credentials_file)
    return config


@contextmanager
def prometheus_and_alertmanager(
    root: Path, api_target: str, metrics_token: str
) -> Iterator[tuple[str, str]]:
    """A real Alertmanager (the project's config) and Prometheus (the project's config, rules
    and alerting, targets rewritten, scraping the API with `metrics_token`); yields both base
    URLs."""
    root.mkdir(parents=True, exist_ok=True)
    token_file = root / "metrics-token"
    token_file.write_text(metrics_token + "\n")
    am_port, prom_port = free_port(), free_port()
    alertmanager = [
        system_tool("prometheus-alertmanager", "alertmanager"),
        f"--config.file={REPO / 'conf' / 'alertmanager' / 'alertmanager.yml'}",
        f"--storage.path={root / 'alertmanager'}",
        f"--web.listen-address=127.0.0.1:{am_port}",
        "--cluster.listen-address=",
    ]
    config = prometheus_config(
        {
            "fraudflow-api": api_target,
            "prometheus": f"127.0.0.1:{prom_port}",
            "alertmanager": f"127.0.0.1:{am_port}",
        },
        token_file,
    )
    config_path = root / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    prometheus = [
        system_tool("prometheus"),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={root / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ]
    with background(alertmanager, root / "alertmanager.log") as am_process:
        am_url = f"http://127.0.0.1:{am_port}"
        wait_for(f"{am_url}/-/ready", process=am_process, timeout=120)
        with background(prometheus, root / "prometheus.log") as prom_process:
            prom_url = f"http://127.0.0.1:{prom_port}"
            wait_for(f"{prom_url}/-/ready", process=prom_process, timeout=120)
            yield prom_url, am_url
