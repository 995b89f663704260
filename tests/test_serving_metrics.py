"""/metrics in gunicorn's multiprocess mode survives a worker that is starting right now."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from serving.metrics import StartingWorkerTolerantCollector


def test_a_metrics_file_not_sized_yet_is_left_out_of_the_scrape(tmp_path: Path) -> None:
    """A worker creates its file empty and sizes it a moment later; a scrape in between used
    to fail with a 500. The running worker's samples are all still there."""
    running = MmapedDict(str(tmp_path / "counter_101.db"))
    key = mmap_key("fraudflow_predictions_total", "fraudflow_predictions_total", [], [], "Scored")
    running.write_value(key, 7.0, 0.0)
    running.close()
    (tmp_path / "counter_202.db").touch()  # the starting worker's file, not sized yet

    plain = CollectorRegistry()
    MultiProcessCollector(plain, path=str(tmp_path))
    try:
        generate_latest(plain)
        raise AssertionError("the plain collector read an empty file: the guard is not needed")
    except Exception as exc:  # noqa: BLE001 - which error the library raises is its business
        assert "unpack" in str(exc) or "buffer" in str(exc), exc

    tolerant = CollectorRegistry()
    StartingWorkerTolerantCollector(tolerant, path=str(tmp_path))
    assert "fraudflow_predictions_total 7.0" in generate_latest(tolerant).decode()
