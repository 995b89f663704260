"""The data volume's free space and the size of what grows on it, on /metrics.

Computed at each scrape (a statvfs and a few stats): no state in the workers, the same figure
from whichever worker answers. The alert on free space is in conf/prometheus/rules.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pipelines.log.record import FILE_PREFIX
from pipelines.state.protocol import OnlineState


class StorageCollector(Collector):
    """`log_folder`: the prediction log's folder (its volume is the one watched);
    `state`: the online state, whose size it reports (SQLite: its files; Redis: its data
    set)."""

    def __init__(self, log_folder: Path, state: OnlineState) -> None:
        self.log_folder = Path(log_folder)
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            volume = os.statvfs(self.log_folder)
        except OSError:
            volume = None
        if volume is not None:
            yield GaugeMetricFamily(
                "fraudflow_data_volume_free_bytes",
                "Bytes free for the API on the volume of the prediction log",
                value=volume.f_bavail * volume.f_frsize,
            )
            yield GaugeMetricFamily(
                "fraudflow_data_volume_size_bytes",
                "Size of the volume of the prediction log",
                value=volume.f_blocks * volume.f_frsize,
            )
        yield GaugeMetricFamily(
            "fraudflow_prediction_log_bytes",
            "Bytes of the prediction log's files (JSON lines and Parquet)",
            value=_total_size(self.log_folder.glob(f"{FILE_PREFIX}*")),
        )
        size = self.state.size_bytes()
        if size is not None:  # a state server that does not answer: no sample, no failed scrape
            yield GaugeMetricFamily(
                "fraudflow_online_state_bytes",
                "Bytes of the online state (SQLite: database, WAL and shared-memory files; "
                "Redis: its data set)",
                value=size,
            )


def _total_size(paths) -> float:
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            continue  # removed by a prune since it was listed
    return float(total)
