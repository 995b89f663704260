"""HTTP load: the Flask floor, our API, `mlflow models serve` and MLServer, side by side in one run.

    .venv/bin/python -m benchmarks.load [--duration 15] [--repeats 3] [--markdown OUT.md]
        [--targets predict,predict-reference,predict-shadow,predict-canary] [--fixed-rate 0.5]

Builds a throw-away embedded MLflow store (small simulated world, one trained model promoted to
Production), warms the online state with the history, then starts on free loopback ports, each
with 2 workers and OMP_NUM_THREADS=1:

- a bare Flask "hello" app (benchmarks/hello_app.py) under serving/gunicorn.conf.py: the floor;
- our API, `fraudflow serve` (the same gunicorn settings): on the embedded SQLite state with the
  challenger off, in shadow and in canary (three servers, each on its own copy of the warmed
  state), and on a Redis server the benchmark starts (Debian's `redis-server`, AOF, fsync every
  second) with the challenger off;
- our API under the reference model configuration (conf/model-reference.yaml, the model before
  issue 22, laid over the same settings as the ablation lays it): a model trained and promoted
  under it in a store of its own, its own warmed SQLite state, challenger off; only when its
  target is wanted (it costs a training and a warm more);
- `mlflow models serve -m models:/fraud-detector/Production --env-manager local` (uvicorn);
- Seldon MLServer with its LightGBM runtime serving the same booster file (benchmarks/mlserver.py;
  its own venv, `--mlserver-venv`, created from benchmarks/mlserver-requirements.txt on first use).

wrk drives nine targets: hello, our /predict (one raw transaction per request, every id new,
real customer/terminal pairs, time moving forward) with the challenger off, under the reference
model configuration, in shadow, in canary and on Redis, our /invocations and mlflow's
/invocations (the same one-row `dataframe_split` body) and MLServer's V2 infer (the same row);
`--targets` runs a subset (only their servers start). After one warm-up run per target the
targets are run round-robin `--repeats` times, so that noise from the shared machine hits all of
them alike; the table gives the medians. A run with socket errors or non-2xx answers is not a
measurement: it is reported and left out of the medians. With predict and predict-reference, the
report gives their ratio of server CPU per request (issue 22's acceptance: at most 1.15×).

Then, unless `--fixed-rate 0`, the /predict targets on SQLite (challenger off, shadow, canary)
are driven round-robin `--repeats` times more at a fixed rate, `--fixed-rate` times the median
maximum of the challenger-off /predict, by an open-loop generator (benchmarks/paced.py) that
counts latency from when each request was due. Needs `wrk` (apt-get install -y wrk).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import mlserver
from benchmarks.cpu import with_server_cpu
from benchmarks.env import BIN
from benchmarks.paced import MAX_LAG_S, predict_body, run_paced
from benchmarks.profiling import profile_predict, render_profile
from benchmarks.servers import role_counts, sanity_check, servers
from benchmarks.table import loadavg, machine_info, median_of, render
from benchmarks.targets import (
    CHALLENGER_KEYS,
    Target,
    advance,
    advance_past,
    new_run_id,
    select_targets,
    servers_for,
    targets,
)
from benchmarks.world import REFERENCE_SERVER, build_world
from benchmarks.wrk import describe, lua_script, run_wrk
from tests.support.redis import redis_server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of warm-up per target")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per target")
    parser.add_argument("--threads", type=int, default=2, help="wrk -t")
    parser.add_argument("--connections", type=int, default=16, help="wrk -c")
    parser.add_argument("--timeout", type=int, default=10, help="wrk --timeout, seconds")
    parser.add_argument(
        "--mlserver-venv",
        default=str(mlserver.DEFAULT_VENV),
        help="MLServer's own virtualenv (created from benchmarks/mlserver-requirements.txt)",
    )
    parser.add_argument(
        "--mlserver-workers",
        type=int,
        default=2,
        help="MLServer parallel_workers (0: inference in its front-end process)",
    )
    parser.add_argument(
        "--targets",
        default="",
        help="comma-separated subset of: hello, predict, predict-reference (our /predict under "
        "conf/model-reference.yaml, its own model and state), predict-shadow, predict-canary, "
        "predict-redis, ours-inv, mlflow-inv, mlserver-inv (default: all)",
    )
    parser.add_argument(
        "--canary-percent",
        type=float,
        default=10.0,
        help="serving.challenger.canary_percent of the canary API",
    )
    parser.add_argument(
        "--fixed-rate",
        type=float,
        default=0.5,
        help="after the maximum runs, drive the SQLite /predict targets at this share of the "
        "challenger-off /predict's median requests/s (0: skip)",
    )
    parser.add_argument(
        "--paced-limit",
        type=int,
        default=64,
        help="most requests in flight at once in the fixed-rate runs",
    )
    parser.add_argument(
        "--max-lag-ms",
        type=float,
        default=MAX_LAG_S * 1000,
        help="a fixed-rate run whose generator started 1%% of its requests later than this "
        "is left out of the medians (the machine stalled the generator)",
    )
    parser.add_argument("--markdown", help="also write the Markdown section to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the measurements, one more /predict run with py-spy (and perf, if installed) "
        "on the API workers",
    )
    args = parser.parse_args(argv)
    try:
        args.keys = select_targets(args.targets)
    except ValueError as exc:
        parser.error(str(exc))
    if args.profile and "predict" not in args.keys:
        parser.error("--profile needs the predict target")
    return args


def describe_model(figures: dict[str, int]) -> str:
    """One line on a served model (world.model_figures)."""
    return (
        f"v{figures['version']} in Production in its own store, {figures['trees']} trees on "
        f"{figures['features']} features"
    )


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM/SIGHUP: unwind so that every server is stopped."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Build the world, start the servers, load them, report, stop everything."""
    args = parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit(
            "benchmarks.load needs wrk, the HTTP load generator, on PATH; install it with "
            "`apt-get update && apt-get install -y wrk` (or build it from "
            "https://github.com/wg/wrk) and run again"
        )
    spy = shutil.which("py-spy") or (str(BIN / "py-spy") if (BIN / "py-spy").exists() else None)
    if args.profile and spy is None:
        sys.exit("--profile needs py-spy: .venv/bin/pip install py-spy")
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    command = shlex.join([".venv/bin/python", "-m", "benchmarks.load", *(argv or sys.argv[1:])])
    root = Path(tempfile.mkdtemp(prefix="fraudflow-load-"))
    began = time.monotonic()
    try:
        wanted = servers_for(args.keys)
        mlserver_bin = (
            mlserver.ensure_venv(Path(args.mlserver_venv)) if "mlserver" in wanted else None
        )
        # the Redis the Redis-backed API shares its state in, as deployed: AOF, fsync every second
        with (
            redis_server(root / "redis", appendonly=True, appendfsync="everysec")
            if "api_redis" in wanted
            else nullcontext(None)
        ) as redis:
            print(f"building the world in {root} ...", flush=True)
            world = build_world(
                root,
                redis.url if redis else None,
                args.canary_percent,
                reference=REFERENCE_SERVER in wanted,
            )
            print(
                f"  {world.history_rows:,} transactions, model v{world.version} in Production, "
                f"v{world.challenger_version} as challenger ({time.monotonic() - began:.0f} s)",
                flush=True,
            )
            if "reference" in world.models:
                reference = describe_model(world.models["reference"])
                print(f"  reference model configuration: {reference}", flush=True)
            scripts = root / "lua"
            scripts.mkdir()
            for name in ("load_static.lua", "load_predict.lua"):
                lua_script(name, scripts)
            with servers(world, mlserver_bin, args.mlserver_workers, wanted) as running:
                print(f"servers ready ({time.monotonic() - began:.0f} s)", flush=True)
                probability = sanity_check(world, running)
                info = machine_info(wrk)
                load_before = loadavg()
                items, cursor = targets(world, args.threads, args.keys, args.canary_percent)

                def pids_of(target: Target) -> list[int]:
                    # the Redis-backed API's CPU includes the Redis server's
                    pids = [running[target.server].process.pid]
                    if target.server == "api_redis" and redis and redis.process is not None:
                        pids.append(redis.process.pid)
                    return pids

                def one(target: Target, seconds: int) -> dict[str, Any]:
                    server = running[target.server]
                    run = with_server_cpu(
                        pids_of(target),
                        lambda: run_wrk(
                            wrk,
                            server.url + target.path,
                            scripts / target.script,
                            target.env(seconds),
                            seconds,
                            threads=args.threads,
                            connections=args.connections,
                            timeout=args.timeout,
                        ),
                    )
                    if target.key.startswith("predict"):
                        advance(cursor, run, world.step_s, args.threads, args.connections)
                    return run

                def paced_run(target: Target, rate: float) -> dict[str, Any]:
                    run_id = new_run_id(cursor, "paced")
                    count = int(round(rate * args.duration))
                    bodies = [
                        predict_body(run_id, seq, world.sample_rows, cursor["start"], world.step_s)
                        for seq in range(count)
                    ]
                    url = running[target.server].url + target.path
                    run = with_server_cpu(
                        pids_of(target),
                        lambda: run_paced(
                            url,
                            bodies,
                            rate,
                            args.timeout,
                            args.paced_limit,
                            args.max_lag_ms / 1000,
                        ),
                    )
                    advance_past(cursor, count, world.step_s)
                    return run

                for target in items:
                    run = one(target, args.warmup)
                    print(f"warm-up  {target.label:28s} {describe(run)}", flush=True)
                for repeat in range(args.repeats):
                    for target in items:
                        run = one(target, args.duration)
                        target.runs.append(run)
                        print(f"run {repeat + 1}/{args.repeats} {target.label:28s} {describe(run)}")
                        sys.stdout.flush()
                paced = [t for t in items if t.key in CHALLENGER_KEYS]
                maximum = median_of(next((t.runs for t in items if t.key == "predict"), []), "rps")
                rate = None
                if args.fixed_rate > 0 and maximum is not None and len(paced) > 1:
                    rate = maximum * args.fixed_rate
                    for repeat in range(args.repeats):
                        for target in paced:
                            run = paced_run(target, rate)
                            target.paced.append(run)
                            print(
                                f"paced {repeat + 1}/{args.repeats} {target.label:28s} "
                                f"{describe(run)}  (due {rate:.0f}/s, generator lag p99 "
                                f"{run['lag_p99_us'] / 1000:.2f} ms)",
                                flush=True,
                            )
                profile = ""
                if args.profile:
                    by_key = {t.key: t for t in items}
                    run, shares = profile_predict(
                        spy,
                        running["api"].process.pid,
                        lambda seconds: one(by_key["predict"], seconds),
                        args.duration,
                        root,
                    )
                    profile = render_profile(run, shares)
                notes = {
                    "roles": {
                        name: role_counts(running[name])
                        for name in ("api_shadow", "api_canary")
                        if name in running
                    },
                    "fixed_rate": rate,
                    "challenger": world.models,
                    "models": world.models,
                    "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "load_before": load_before,
                    "load_after": loadavg(),
                    "history": f"{world.history_rows:,}",
                    "probability": None if probability is None else f"{probability:.6f}",
                    "warm": world.warm,
                    "rows": world.history_rows,
                }
        text = render(items, args, info, notes, command) + profile
        print()
        print(text)
        if args.markdown:
            Path(args.markdown).write_text(text)
            print(f"written to {args.markdown}")
        print(f"total {time.monotonic() - began:.0f} s")
        return 0
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
