"""/predict at a fixed request rate: an open-loop generator, latency counted from when each
request was due.

wrk sends a request as soon as a connection's previous answer is in (a closed loop): when the
server stalls, wrk stalls with it and the requests it should have sent meanwhile are never
timed (coordinated omission). wrk's Lua `delay()` hook does not fix that: the delay runs from
the previous answer, so a slow answer still postpones the next request (the rate drops instead
of the queue growing), latency is still counted from the send, and wrk connects before it waits,
so a gunicorn sync worker that accepts the idle connection sits on it meanwhile (`wrk -t2 -c16`
with a 40 ms `delay()`, ≈ 400 requests/s due, sent 383/s to a bare gunicorn app). wrk2, which
corrects for it, is not packaged by Debian. So this generator keeps its own schedule: request k
is due at start + k / rate whatever happened to the earlier ones, opens its connection then
(gunicorn closes it after each answer, as under wrk), and its latency runs from the due time to
the end of the answer, so that a late start (a stalled server, every connection busy, or this
process itself descheduled) counts against the server rather than vanishing. Its own lateness is
reported beside the latencies (`lag`), and so is its CPU per request.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

MULTIPLIER = 2654435761  # load_predict.lua's hash of the sequence number into the sample
# a run whose generator started its 99th-percentile request later than this is not a measurement
MAX_LAG_S = 0.02


def predict_body(
    run: str, seq: int, sample: Sequence[tuple[str, str, float]], start_s: float, step_s: float
) -> bytes:
    """The JSON body of /predict request SEQ of RUN: the transaction load_predict.lua would send
    (a new id, a real customer/terminal pair, time moving forward by STEP_S a request)."""
    customer, terminal, amount = sample[(seq * MULTIPLIER) % len(sample)]
    when = datetime.fromtimestamp(math.floor(start_s + seq * step_s), timezone.utc)
    return (
        f'{{"transaction_id":"{run}-{seq}","tx_datetime":"{when:%Y-%m-%dT%H:%M:%S}",'
        f'"customer_id":"{customer}","terminal_id":"{terminal}","tx_amount":{amount:.2f}}}'
    ).encode()


def http_post(url: str, body: bytes) -> bytes:
    """One HTTP/1.1 POST of a JSON BODY to URL, the connection closed after the answer."""
    parts = urlsplit(url)
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Content-Type: application/json\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def due_times(rate: float, seconds: float) -> list[float]:
    """When each request of a run of SECONDS at RATE requests/s is due, in seconds from its
    start: evenly spaced, the schedule fixed in advance."""
    if rate <= 0 or seconds <= 0:
        raise ValueError("rate and seconds must be positive")
    return [k / rate for k in range(int(round(rate * seconds)))]


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile SHARE (0-100) of VALUES (not empty)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(share / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(
    latencies_s: Sequence[float],
    lags_s: Sequence[float],
    errors: dict[str, int],
    duration_s: float,
    rate: float,
    max_lag_s: float = MAX_LAG_S,
) -> dict[str, Any]:
    """A paced run's result in wrk.parse_result's shape (requests, rps, p50_us, p99_us, errors,
    valid), plus the target rate and the generator's lateness; latencies of answered requests
    only, each from its due time. A run with an error is not a measurement, nor one whose
    generator started 1 % of its requests more than MAX_LAG_S late (`stalled`): the machine,
    not the server, stalled it, and its tail would be the generator's."""
    requests = len(latencies_s)
    errors = {kind: count for kind, count in errors.items() if count}
    run: dict[str, Any] = {
        "requests": requests,
        "duration_us": duration_s * 1e6,
        "rps": requests / duration_s if duration_s > 0 else 0.0,
        "rate": rate,
        "errors": errors,
    }
    for name, values in (("", latencies_s), ("lag_", lags_s)):
        for share in (50, 90, 99, 100):
            key = f"{name}{'max' if share == 100 else f'p{share}'}_us"
            run[key] = percentile(values, share) * 1e6 if values else 0.0
    run["stalled"] = run["lag_p99_us"] > max_lag_s * 1e6
    run["valid"] = not errors and requests > 0 and not run["stalled"]
    return run


async def _drive(
    url: str, bodies: Sequence[bytes], rate: float, timeout: float, limit: int
) -> tuple[list[float], list[float], dict[str, int], float]:
    """Send BODIES to URL on schedule; latencies and lags in seconds, errors, elapsed."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(limit)
    latencies: list[float] = []
    lags: list[float] = []
    errors = {"connect": 0, "read": 0, "status": 0, "timeout": 0}

    async def one(due: float, request: bytes) -> None:
        async with slots:  # waiting for a free slot counts in the latency
            lags.append(loop.time() - due)
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), timeout
                )
            except (OSError, asyncio.TimeoutError):
                errors["connect"] += 1
                return
            try:
                writer.write(request)
                answer = await asyncio.wait_for(reader.read(), timeout)  # to the server's close
            except asyncio.TimeoutError:
                errors["timeout"] += 1
                return
            except OSError:
                errors["read"] += 1
                return
            finally:
                writer.close()
            done = loop.time()
            status = answer.split(b" ", 2)[1:2]
            if not status or not status[0].startswith(b"2"):
                errors["status"] += 1
                return
            latencies.append(done - due)

    schedule = due_times(rate, len(bodies) / rate)
    start = loop.time() + 0.05
    tasks = []
    for offset, request in zip(schedule, (http_post(url, body) for body in bodies)):
        due = start + offset
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(due, request)))
    await asyncio.gather(*tasks)
    return latencies, lags, errors, loop.time() - start


def run_paced(
    url: str,
    bodies: Sequence[bytes],
    rate: float,
    timeout: float = 10.0,
    limit: int = 64,
    max_lag_s: float = MAX_LAG_S,
) -> dict[str, Any]:
    """POST BODIES to URL at RATE requests/s (open loop, at most LIMIT in flight); the run's
    result (summarize) with the generator's CPU per request (`client_cpu_us`)."""
    cpu = time.process_time()
    latencies, lags, errors, elapsed = asyncio.run(_drive(url, bodies, rate, timeout, limit))
    run = summarize(latencies, lags, errors, elapsed, rate, max_lag_s)
    run["client_cpu_us"] = (time.process_time() - cpu) * 1e6 / max(len(bodies), 1)
    return run
