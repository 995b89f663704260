"""Backup and restore: the manifest and its checks, and the refusals, on a small real store;
the disaster-recovery drill on the embedded store (real gunicorn serving while the backup runs,
the store destroyed, restored into a new folder, served again)."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest
import redis
import requests

from pipelines.backup.manifest import MANIFEST, SIGNATURE
from pipelines.backup.postgres import libpq_uri
from pipelines.backup.run import numbered
from pipelines.files import sha256_file
from pipelines.log.reader import read_predictions
from pipelines.log.record import log_folder, record
from pipelines.log.writer import PredictionLogWriter
from pipelines.mlflow import store
from pipelines.mlflow.promotion import promotion_history, set_stage
from pipelines.settings import Settings
from pipelines.state.factory import open_state, received_labels
from tests.support import REPO as ROOT
from tests.support.models import train_and_register
from tests.support.processes import clean_env
from tests.support.servers import gunicorn_api
from tests.support.settings import make_settings, write_config
from tests.support.stack import compose_mlflow_server, new_password, postgres_server

pytestmark = pytest.mark.backup
NAME = "fraud-detector"
# every backup here is signed, and every restore checks it, as in Compose and Kubernetes
BACKUP_KEY = {
    "FRAUDFLOW__INTEGRITY__BACKUP_KEY__ENV": "FRAUDFLOW_TEST_BACKUP_KEY",
    "FRAUDFLOW_TEST_BACKUP_KEY": secrets.token_hex(32),
}


def cli(
    *args: str, env: dict[str, str] | None = None, key: bool = True
) -> subprocess.CompletedProcess:
    """This checkout's `fraudflow` command (python -m from the repository root), holding the
    backup key (`key`: False, none)."""
    return subprocess.run(
        [sys.executable, "-m", "fraudflow.cli", *args],
        cwd=ROOT,
        env=clean_env({**(BACKUP_KEY if key else {}), **(env or {})}),
        capture_output=True,
        text=True,
        timeout=600,
    )


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its SHA-256: equal before and after means untouched."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def a_record(i: int) -> dict:
    return record(
        logged_at="2026-11-30T10:00:00.000+00:00",
        transaction_id=f"r{i}",
        tx_datetime=pd.Timestamp("2018-06-01T10:00:00").to_pydatetime(),
        customer_id="c1",
        terminal_id="t1",
        tx_amount=10.0 + i,
        feature_names=["tx_amount"],
        feature_values=[10.0 + i],
        fraud_probability=0.1,
        decision="approve",
        model_name=NAME,
        model_version="1",
        latency_ms=1.0,
        resent=False,
    )


def small_store(workdir: Path) -> tuple[Settings, Path]:
    """A real store without training: an MLflow run with an artifact and a registered model,
    online state with a label, three prediction-log records (and a torn fourth), a report."""
    settings = make_settings(workdir)
    client = store.client(settings)
    experiment = client.create_experiment("x", artifact_location=settings.artifact_root.as_uri())
    run = client.create_run(experiment)
    client.log_text(run.info.run_id, "the artifact", "notes/a.txt")
    client.create_registered_model(NAME)
    open_state(settings).add_labels([("r1", 1)], 0)
    writer = PredictionLogWriter(log_folder(settings))
    writer.write([a_record(i) for i in range(3)])
    writer.close()
    torn = next(log_folder(settings).glob("*.jsonl"))
    with open(torn, "a") as handle:
        handle.write('{"transaction_id": "r9", "tx_am')  # a writer died mid-record
    reports = settings.under_workdir(settings.monitoring.reports_dir)
    reports.mkdir(parents=True)
    (reports / "latest.json").write_text('{"verdict": "ok"}\n')
    config = write_config(workdir.parent / f"{workdir.name}.yaml", settings)
    return settings, config


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Settings, Path, Path]:
    """The small store and one backup of it (settings, config, the backup folder)."""
    root = tmp_path_factory.mktemp("backup-source")
    settings, config = small_store(root / "work")
    done = cli("backup", "--config", str(config), "--output", str(root / "backups"))
    assert done.returncode == 0, done.stdout + done.stderr
    return settings, config, root / "backups" / "backup-000001"


@pytest.fixture
def target(tmp_path) -> tuple[Settings, Path]:
    """Settings (and config) of an empty deployment to restore into."""
    settings = make_settings(tmp_path / "restored")
    return settings, write_config(tmp_path / "restored.yaml", settings)


def test_the_manifest_checksums_every_file_and_describes_the_source(source) -> None:
    settings, _, backup = source
    manifest = json.loads((backup / MANIFEST).read_text())
    assert manifest["format"] == "fraudflow-backup" and manifest["format_version"] == 1
    files = {entry["path"]: entry for entry in manifest["files"]}
    on_disk = {str(p.relative_to(backup)) for p in backup.rglob("*") if p.is_file()}
    assert set(files) == on_disk - {MANIFEST, SIGNATURE}
    assert manifest["signed"] and manifest["skipped"] == []
    for path, entry in files.items():
        assert entry["size"] == (backup / path).stat().st_size
        assert entry["sha256"] == hashlib.sha256((backup / path).read_bytes()).hexdigest()
    assert set(manifest["parts"]) == {
        "mlflow_store",
        "artifacts",
        "online_state",
        "prediction_log",
        "reports",
    }
    assert manifest["source"]["artifact_root"] == str(settings.artifact_root)
    assert manifest["total_bytes"] == sum(e["size"] for e in files.values())


def test_the_log_is_copied_up_to_its_last_complete_record(source) -> None:
    settings, _, backup = source
    copies = list((backup / "prediction_log").glob("*.jsonl"))
    assert len(copies) == 1
    text = copies[0].read_text()
    assert text.endswith("\n") and "r9" not in text
    assert [json.loads(line)["transaction_id"] for line in text.splitlines()] == ["r0", "r1", "r2"]


def test_restore_into_a_new_folder_gives_a_working_store(source, target) -> None:
    _, _, backup = source
    settings, config = target
    done = cli("restore", "--config", str(config), "--input", str(backup.parent))
    assert done.returncode == 0, done.stdout + done.stderr
    client = store.client(settings)
    assert client.get_registered_model(NAME).name == NAME
    run = client.search_runs([client.get_experiment_by_name("x").experiment_id])[0]
    # the run's artifacts are where the new store keeps them, and readable through MLflow
    assert run.info.artifact_uri.startswith(settings.artifact_root.as_uri())
    assert client.download_artifacts(run.info.run_id, "notes/a.txt", str(settings.workdir))
    assert received_labels(settings).to_dict(orient="records") == [
        {"transaction_id": "r1", "tx_fraud": 1}
    ]
    assert list(read_predictions(log_folder(settings))["transaction_id"]) == ["r0", "r1", "r2"]
    reports = settings.under_workdir(settings.monitoring.reports_dir)
    assert (reports / "latest.json").read_text() == '{"verdict": "ok"}\n'


def damage_truncated(backup: Path) -> str:
    database = backup / "mlflow" / "mlflow.db"
    database.write_bytes(database.read_bytes()[: database.stat().st_size // 2])
    return "mlflow/mlflow.db is"


def damage_flipped(backup: Path) -> str:
    database = backup / "mlflow" / "mlflow.db"
    data = bytearray(database.read_bytes())
    data[len(data) // 2] ^= 0xFF
    database.write_bytes(bytes(data))
    return "mlflow/mlflow.db: checksum mismatch"


def damage_missing_file(backup: Path) -> str:
    (backup / "online_state" / "state.sqlite").unlink()
    return "online_state/state.sqlite is missing (partial backup)"


def damage_no_manifest(backup: Path) -> str:
    (backup / MANIFEST).unlink()
    return "has no manifest.json: the backup is incomplete"


def damage_other_version(backup: Path) -> str:
    manifest = json.loads((backup / MANIFEST).read_text())
    manifest["format_version"] = 2
    (backup / MANIFEST).write_text(json.dumps(manifest))
    return "format version 2; this fraudflow restores format version 1 only"


def damage_extra_file(backup: Path) -> str:
    (backup / "artifacts" / "planted.txt").write_text("not from the source")
    return "artifacts/planted.txt is not in the manifest"


@pytest.mark.parametrize(
    "damage",
    [
        damage_truncated,
        damage_flipped,
        damage_missing_file,
        damage_no_manifest,
        damage_other_version,
        damage_extra_file,
    ],
)
def test_a_damaged_backup_is_refused_and_nothing_changes(source, target, tmp_path, damage):
    _, _, backup = source
    settings, config = target
    copy = tmp_path / "damaged"
    shutil.copytree(backup, copy)
    expected = damage(copy)
    before = fingerprint(tmp_path / "restored")
    done = cli("restore", "--config", str(config), "--input", str(copy))
    assert done.returncode == 1, done.stdout + done.stderr
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    if damage is damage_truncated:
        assert "(truncated)" in done.stderr
    assert fingerprint(tmp_path / "restored") == before == {}


MAKE_OTHER_STORE = """
import sys
from pathlib import Path
from pipelines.mlflow import store
from tests.test_backup import small_store
settings, _ = small_store(Path(sys.argv[1]))
store.client(settings).create_registered_model("only-in-the-target")
"""


def test_a_store_holding_data_is_replaced_only_with_force(source, tmp_path) -> None:
    _, _, backup = source
    # made by another process that has exited: a store this process held open would be live
    made = subprocess.run(
        [sys.executable, "-c", MAKE_OTHER_STORE, str(tmp_path / "other")],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    settings = make_settings(tmp_path / "other")
    config = tmp_path / "other.yaml"
    before = fingerprint(settings.workdir)
    refused = cli("restore", "--config", str(config), "--input", str(backup))
    assert refused.returncode == 1
    assert "not empty: mlflow_store at" in refused.stderr and "--force" in refused.stderr
    assert fingerprint(settings.workdir) == before
    forced = cli("restore", "--config", str(config), "--input", str(backup), "--force")
    assert forced.returncode == 0, forced.stderr
    names = {m.name for m in store.client(settings).search_registered_models()}
    assert names == {NAME}
    assert not [p for p in settings.workdir.rglob("*") if p.name.startswith((".restore", ".repl"))]


def test_backups_are_numbered_and_pruned_to_the_retention(tmp_path) -> None:
    settings, _ = small_store(tmp_path / "work")
    kept = settings.model_copy(update={"backup": settings.backup.model_copy(update={"keep": 2})})
    config = write_config(tmp_path / "keep.yaml", kept)
    for _ in range(3):
        done = cli("backup", "--config", str(config))
        assert done.returncode == 0, done.stderr
    root = kept.under_workdir(kept.backup.root)
    assert [n for n, _ in numbered(root)] == [2, 3]
    assert sorted(p.name for p in root.iterdir()) == ["backup-000002", "backup-000003"]


# ------------------------------------------------------------------------------ the drill


def batch(kind: str, start: int, size: int, day: str) -> list[dict]:
    """Transactions of one family of cards and terminals: `a` (before the backup), `b` (while
    it runs) and the probes (on `a`'s cards and terminals) never share a card or a terminal
    with `b`, so a probe's features are the same whether or not `b` is in the state."""
    cards, terminals = ("a", "ta") if kind in ("a", "p") else ("b", "tb")
    return [
        {
            "transaction_id": f"{kind}{i}",
            "tx_datetime": f"{day}T{6 + i % 14:02d}:{i % 60:02d}:{i % 7:02d}",
            "customer_id": f"{cards}{i % 19}",
            "terminal_id": f"{terminals}{i % 7}",
            "tx_amount": float(4 + (i * 37) % 260),
        }
        for i in range(start, start + size)
    ]


def send(session: requests.Session, url: str, txs: list[dict]) -> dict[str, float]:
    response = session.post(f"{url}/predict", json=txs, timeout=60)
    assert response.status_code == 200, response.text
    return {p["transaction_id"]: p["fraud_probability"] for p in response.json()["predictions"]}


def registry_picture(settings: Settings) -> dict[str, object]:
    """Every version's stage and tags, and the model's aliases."""
    client = store.client(settings)
    versions = {
        str(v.version): (v.current_stage, dict(v.tags))
        for v in client.search_model_versions(f"name = '{NAME}'")
    }
    return {"versions": versions, "aliases": dict(client.get_registered_model(NAME).aliases)}


def config_file(folder: Path, settings: Settings) -> Path:
    return write_config(folder / "serve.yaml", settings)


def export_model(config: str, version: str, output: Path) -> Path:
    """`fraudflow export-model`, as `make model-check` runs it after training."""
    summary = output.parent / "train.json"
    summary.write_text(json.dumps({"model_name": NAME, "model_version": version}))
    done = cli(
        "export-model", "--config", config, "--summary", str(summary), "--output", str(output)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"exported {version} to {output}" in done.stdout
    return output


class Traffic(threading.Thread):
    """Clients sending batches of `b` transactions until stopped; keeps what was answered."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.acknowledged = url, threading.Event(), {}
        self.batches, self.error = threading.Semaphore(0), None

    def run(self) -> None:
        try:
            with requests.Session() as session:
                start = 0
                while not self.stop.is_set():
                    self.acknowledged.update(
                        send(session, self.url, batch("b", start, 10, "2018-06-22"))
                    )
                    start += 10
                    self.batches.release()
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


@pytest.mark.integration
def test_the_drill_on_the_embedded_store(tmp_path, small_transactions) -> None:
    """Serve, back up while serving, destroy, restore elsewhere, serve again: nothing lost."""
    settings = make_settings(
        tmp_path / "work",
        serving={"poll_interval_s": 1.0, "metrics_dir": str(tmp_path / "prom-1")},
        monitoring={"min_rows": 100},
    )
    v1, _ = train_and_register(small_transactions, settings, production="first model")
    shorter = make_settings(settings.workdir, training={"max_rounds": 40})
    v2, _ = train_and_register(small_transactions, shorter)
    set_stage(settings, v2, "Production", "second model")
    exported = export_model(str(config_file(tmp_path, settings)), v2, tmp_path / "exported")
    assert (exported / "MLmodel").is_file()  # what CI keeps as a workflow artifact
    registry_before = registry_picture(settings)
    history_before = promotion_history(settings)
    config = config_file(tmp_path, settings)

    with gunicorn_api(config, tmp_path / "api-1.log", version=v2) as url:
        with requests.Session() as session:
            before_backup = {}
            for start in range(0, 150, 10):
                before_backup.update(send(session, url, batch("a", start, 10, "2018-06-21")))
            traffic = Traffic(url)
            traffic.start()
            assert traffic.batches.acquire(timeout=120)  # traffic flows
            backup = cli("backup", "--config", str(config), "--output", str(tmp_path / "bk"))
            assert traffic.batches.acquire(timeout=120)  # and flowed on after the backup
            traffic.stop.set()
            traffic.join(120)
            assert traffic.error is None, traffic.error
            assert backup.returncode == 0, backup.stdout + backup.stderr
            # a restore onto the store the API serves from is refused, and changes nothing (but
            # the heartbeat the registry sync beside the API rewrites after every pass)
            heartbeat = str(Path(settings.registry_sync.heartbeat))
            before = fingerprint(settings.workdir)
            before.pop(heartbeat, None)
            live = cli(
                "restore", "--config", str(config), "--input", str(tmp_path / "bk"), "--force"
            )
            assert live.returncode == 1, live.stdout + live.stderr
            assert "is live: in use by process(es)" in live.stderr, live.stderr
            after = fingerprint(settings.workdir)
            assert after.pop(heartbeat, None) is not None  # the sync runs beside the API
            assert after == before
            probes = send(session, url, batch("p", 0, 20, "2018-06-23"))

    shutil.rmtree(settings.workdir)  # the disaster
    shutil.rmtree(tmp_path / "prom-1")
    restored = make_settings(
        tmp_path / "elsewhere" / "work",
        serving={"poll_interval_s": 1.0, "metrics_dir": str(tmp_path / "prom-2")},
        monitoring={"min_rows": 100},
    )
    restored_config = write_config(tmp_path / "restored.yaml", restored)
    done = cli("restore", "--config", str(restored_config), "--input", str(tmp_path / "bk"))
    assert done.returncode == 0, done.stdout + done.stderr

    assert registry_picture(restored) == registry_before
    assert registry_before["versions"][v2][0] == "Production"
    assert {k: str(v) for k, v in registry_before["aliases"].items()} == {"champion": v2}
    pd.testing.assert_frame_equal(promotion_history(restored), history_before)
    logged = read_predictions(log_folder(restored)).set_index("transaction_id")
    assert set(before_backup) <= set(logged.index)  # every prediction answered before it
    assert set(logged.index) <= set(before_backup) | set(traffic.acknowledged)
    for tx_id, probability in {**before_backup, **traffic.acknowledged}.items():
        if tx_id in logged.index:
            assert logged.loc[tx_id, "fraud_probability"] == probability
    with gunicorn_api(restored_config, tmp_path / "api-2.log", version=v2) as url:
        with requests.Session() as session:
            assert send(session, url, batch("p", 0, 20, "2018-06-23")) == probes
        model = requests.get(f"{url}/model", timeout=30).json()
        assert model["version"] == v2 and model["stage"] == "Production"
    monitor = cli("monitor", "--config", str(restored_config))
    assert monitor.returncode in (0, 1, 2), monitor.stdout + monitor.stderr
    assert v1 != v2


@pytest.mark.multihost
def test_the_redis_online_state_is_backed_up_as_a_snapshot_and_restored(tmp_path, redis_url):
    state = {"backend": "redis", "url": redis_url}
    settings = make_settings(tmp_path / "work", state=state)
    store.client(settings).create_registered_model(NAME)
    with closing(open_state(settings)) as online:
        online.add_labels([("r1", 1), ("r2", 0)], 0)
    config = write_config(tmp_path / "redis.yaml", settings)
    done = cli("backup", "--config", str(config), "--output", str(tmp_path / "bk"))
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "bk" / "backup-000001" / MANIFEST).read_text())
    assert manifest["parts"]["online_state"]["kind"] == "redis"
    restored = make_settings(tmp_path / "elsewhere", state=state)
    restored_config = write_config(tmp_path / "restored.yaml", restored)
    refused = cli("restore", "--config", str(restored_config), "--input", str(tmp_path / "bk"))
    assert refused.returncode == 1 and "not empty: online_state redis://" in refused.stderr
    assert not restored.workdir.exists()  # nothing restored, not even the other parts
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()  # the disaster
    done = cli("restore", "--config", str(restored_config), "--input", str(tmp_path / "bk"))
    assert done.returncode == 0, done.stderr
    labels = received_labels(restored).sort_values("transaction_id")
    assert labels.to_dict(orient="records") == [
        {"transaction_id": "r1", "tx_fraud": 1},
        {"transaction_id": "r2", "tx_fraud": 0},
    ]


ADMIN = ("admin", new_password())


def login(account: tuple[str, str]) -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": account[0], "MLFLOW_TRACKING_PASSWORD": account[1]}


def on_server(uri: str, statement: str) -> None:
    """Run `statement` outside a transaction on the server of database `uri` (as its user)."""
    import psycopg2

    base, _ = uri.rsplit("/", 1)
    connection = psycopg2.connect(libpq_uri(f"{base}/postgres"))
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(statement)
    connection.close()


def other_database(uri: str, name: str) -> str:
    """Create database `name` on the server of `uri`; returns its URI."""
    on_server(uri, f'CREATE DATABASE "{name}"')
    return f"{uri.rsplit('/', 1)[0]}/{name}"


def drop_database(uri: str) -> None:
    on_server(uri, f'DROP DATABASE "{uri.rsplit("/", 1)[1]}" WITH (FORCE)')


@pytest.mark.integration
@pytest.mark.stack
def test_the_drill_on_postgresql_and_the_tracking_server(tmp_path, small_transactions) -> None:
    """The same drill on the Compose stack's registry: PostgreSQL behind `mlflow server` (basic
    auth, served artifacts). The database is restored first with the server stopped, then the
    artifacts through the new server."""
    with pytest.MonkeyPatch.context() as patch, postgres_server() as backend:
        for key, value in login(ADMIN).items():
            patch.setenv(key, value)
        with compose_mlflow_server(tmp_path / "mlflow-1", backend, ADMIN) as server:
            settings = make_settings(
                tmp_path / "work",
                mlflow={"tracking_uri": server},
                backup={"mlflow_database": backend},
                serving={"poll_interval_s": 1.0, "metrics_dir": str(tmp_path / "prom-1")},
                monitoring={"min_rows": 100},
            )
            v1, _ = train_and_register(small_transactions, settings, production="first model")
            registry_before = registry_picture(settings)
            history_before = promotion_history(settings)
            config = config_file(tmp_path, settings)
            with gunicorn_api(config, tmp_path / "api-1.log", version=v1, env=login(ADMIN)) as url:
                with requests.Session() as session:
                    before_backup = {}
                    for start in range(0, 150, 10):
                        before_backup.update(
                            send(session, url, batch("a", start, 10, "2018-06-21"))
                        )
                    traffic = Traffic(url)
                    traffic.start()
                    assert traffic.batches.acquire(timeout=120)
                    backup = cli(
                        "backup",
                        "--config",
                        str(config),
                        "--output",
                        str(tmp_path / "bk"),
                        env=login(ADMIN),
                    )
                    assert traffic.batches.acquire(timeout=120)
                    traffic.stop.set()
                    traffic.join(120)
                    assert traffic.error is None, traffic.error
                    assert backup.returncode == 0, backup.stdout + backup.stderr
                    probes = send(session, url, batch("p", 0, 20, "2018-06-23"))
        manifest = json.loads((numbered(tmp_path / "bk")[-1][1] / MANIFEST).read_text())
        assert manifest["parts"]["mlflow_store"]["kind"] == "postgresql"
        assert manifest["parts"]["artifacts"]["kind"] == "server"
        assert ADMIN[1] not in json.dumps(manifest)

        # the disaster: the database, the server's artifacts, the API's folder
        drop_database(backend)
        shutil.rmtree(tmp_path / "mlflow-1")
        shutil.rmtree(settings.workdir)
        database = other_database(backend, "restored")
        restored = make_settings(
            tmp_path / "elsewhere",
            mlflow={"tracking_uri": server},  # the address it will have; not running yet
            backup={"mlflow_database": database},
            serving={"poll_interval_s": 1.0, "metrics_dir": str(tmp_path / "prom-2")},
            monitoring={"min_rows": 100},
        )
        first = cli(
            "restore",
            "--config",
            str(write_config(tmp_path / "r1.yaml", restored)),
            "--input",
            str(tmp_path / "bk"),
            "--only",
            "mlflow_store,online_state,prediction_log,reports",
        )
        assert first.returncode == 0, first.stdout + first.stderr
        with compose_mlflow_server(tmp_path / "mlflow-2", database, ADMIN) as new_server:
            restored = restored.model_copy(
                update={"mlflow": restored.mlflow.model_copy(update={"tracking_uri": new_server})}
            )
            restored_config = write_config(tmp_path / "r2.yaml", restored)
            second = cli(
                "restore",
                "--config",
                str(restored_config),
                "--input",
                str(tmp_path / "bk"),
                "--only",
                "artifacts",
                env=login(ADMIN),
            )
            assert second.returncode == 0, second.stdout + second.stderr
            assert registry_picture(restored) == registry_before
            assert {k: str(v) for k, v in registry_before["aliases"].items()} == {"champion": v1}
            pd.testing.assert_frame_equal(promotion_history(restored), history_before)
            logged = read_predictions(log_folder(restored)).set_index("transaction_id")
            assert set(before_backup) <= set(logged.index)
            assert set(logged.index) <= set(before_backup) | set(traffic.acknowledged)
            log = tmp_path / "api-2.log"
            with gunicorn_api(restored_config, log, version=v1, env=login(ADMIN)) as url:
                with requests.Session() as session:
                    assert send(session, url, batch("p", 0, 20, "2018-06-23")) == probes
            monitor = cli("monitor", "--config", str(restored_config), env=login(ADMIN))
            assert monitor.returncode in (0, 1, 2), monitor.stdout + monitor.stderr
