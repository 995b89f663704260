"""The API's request path, this checkout against a reference checkout, side by side in one run.

    .venv/bin/python -m benchmarks.request_path --reference DIR [--requests 3000] [--rounds 5]
        [--store DIR] [--markdown OUT.md]

DIR is another checkout of fraudflow with its own `.venv` (e.g. `git worktree add DIR REV`, then
`make install` there). Both serve the same store (a copy per run of `--store`, the embedded
store of `make demo` by default: it needs a version in Production) and score the same last
`--requests` transactions of its data through `/predict` in process (Flask's test client): the
request's validation, online features from the SQLite state, LightGBM, the explanation, the
prediction log. Each run is a fresh process; the runs alternate (reference, this, reference,
…) so that the shared machine's noise falls on both alike. Reported: the median wall and CPU
time per request of the scoring loop (the app's start-up is timed apart) and the ratios this ÷
reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.env import ROOT
from benchmarks.table import loadavg, publish

# Runs in either checkout, so it uses only what both have: create_app and /predict.
WORKER = r"""
import json, os, shutil, sys, tempfile, time
from pathlib import Path
import pandas as pd
store, count = Path(sys.argv[1]), int(sys.argv[2])
work = Path(tempfile.mkdtemp(prefix="request-path-"))
shutil.copy(store / "mlflow.db", work / "mlflow.db")
shutil.copytree(store / "mlartifacts", work / "mlartifacts")
(work / "overlay.yaml").write_text(f"workdir: {work}\n")
os.environ["FRAUDFLOW_CONFIG"] = str(work / "overlay.yaml")
data = pd.read_parquet(store / "data" / "transactions").sort_values("tx_datetime").tail(count)
bodies = [
    {"transaction_id": f"rp-{row.transaction_id}", "tx_datetime": row.tx_datetime.isoformat(),
     "customer_id": str(row.customer_id), "terminal_id": str(row.terminal_id),
     "tx_amount": float(row.tx_amount)}
    for row in data.itertuples()
]
started = time.perf_counter()
from serving.app import create_app
app = create_app(start_polling=False)
client = app.test_client()
ready, cpu_ready = time.perf_counter(), time.process_time()
codes = [client.post("/predict", json=body).status_code for body in bodies]
done, cpu_done = time.perf_counter(), time.process_time()
shutil.rmtree(work, ignore_errors=True)
print(json.dumps({"start_s": ready - started, "loop_s": done - ready,
                  "loop_cpu_s": cpu_done - cpu_ready, "ok": codes.count(200),
                  "requests": len(codes)}))
"""


def run_once(checkout: Path, store: Path, requests: int) -> dict[str, float]:
    """One fresh process of CHECKOUT scoring the last REQUESTS transactions of STORE."""
    done = subprocess.run(
        [str(checkout / ".venv" / "bin" / "python"), "-c", WORKER, str(store), str(requests)],
        cwd=checkout,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(Path.home())},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        sys.exit(f"{checkout}: the run failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["ok"] != result["requests"]:
        sys.exit(f"{checkout}: {result['requests'] - result['ok']} requests were not answered 200")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference", required=True, help="the other checkout (with .venv)")
    parser.add_argument("--store", default=str(ROOT / ".fraudflow"), help="an embedded store")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown", help="also write the results section to this file")
    args = parser.parse_args(argv)
    reference, store = Path(args.reference).resolve(), Path(args.store).resolve()
    load_before = loadavg()
    runs: dict[str, list[dict[str, float]]] = {"reference": [], "this": []}
    for index in range(args.rounds + 1):  # the first round warms the page cache, not counted
        for name, checkout in (("reference", reference), ("this", ROOT)):
            result = run_once(checkout, store, args.requests)
            print(f"round {index} {name:9s} {result}", flush=True)
            if index:
                runs[name].append(result)

    def median(name: str, key: str, per: float = 1.0) -> float:
        return statistics.median(r[key] / per for r in runs[name])

    per_request = {n: median(n, "loop_s", args.requests) for n in runs}
    cpu_per_request = {n: median(n, "loop_cpu_s", args.requests) for n in runs}
    start = {n: median(n, "start_s") for n in runs}
    commit = subprocess.run(
        ["git", "-C", str(reference), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    lines = [
        f"### The request path against {commit or reference} "
        f"({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"`{' '.join(['.venv/bin/python -m benchmarks.request_path', *(argv or sys.argv[1:])])}`:"
        f" {args.requests:,} /predict in process per run, {args.rounds} runs each, alternating;"
        f" load average {load_before} before, {loadavg()} after.",
        "",
        "| checkout | median ms per request | median CPU ms per request | median start-up s |",
        "|---|---|---|---|",
        *(
            f"| {n} | {1000 * per_request[n]:.3f} | {1000 * cpu_per_request[n]:.3f} |"
            f" {start[n]:.2f} |"
            for n in ("reference", "this")
        ),
        f"| this ÷ reference | {per_request['this'] / per_request['reference']:.3f} |"
        f" {cpu_per_request['this'] / cpu_per_request['reference']:.3f} |"
        f" {start['this'] / start['reference']:.2f} |",
    ]
    publish("\n".join(lines), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
