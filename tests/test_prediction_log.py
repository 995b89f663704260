"""The prediction log's own contract: file names per host and process, whole records only,
0640 files, torn trailing lines skipped and counted, Parquet compaction, retention."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.log import retention as log_retention
from pipelines.log import writer as log_writer
from pipelines.log.reader import MonitoringInputError, log_files, read_log
from pipelines.log.record import RoleScore, log_file, record, writer_name
from pipelines.log.retention import compact_closed, delete_older_than
from pipelines.log.writer import PredictionLogError, PredictionLogWriter

ROOT = Path(__file__).resolve().parent.parent
FEATURES = ["customer_nb_tx_1d", "terminal_risk_7d", "tx_amount"]


def _day(day: str) -> tuple[datetime, datetime]:
    """The UTC day as the half-open range the reader takes."""
    start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


def _record(tid: str, logged_at: datetime, risk: float = float("nan")) -> dict:
    return record(
        logged_at=logged_at.isoformat(timespec="milliseconds"),
        transaction_id=tid,
        tx_datetime=datetime(2018, 6, 1, 12),
        customer_id="c1",
        terminal_id="m1",
        tx_amount=12.0,
        feature_names=FEATURES,
        feature_values=[2.0, risk, 12.0],
        fraud_probability=0.25,
        decision="approve",
        model_name="fraud-detector",
        model_version="3",
        latency_ms=1.5,
        resent=False,
    )


def _records(prefix: str, count: int, when: datetime | None = None) -> list[dict]:
    when = when or datetime.now(timezone.utc)
    return [
        _record(f"{prefix}{i}", when, risk=0.1 * (i % 3) if i % 2 else float("nan"))
        for i in range(count)
    ]


def _write_day(folder: Path, day: str, writer: str, records: list[dict]) -> Path:
    """A file of an earlier day, written as the writer writes (its own JSON lines)."""
    path = log_file(folder, day, writer)
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
    return path


def test_file_names_are_unique_per_host_and_process(tmp_path: Path) -> None:
    assert writer_name("api-7d9f/x y", 12) == "api-7d9f_x_y-12"
    assert writer_name("", 3) == f"{writer_name(None, 3)}"  # no empty host part
    writer = PredictionLogWriter(tmp_path)
    writer.write(_records("here", 2))
    writer.close()
    child = (
        "import sys; from pipelines.log.writer import PredictionLogWriter; "
        "from tests.test_prediction_log import _records; "
        "w = PredictionLogWriter(sys.argv[1]); w.write(_records('there', 3)); w.close()"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", child, str(tmp_path)], check=True, env=env, cwd=ROOT)
    files = log_files(tmp_path)
    assert len(files) == 2
    host = writer_name().rsplit("-", 1)[0]
    assert host == writer_name(socket.gethostname(), 1).rsplit("-", 1)[0]
    assert all(f.name.startswith("predictions-") and f"-{host}-" in f.name for f in files)
    assert {f.stem.rsplit("-", 1)[1] for f in files} >= {str(os.getpid())}
    assert len(read_log(tmp_path).predictions) == 5


def test_log_files_are_created_0640(tmp_path: Path) -> None:
    writer = PredictionLogWriter(tmp_path)
    writer.write(_records("a", 1))
    (path,) = log_files(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o640 & ~_umask()


def test_a_short_write_is_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may take fewer bytes than asked (a signal, a nearly full disk): the writer
    goes on until the whole record is in."""
    real, calls = os.write, []

    def short(fd: int, data) -> int:
        calls.append(len(data))
        return real(fd, bytes(data[:7]))

    writer = PredictionLogWriter(tmp_path)
    monkeypatch.setattr(log_writer.os, "write", short)
    writer.write(_records("s", 3))
    monkeypatch.undo()
    assert len(calls) > 3
    read = read_log(tmp_path, features=FEATURES)
    assert list(read.predictions["transaction_id"]) == ["s0", "s1", "s2"] and not read.torn_files


def test_a_full_disk_leaves_no_torn_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Half a payload written, then ENOSPC: the file is cut back to its last whole record, the
    writer raises, and it appends normally once the disk has room again."""
    writer = PredictionLogWriter(tmp_path)
    writer.write(_records("before", 2))
    (path,) = log_files(tmp_path)
    size = path.stat().st_size
    real = os.write

    def full(fd: int, data) -> int:
        if len(data) > 100:
            return real(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(log_writer.os, "write", full)
    with pytest.raises(PredictionLogError, match="No space left"):
        writer.write(_records("lost", 3))
    monkeypatch.undo()
    assert path.stat().st_size == size
    writer.write(_records("after", 1))
    read = read_log(tmp_path)
    assert list(read.predictions["transaction_id"]) == ["before0", "before1", "after0"]
    assert not read.torn_files


def test_a_failed_cut_back_blocks_further_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If even the cut back fails, nothing is appended behind the torn bytes until it works."""
    writer = PredictionLogWriter(tmp_path)
    writer.write(_records("before", 1))
    real_write, real_truncate = os.write, os.ftruncate

    def half(fd: int, data) -> int:
        if len(data) > 100:
            return real_write(fd, bytes(data[:50]))
        raise OSError(errno.EIO, "Input/output error")

    def refuse(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(log_writer.os, "write", half)
    monkeypatch.setattr(log_writer.os, "ftruncate", refuse)
    with pytest.raises(PredictionLogError):
        writer.write(_records("lost", 1))
    monkeypatch.setattr(log_writer.os, "write", real_write)
    with pytest.raises(PredictionLogError, match="torn record"):
        writer.write(_records("blocked", 1))
    assert read_log(tmp_path).torn_records == 1  # the torn tail is skipped meanwhile
    monkeypatch.setattr(log_writer.os, "ftruncate", real_truncate)
    writer.write(_records("after", 1))
    read = read_log(tmp_path)
    assert list(read.predictions["transaction_id"]) == ["before0", "after0"]
    assert not read.torn_files


def test_a_torn_trailing_line_is_skipped_and_counted(tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    day = now.strftime("%Y-%m-%d")
    torn = _write_day(tmp_path, day, "h-1", _records("a", 3, now))
    with open(torn, "ab") as handle:
        handle.write(b'{"logged_at":"2026-')
    _write_day(tmp_path, day, "h-2", _records("b", 2, now))
    read = read_log(tmp_path, *_day(day), FEATURES)
    assert sorted(read.predictions["transaction_id"]) == ["a0", "a1", "a2", "b0", "b1"]
    assert read.torn_files == (torn,) and read.torn_records == 1


def test_a_torn_line_in_the_middle_is_still_an_error(tmp_path: Path) -> None:
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    path = _write_day(tmp_path, day, "h-1", _records("a", 1))
    with open(path, "ab") as handle:
        handle.write(b'{"logged_at":"2026-\n')
    with open(path, "a") as handle:
        handle.write(json.dumps(_records("b", 1)[0]) + "\n")
    with pytest.raises(MonitoringInputError, match=path.name):
        read_log(tmp_path, *_day(day), FEATURES)


def test_closed_days_are_compacted_to_parquet_and_read_the_same(tmp_path: Path) -> None:
    now = datetime(2026, 11, 28, 3, tzinfo=timezone.utc)
    old = datetime(2026, 11, 26, 9, tzinfo=timezone.utc)
    closed = _write_day(tmp_path, "2026-11-26", "h-1", _records("a", 40, old))
    with open(closed, "ab") as handle:
        handle.write(b'{"logged_at":')  # a torn tail: not in the Parquet file either
    closed_too = _write_day(tmp_path, "2026-11-27", "h-1", _records("b", 5, old + timedelta(1)))
    today = _write_day(tmp_path, "2026-11-28", "h-1", _records("c", 5, now))
    window = (old - timedelta(days=1), now + timedelta(hours=1))
    before = {f: read_log(tmp_path, *window, f).predictions for f in (None, (), tuple(FEATURES))}
    done = compact_closed(tmp_path, now)
    assert [c.source for c in done] == [closed, closed_too]
    assert [c.rows for c in done] == [40, 5] and done[0].torn and not done[1].torn
    assert not closed.exists() and not closed_too.exists() and today.exists()
    parquet = closed.with_suffix(".parquet")
    assert pq.read_metadata(parquet).num_rows == 40
    assert pq.ParquetFile(parquet).metadata.row_group(0).column(0).compression == "ZSTD"
    assert parquet.stat().st_mode & 0o777 == 0o640 & ~_umask()
    assert not list(tmp_path.glob(".*.tmp"))
    for features, frame in before.items():
        after = read_log(tmp_path, *window, features)
        assert not after.torn_files
        assert after.predictions.equals(frame), features
    assert compact_closed(tmp_path, now) == []  # nothing left to do


def test_both_models_of_a_challenger_period_survive_compaction(tmp_path: Path) -> None:
    """Records of a shadow or canary period carry both models; records before it do not. The
    reader gives both kinds in one frame, from JSON lines and from their Parquet copy alike."""
    old = datetime(2026, 11, 26, 9, tzinfo=timezone.utc)
    plain = _records("p", 3, old)
    paired = []
    for i in range(4):
        routed = i % 2 == 1
        champion = RoleScore("3", 0.1 * i, "approve")
        challenger = RoleScore("4", None, None) if i == 3 else RoleScore("4", 0.9, "decline")
        answer = challenger if routed and challenger.probability is not None else champion
        paired.append(
            {
                **_record(f"s{i}", old),
                **record(
                    logged_at=old.isoformat(timespec="milliseconds"),
                    transaction_id=f"s{i}",
                    tx_datetime=datetime(2018, 6, 1, 12),
                    customer_id="c1",
                    terminal_id="m1",
                    tx_amount=12.0,
                    feature_names=FEATURES,
                    feature_values=[2.0, 0.5, 12.0],
                    fraud_probability=answer.probability,
                    decision=answer.decision,
                    model_name="fraud-detector",
                    model_version=answer.version,
                    latency_ms=1.5,
                    resent=False,
                    model_role="challenger" if answer is challenger else "champion",
                    champion=champion,
                    challenger=challenger,
                ),
            }
        )
    _write_day(tmp_path, "2026-11-26", "h-1", plain + paired)
    window = (old - timedelta(days=1), old + timedelta(days=1))
    before = read_log(tmp_path, *window).predictions
    assert before["challenger_version"].isna().sum() == 3
    rows = before.set_index("transaction_id")
    assert rows.loc["s1", "model_role"] == "challenger" and rows.loc["s1", "model_version"] == "4"
    assert rows.loc["s1", "champion_probability"] == 0.1
    assert pd.isna(rows.loc["s3", "challenger_probability"])
    assert rows.loc["s3", "model_role"] == "champion"  # the challenger failed: champion answered
    compact_closed(tmp_path, datetime(2026, 11, 28, 3, tzinfo=timezone.utc))
    assert list(tmp_path.glob("*.parquet")) and not list(tmp_path.glob("*.jsonl"))
    after = read_log(tmp_path, *window).predictions
    pd.testing.assert_frame_equal(after, before)


@pytest.mark.parametrize(
    "field, value",
    [("challenger_probability", "high"), ("champion_probability", {"p": 1}), ("model_role", [1])],
)
def test_a_crafted_role_field_is_an_error_naming_the_file(
    tmp_path: Path, field: str, value: object
) -> None:
    """A record whose challenger fields are of the wrong type (a hand-edited or foreign log) is
    refused by name when the role fields are read, as any malformed record is."""
    when = datetime(2026, 11, 26, 9, tzinfo=timezone.utc)
    crafted = {**_record("x", when), field: value}
    path = _write_day(tmp_path, "2026-11-26", "h-1", [crafted])
    with pytest.raises(MonitoringInputError, match=path.name):
        read_log(tmp_path, *_day("2026-11-26"), FEATURES, roles=True)


def test_a_day_is_closed_only_after_its_grace(tmp_path: Path) -> None:
    path = _write_day(tmp_path, "2026-11-27", "h-1", _records("a", 2))
    assert compact_closed(tmp_path, datetime(2026, 11, 28, 0, 5, tzinfo=timezone.utc)) == []
    assert path.exists()
    assert len(compact_closed(tmp_path, datetime(2026, 11, 28, 0, 11, tzinfo=timezone.utc))) == 1


def test_the_json_is_removed_only_after_its_parquet_copy_is_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Parquet write that fails leaves the JSON as it was and no file behind; a run that
    stopped after the rename finishes (the JSON goes once the row counts agree)."""
    path = _write_day(tmp_path, "2026-11-26", "h-1", _records("a", 10))
    original = path.read_bytes()
    now = datetime(2026, 11, 28, tzinfo=timezone.utc)

    def broken(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(log_retention.pq, "write_table", broken)
    with pytest.raises(OSError, match="No space"):
        compact_closed(tmp_path, now)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    # stopped between the rename and the removal: both exist, the reader reads the Parquet once
    (done,) = compact_closed(tmp_path, now)
    path.write_bytes(original)
    assert len(read_log(tmp_path).predictions) == 10 and log_files(tmp_path) == [done.target]
    (again,) = compact_closed(tmp_path, now)
    assert not path.exists() and again.rows == 10


def test_retention_deletes_old_days_only(tmp_path: Path) -> None:
    days = ["2026-08-29", "2026-08-30", "2026-08-31", "2026-11-27"]
    for day in days:
        _write_day(tmp_path, day, "h-1", _records(day, 1))
    compact_closed(
        tmp_path, datetime(2026, 9, 1, 1, tzinfo=timezone.utc)
    )  # the closed days as Parquet
    other = tmp_path / "predictions-notes.txt"
    other.write_text("not a log file")
    removed = delete_older_than(tmp_path, 90, datetime(2026, 11, 28, 12, tzinfo=timezone.utc))
    # 90 days before 2026-11-28 is 2026-08-30: that day and later stay
    assert {p.name[12:22] for p in removed} == {"2026-08-29"}
    assert sorted(p.name[12:22] for p in log_files(tmp_path)) == days[1:]
    assert other.exists()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
