"""Server CPU per request, from /proc.

Throughput on a shared machine depends on what else runs; the CPU seconds a server's processes
spend per request do not, so every run also reports them (all processes and threads of the
server, wrk excluded).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def children(pid: int) -> list[int]:
    """Direct child processes of PID (gunicorn workers of a master)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of PID and all its descendants (every thread of each)."""
    total, pending, tick = 0.0, [pid], os.sysconf("SC_CLK_TCK")
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
        pending += children(current)
    return total


def with_server_cpu(pids: list[int], load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run LOAD (one wrk run) and add `cpu_us`: the CPU microseconds the process trees of PIDS
    (a server, and the state server it uses) spent during it, per request."""
    before = sum(tree_cpu_seconds(pid) for pid in pids)
    run = load()
    cpu = sum(tree_cpu_seconds(pid) for pid in pids) - before
    run["cpu_us"] = cpu * 1e6 / max(run["requests"], 1)
    return run
