"""The load benchmark's pure parts: which targets run, what the fixed-rate generator sends and
how it summarizes, and the challenger and reference rows of the table; and the world it serves
under the reference model configuration. Nothing here is timed."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from benchmarks.paced import (
    MULTIPLIER,
    due_times,
    http_post,
    percentile,
    predict_body,
    run_paced,
    summarize,
)
from benchmarks.servers import servers
from benchmarks.table import (
    challenger_section,
    reference_lines,
    role_lines,
    round_ratios,
    why_invalid,
)
from benchmarks.targets import (
    CHALLENGER_KEYS,
    SERVER_OF,
    TARGET_KEYS,
    advance_past,
    new_run_id,
    select_targets,
    servers_for,
    targets,
)
from benchmarks.world import REFERENCE_SERVER, build_world
from pipelines.features import feature_names
from pipelines.settings import load_settings

SAMPLE = [("11", "901", 12.5), ("12", "902", 30.0), ("13", "903", 7.25)]


def fake_world() -> Any:
    """What targets() reads of a World."""
    body = json.dumps({"dataframe_split": {"columns": ["a", "b"], "data": [[1.0, 2.0]]}})
    return SimpleNamespace(invocation_body=body, sample="sample.lua", start_s=1e9, step_s=60.0)


def test_targets_are_chosen_by_name_in_round_robin_order() -> None:
    assert select_targets("") == list(TARGET_KEYS)
    assert select_targets("predict-canary, predict,predict_shadow") == list(CHALLENGER_KEYS)
    with pytest.raises(ValueError, match="unknown target predict_shadows"):
        select_targets("predict,predict-shadows")


def test_each_target_loads_the_server_its_key_names() -> None:
    items, _ = targets(fake_world(), 2)
    assert [t.key for t in items] == list(TARGET_KEYS)
    assert {t.key: t.server for t in items} == SERVER_OF
    assert [t.name for t in items][1:5] == [
        "predict",
        "predict-reference",
        "predict-shadow",
        "predict-canary",
    ]
    chosen, _ = targets(fake_world(), 2, ["predict", "predict_canary"])
    assert [t.key for t in chosen] == ["predict", "predict_canary"]
    assert servers_for(["predict", "ours_inv", "predict_shadow"]) == {"api", "api_shadow"}
    assert servers_for(["predict_reference"]) == {"api_reference"}


def test_run_ids_never_repeat_and_the_clock_moves_past_every_request() -> None:
    cursor = {"start": 1000.0, "run": 0}
    assert [new_run_id(cursor, "load"), new_run_id(cursor, "paced")] == ["load1", "paced2"]
    advance_past(cursor, 10, 60.0)
    assert cursor["start"] == 1000.0 + 10 * 60.0 + 3600


def test_a_paced_body_is_the_transaction_load_predict_lua_sends() -> None:
    bodies = [json.loads(predict_body("paced3", seq, SAMPLE, 1e9, 90.5)) for seq in range(4)]
    assert [b["transaction_id"] for b in bodies] == [f"paced3-{seq}" for seq in range(4)]
    assert [b["tx_datetime"] for b in bodies] == sorted(b["tx_datetime"] for b in bodies)
    assert bodies[0]["tx_datetime"] == "2001-09-09T01:46:40"
    for seq, body in enumerate(bodies):
        customer, terminal, amount = SAMPLE[(seq * MULTIPLIER) % len(SAMPLE)]
        assert (body["customer_id"], body["terminal_id"]) == (customer, terminal)
        assert body["tx_amount"] == amount


def test_a_post_carries_its_body_and_closes() -> None:
    request = http_post("http://127.0.0.1:8123/predict", b'{"a":1}')
    head, body = request.split(b"\r\n\r\n")
    assert head.startswith(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:8123\r\n")
    assert b"Content-Length: 7" in head and b"Connection: close" in head
    assert body == b'{"a":1}'


def test_the_schedule_is_evenly_spaced_and_fixed_in_advance() -> None:
    due = due_times(200.0, 1.5)
    assert len(due) == 300
    assert due[0] == 0.0 and due[1] == pytest.approx(0.005) and due[-1] == pytest.approx(1.495)
    with pytest.raises(ValueError):
        due_times(0.0, 10)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0


def test_a_paced_run_with_an_error_is_not_a_measurement() -> None:
    good = summarize([0.002, 0.004, 0.010], [0.0, 0.001, 0.0], {"status": 0}, 2.0, 1.5)
    assert good["valid"] and good["errors"] == {}
    assert good["requests"] == 3 and good["rps"] == 1.5
    assert (good["p50_us"], good["max_us"]) == pytest.approx((4000.0, 10000.0))
    assert good["lag_p99_us"] == pytest.approx(1000.0)
    bad = summarize([0.002], [0.0, 0.0], {"status": 1, "timeout": 0}, 1.0, 2.0)
    assert not bad["valid"] and bad["errors"] == {"status": 1} and not bad["stalled"]
    stalled = summarize([0.002, 0.3], [0.0, 0.25], {}, 1.0, 2.0, max_lag_s=0.02)
    assert stalled["stalled"] and not stalled["valid"] and stalled["errors"] == {}


class _Answer(BaseHTTPRequestHandler):
    """200 with the body's transaction id, or 500 for an id ending in 7."""

    seen: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers["Content-Length"])
        transaction = json.loads(self.rfile.read(length))["transaction_id"]
        self.seen.append(transaction)
        self.send_response(500 if transaction.endswith("7") else 200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def answering() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Answer.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}/predict"
    server.shutdown()
    server.server_close()


def test_the_generator_sends_every_body_once_and_counts_what_failed(answering: str) -> None:
    bodies = [predict_body("paced1", seq, SAMPLE, 1e9, 60.0) for seq in range(12)]
    run = run_paced(answering, bodies, rate=400.0, timeout=10.0)
    assert sorted(_Answer.seen) == sorted(f"paced1-{seq}" for seq in range(12))
    assert run["requests"] == 11 and run["errors"] == {"status": 1} and not run["valid"]
    assert run["p50_us"] > 0 and run["client_cpu_us"] > 0


def _run(rps: float, cpu_us: float, p99_us: float = 10_000.0, valid: bool = True) -> dict:
    return {
        "rps": rps,
        "p50_us": p99_us / 3,
        "p90_us": p99_us / 2,
        "p99_us": p99_us,
        "cpu_us": cpu_us,
        "lag_p99_us": 500.0,
        "valid": valid,
    }


def test_cpu_ratios_pair_the_runs_of_one_round() -> None:
    off = [_run(700, 2000), _run(700, 2500), _run(700, 2000, valid=False)]
    on = [_run(600, 2400), _run(600, 2500), _run(600, 2400)]
    assert round_ratios(on, off, "cpu_us") == [pytest.approx(1.2), 1.0, None]


def test_the_challenger_section_gives_the_ratios_to_the_shadow_off_figures() -> None:
    items, _ = targets(fake_world(), 2, list(CHALLENGER_KEYS), canary_percent=10)
    off, shadow, canary = items
    off.runs = [_run(700, 2000), _run(720, 2100), _run(690, 2000)]
    shadow.runs = [_run(600, 2600), _run(610, 2700), _run(590, 2600)]
    canary.runs = [_run(690, 2100), _run(700, 2100), _run(680, 2000)]
    off.paced = [_run(350, 2200, 8000)] * 3
    shadow.paced = [_run(350, 2900, 12000)] * 3
    canary.paced = [_run(350, 2300, 9000)] * 3
    notes = {
        "fixed_rate": 350.0,
        "challenger": {
            "champion": {"version": 1, "trees": 62, "train_days": 28},
            "challenger": {"version": 2, "trees": 25, "train_days": 42},
        },
    }
    args = argparse.Namespace(
        canary_percent=10.0, fixed_rate=0.5, repeats=3, duration=15, max_lag_ms=20.0
    )
    text = "\n".join(challenger_section(items, notes, args))
    assert "shadow on ÷ off: **1.30×** (goal ≤ 1.25×) — **missed**" in text
    assert "canary ÷ off: **1.05×**" in text
    assert "| fraudflow /predict, shadow on (SQLite) | 350 | 4.00 | 6.00 | 12.00 | 1.50× |" in text
    assert "| 3/3 | 12.0, 12.0, 12.0 |" in text
    assert "fixed rate of 350 requests/s (50% of" in text
    assert "Champion v1 (62 trees, 28-day" in text
    assert challenger_section(items[1:], notes, args) == []


def test_the_reference_line_gives_the_cpu_ratio_to_the_reference_configuration() -> None:
    items, _ = targets(fake_world(), 2, ["predict", "predict_reference"])
    now, before = items
    now.runs = [_run(700, 2400), _run(720, 2200), _run(400, 9000, valid=False)]
    before.runs = [_run(750, 2000), _run(760, 2000), _run(740, 2000)]
    models = {
        "champion": {"version": 1, "trees": 62, "train_days": 28, "features": 22},
        "reference": {"version": 1, "trees": 240, "train_days": 28, "features": 19},
    }
    (line,) = reference_lines(items, models)
    assert "configured ÷ reference model configuration" in line
    assert "**1.15×** (goal ≤ 1.15×) — met; per round: 1.20, 1.10, ✗" in line
    assert "62 trees on 22 features, against v1 of the reference's own store, 240 trees" in line
    now.runs = [_run(700, 2600)] * 3
    assert "**1.30×** (goal ≤ 1.15×) — **missed**" in reference_lines(items, None)[0]
    assert reference_lines(items[:1], models) == []


def test_the_role_counts_say_the_challenger_really_scored() -> None:
    roles = {
        "api_shadow": {"champion": 900.0, "challenger": 0.0, "shadow": 900.0, "errors": 0.0},
        "api_canary": {"champion": 810.0, "challenger": 90.0, "shadow": 900.0, "errors": 0.0},
    }
    shadow, canary = role_lines(roles)
    assert "challenger scored 900 of the 900 transactions" in shadow
    assert "challenger answered 90 of 900 transactions (10.0%" in canary
    assert role_lines({}) == []


def test_an_invalid_run_says_why_in_words() -> None:
    """wrk's error count, the paced generator's errors by kind, and a stalled generator."""
    assert why_invalid({"errors": 3, "requests": 900}) == "3 errors of 900 requests"
    assert (
        why_invalid({"errors": {"status": 2}, "requests": 50, "stalled": False})
        == "2 errors of 50 requests (status 2)"
    )
    assert (
        why_invalid({"errors": {}, "requests": 7438, "stalled": True, "lag_p99_us": 222_400})
        == "generator stalled, lag p99 222.4 ms"
    )


@pytest.mark.integration
def test_the_reference_target_serves_a_model_of_the_reference_features(tmp_path: Path) -> None:
    """predict-reference's API answers /predict with a model trained on the reference
    configuration's columns, from a store of its own, while predict's has issue 22's."""
    world = build_world(tmp_path, None, reference=True)
    assert world.served_version(REFERENCE_SERVER) == str(world.models["reference"]["version"])
    transaction = {
        "transaction_id": "reference-1",
        "tx_datetime": datetime.fromtimestamp(world.start_s, timezone.utc)
        .replace(tzinfo=None)
        .isoformat(timespec="seconds"),
        "customer_id": "1",
        "terminal_id": "1",
        "tx_amount": 12.5,
    }
    served = {}
    with servers(world, None, wanted=servers_for(["predict", "predict_reference"])) as running:
        assert set(running) == {"api", REFERENCE_SERVER}
        for name, server in running.items():
            answer = requests.post(f"{server.url}/predict", json=transaction, timeout=10)
            assert answer.status_code == 200, answer.text
            assert 0.0 <= answer.json()["fraud_probability"] <= 1.0
            described = requests.get(f"{server.url}/model", timeout=10).json()
            assert described["challenger"]["mode"] == "off"
            served[name] = described["features"]
    configured = load_settings(world.config, environ={})
    reference = load_settings(world.configs[REFERENCE_SERVER], environ={})
    assert served["api"] == feature_names(configured.features)
    # the configured features, not the test settings' (which turn every switchable one on)
    assert served["api"] == feature_names(load_settings().features)
    assert served[REFERENCE_SERVER] == feature_names(reference.features)
    # the columns issue 22 added (amount_to_customer_p90_30d by default), which the reference
    # configuration does not compute
    added = set(served["api"]) - set(served[REFERENCE_SERVER])
    assert "amount_to_customer_p90_30d" in added
    assert set(served[REFERENCE_SERVER]) < set(served["api"])
    assert reference.tracking_uri != configured.tracking_uri
