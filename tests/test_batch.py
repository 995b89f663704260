"""Batch scoring on one machine: chunked streaming equal to the one-shot path bit for bit,
bounded history, the compiled (lleaves) scorer checked against the booster, atomic output."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from pipelines.batch.compiled import BINARY_FILE, BatchPredictor, batch_predictor, cache_key
from pipelines.batch.local import score_path, score_transactions
from pipelines.batch.streaming import OutOfOrderError, StreamingFeatures, history_ms
from pipelines.data import DataValidationError, load_transactions
from pipelines.features import (
    DAY_MS,
    build_features,
    build_features_carried,
    grouped_kahan_cumsum,
)
from pipelines.settings import FeatureSettings, Settings, SettingsError, load_settings
from pipelines.training.train import train_model
from tests.support.processes import clean_env
from tests.support.settings import make_settings, write_config
from tests.test_features import SETTINGS

REPO = Path(__file__).resolve().parent.parent

FEATURES = SETTINGS  # the feature tests' definitions: chunked must equal those


def awkward_stream(n: int, seed: int, days: int = 150) -> pd.DataFrame:
    """Time-ordered rows over `days` days (far past the 44-day history, so chunks drop rows):
    many ties on time (10-minute stamps), re-sent transaction ids, unknown labels, cards whose
    first transaction comes late, and cards with long histories (spend sums that round)."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, days * 86400, n) // 600 * 600)
    ids = np.array([f"t{i}" for i in range(n)], dtype=object)
    resent = rng.random(n) < 0.05
    ids[resent] = ids[rng.integers(0, n, resent.sum())]
    customers = rng.integers(0, 40, n).astype(str)
    late = seconds > (days - 20) * 86400
    customers[late & (rng.random(n) < 0.2)] = "newcomer"
    labels = (rng.random(n) < 0.1).astype(np.float64)
    labels[rng.random(n) < 0.2] = np.nan
    return pd.DataFrame(
        {
            "transaction_id": ids,
            "tx_datetime": pd.Timestamp("2018-04-01") + pd.to_timedelta(seconds, unit="s"),
            "customer_id": customers,
            "terminal_id": rng.integers(0, 25, n).astype(str),
            "tx_amount": rng.gamma(2.0, 30.0, n) * rng.choice([1.0, 1.0, 1.0, 6.0], n),
            "tx_fraud": labels,
        }
    )


def streamed(frame: pd.DataFrame, chunk_rows: int, settings: FeatureSettings = FEATURES):
    stream = StreamingFeatures(settings, parallel=True)
    parts, held = [], []
    for start in range(0, len(frame), chunk_rows):
        parts.append(stream.push(frame.iloc[start : start + chunk_rows]))
        held.append(stream.held_rows)
    return pd.concat(parts), stream, held


def assert_same_bits(expected: pd.DataFrame, got: pd.DataFrame) -> None:
    assert list(got.columns) == list(expected.columns)
    assert got.index.equals(expected.index)
    a, b = expected.to_numpy(np.float64), got.to_numpy(np.float64)
    assert np.array_equal(a.view(np.int64), b.view(np.int64)), np.nanmax(np.abs(a - b))


def test_grouped_kahan_cumsum_is_pandas_cumsum_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    # one long group runs past the vectorized ranks into the per-group tail
    codes = np.sort(np.r_[rng.integers(0, 300, 20_000), np.full(5_000, 7)])
    values = rng.gamma(2.0, 30.0, len(codes)) * 1.000000001
    values[rng.random(len(codes)) < 0.01] = np.nan
    expected = pd.Series(values).groupby(codes).cumsum().to_numpy()
    zeros = np.zeros(codes.max() + 1)
    running, _ = grouped_kahan_cumsum(values, codes, zeros, zeros)
    assert np.array_equal(expected, running, equal_nan=True)


@pytest.mark.parametrize("chunk_rows", [1, 97, 1_000, 4_000])
def test_chunked_features_equal_the_one_shot_features_exactly(chunk_rows: int) -> None:
    frame = awkward_stream(4_000 if chunk_rows > 1 else 600, seed=chunk_rows)
    one_shot = build_features(frame, FEATURES)
    chunked, _, _ = streamed(frame, chunk_rows)
    assert_same_bits(one_shot, chunked)


def test_parallel_features_equal_the_sequential_ones() -> None:
    frame = awkward_stream(3_000, seed=5)
    parallel, _ = build_features_carried(frame, FEATURES, parallel=True)
    assert_same_bits(build_features(frame, FEATURES), parallel)


def test_history_kept_between_chunks_is_bounded_by_the_feature_span() -> None:
    """Memory by design: after each chunk only the rows newer than the last one minus the
    features' span are held, whatever has been read before."""
    frame = awkward_stream(6_000, seed=11, days=300)
    chunk_rows = 500
    _, stream, held = streamed(frame, chunk_rows)
    times = frame["tx_datetime"].to_numpy(dtype="datetime64[ms]").astype(np.int64)
    span = history_ms(FEATURES)
    assert span == 44 * DAY_MS
    for index, rows in enumerate(held):
        last = times[min((index + 1) * chunk_rows, len(frame)) - 1]
        assert rows == int((times[: (index + 1) * chunk_rows] > last - span).sum())
    densest = max(int(((times > t - span) & (times <= t)).sum()) for t in times[::50])
    assert stream.peak_rows <= chunk_rows + densest < len(frame) / 2


def test_a_chunk_older_than_the_last_one_is_refused() -> None:
    frame = awkward_stream(300, seed=2)
    stream = StreamingFeatures(FEATURES)
    stream.push(frame.iloc[150:])
    with pytest.raises(OutOfOrderError, match="time order"):
        stream.push(frame.iloc[:150])


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame):
    root = tmp_path_factory.mktemp("batch")
    settings = make_settings(root / "work")
    return settings, train_model(small_transactions, settings).scorer


def with_batch(settings: Settings, **batch: object) -> Settings:
    return settings.model_copy(update={"batch": settings.batch.model_copy(update=batch)})


@pytest.mark.parametrize("chunk_rows", [2_500, 1_000_000])
def test_score_path_streams_daily_files_into_the_one_shot_scores(
    trained, small_data_dir: Path, small_transactions: pd.DataFrame, tmp_path: Path, chunk_rows
) -> None:
    settings, scorer = trained
    settings = with_batch(settings, chunk_rows=chunk_rows, threads=2)
    out = tmp_path / "scores.parquet"
    run = score_path(small_data_dir, out, scorer, settings, progress=False)
    expected = score_transactions(small_transactions, scorer, settings.features)
    got = pd.read_parquet(out)
    assert run.rows == len(expected) and run.engine == "booster" and run.threads == 2
    assert (run.chunks > 1) == (chunk_rows < len(expected))
    assert got["transaction_id"].tolist() == expected["transaction_id"].tolist()
    assert np.array_equal(got["fraud_probability"], expected["fraud_probability"])
    assert [p.name for p in tmp_path.iterdir()] == ["scores.parquet"]


def test_score_path_writes_csv_incrementally_with_one_header(
    trained, small_transactions: pd.DataFrame, tmp_path: Path
) -> None:
    settings, scorer = trained
    source = tmp_path / "in.csv"
    small_transactions.drop(columns="tx_fraud").to_csv(source, index=False)
    out = tmp_path / "out.csv.gz"
    run = score_path(source, out, scorer, with_batch(settings, chunk_rows=3_000), progress=False)
    got = pd.read_csv(out, dtype={"transaction_id": str})
    assert run.chunks > 1 and not run.labelled and len(got) == len(small_transactions)
    unlabelled = small_transactions.drop(columns="tx_fraud")
    expected = score_transactions(unlabelled, scorer, settings.features)
    assert np.allclose(got["fraud_probability"], expected["fraud_probability"], rtol=0, atol=1e-15)


def test_a_failed_run_leaves_no_output(trained, small_data_dir: Path, tmp_path: Path) -> None:
    settings, scorer = trained
    files = sorted(small_data_dir.glob("*.parquet"))
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for i, file in enumerate(files):  # names out of time order: the last day is read first
        (shuffled / f"{(i + 1) % len(files):04d}.parquet").write_bytes(file.read_bytes())
    out = tmp_path / "out" / "scores.parquet"
    with pytest.raises(DataValidationError, match="time order"):
        score_path(shuffled, out, scorer, with_batch(settings, chunk_rows=500), progress=False)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []

    broken = tmp_path / "broken.csv"
    load_transactions(files[0]).drop(columns="tx_amount").to_csv(broken, index=False)
    with pytest.raises(DataValidationError, match="tx_amount"):
        score_path(broken, out, scorer, settings, progress=False)
    assert not out.exists()


def test_compiled_scorer_is_built_once_checked_and_equal_to_the_booster(
    trained, small_data_dir: Path, tmp_path: Path
) -> None:
    settings, scorer = trained
    cache = tmp_path / "compiled"
    settings = with_batch(settings, compiled="lleaves", compiled_cache_dir=str(cache))
    out_compiled, out_booster = tmp_path / "c.parquet", tmp_path / "b.parquet"
    run = score_path(small_data_dir, out_compiled, scorer, settings, progress=False)
    assert run.engine == "lleaves"
    binary = cache / cache_key(scorer.booster.model_to_string()) / BINARY_FILE
    built = binary.stat().st_mtime_ns
    score_path(
        small_data_dir, out_booster, scorer, with_batch(settings, compiled="off"), progress=False
    )
    compiled = pd.read_parquet(out_compiled)["fraud_probability"].to_numpy()
    booster = pd.read_parquet(out_booster)["fraud_probability"].to_numpy()
    assert np.max(np.abs(compiled - booster)) <= 1e-9
    again = batch_predictor(scorer.booster, 1, "lleaves", cache)
    assert again.engine == "lleaves" and binary.stat().st_mtime_ns == built  # from the cache


def test_a_compiled_model_that_disagrees_falls_back_to_the_booster(
    trained, small_transactions: pd.DataFrame, tmp_path: Path, caplog
) -> None:
    """The check is real: a compiled model of another booster is refused on first use."""
    settings, scorer = trained
    matrix = build_features(small_transactions, settings.features).to_numpy(np.float64)
    other = lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 4, "seed": 1},
        lgb.Dataset(matrix, (np.arange(len(matrix)) % 3 == 0).astype(int)),
        num_boost_round=5,
    )
    wrong = batch_predictor(other, 1, "lleaves", tmp_path).compiled
    predictor = BatchPredictor(scorer.booster, 1, wrong)
    scores = predictor.predict(matrix)
    assert predictor.engine == "booster" and "using the booster" in caplog.text
    assert np.array_equal(scores, scorer.booster.predict(matrix, num_threads=1))


# ----------------------------------------------------------------------------- progress bars


def _run_on(stderr_tty: bool, command: list[str], cwd: Path) -> tuple[int, str]:
    """Run COMMAND with its stderr on a pseudo-terminal or a pipe; returns code and stderr."""
    env = clean_env({"PYTHONPATH": str(REPO)})
    if not stderr_tty:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=cwd, timeout=600
        )
        return done.returncode, done.stderr
    master, slave = pty.openpty()
    # a terminal of 24 x 120 (a fresh pseudo-terminal has no size: bars would be 0 wide)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=slave, env=env, cwd=cwd)
    os.close(slave)
    code = process.wait(timeout=600)
    reader.join(timeout=60)
    os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def test_warm_shows_a_bar_on_a_terminal_and_none_in_a_log(
    tmp_path: Path, small_data_dir: Path
) -> None:
    settings = make_settings(tmp_path / "work")
    config = write_config(tmp_path / "c.yaml", settings)
    command = [
        sys.executable, "-m", "fraudflow.cli", "warm", "--config", str(config),
        "--data", str(small_data_dir),
    ]  # fmt: skip
    code, logged = _run_on(False, command, tmp_path)
    assert code == 0 and "warming" not in logged and "\r" not in logged
    code, shown = _run_on(True, command, tmp_path)
    assert code == 0 and "warming: 100%" in shown


def test_batch_settings_default_to_every_core_and_name_a_bad_value() -> None:
    assert load_settings(environ={}).batch.resolved_threads == len(os.sched_getaffinity(0))
    assert load_settings(environ={}).batch.compiled == "off"
    single = load_settings(environ={"FRAUDFLOW__BATCH__THREADS": "1"})
    assert single.batch.resolved_threads == 1
    with pytest.raises(SettingsError, match="batch.compiled"):
        load_settings(environ={"FRAUDFLOW__BATCH__COMPILED": "llvm"})
    with pytest.raises(SettingsError, match="batch.chunk_rows"):
        load_settings(environ={"FRAUDFLOW__BATCH__CHUNK_ROWS": "0"})


def test_time_ordered_input_takes_the_fast_sort_with_the_same_bits() -> None:
    """Time-ordered input is sorted by entity alone (a radix sort); any other order by the
    three-key sort: both give the same features, bit for bit."""
    frame = awkward_stream(3_000, seed=8).drop_duplicates("tx_datetime")
    shuffled = frame.sample(frac=1.0, random_state=0)
    assert_same_bits(
        build_features(shuffled, FEATURES).loc[frame.index], build_features(frame, FEATURES)
    )
