"""The Spark engine computes the features of `build_features` and the scores of the local
`fraudflow score`, on a real local Spark session; bad input fails before any output exists."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyspark")

from fraudflow.cli import main  # noqa: E402
from pipelines.batch.spark.features import spark_features  # noqa: E402
from pipelines.batch.spark.read import read_transactions  # noqa: E402
from pipelines.batch.spark.score import score_with_spark  # noqa: E402
from pipelines.batch.spark.session import spark_session  # noqa: E402
from pipelines.data import DataValidationError, load_transactions  # noqa: E402
from pipelines.features import DAY_MS, build_features  # noqa: E402
from pipelines.mlflow.store import use_store  # noqa: E402
from pipelines.training.simulate import write_daily_parquet  # noqa: E402
from tests.support.models import train_and_register  # noqa: E402
from tests.support.processes import clean_env, free_port  # noqa: E402
from tests.support.settings import make_settings, write_config  # noqa: E402

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[1]
PRODUCTION = "models:/fraud-detector/Production"
MONTH_DAYS = 31
MAPPED = {
    "transaction_id": "TX_ID",
    "tx_datetime": "WHEN",
    "customer_id": "CARD",
    "terminal_id": "TERMINAL",
    "tx_amount": "AMOUNT",
    "tx_fraud": "FRAUD",
}


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory):
    with spark_session(
        "local[2]",
        app_name="fraudflow-tests",
        config={
            "spark.sql.shuffle.partitions": "4",
            "spark.local.dir": str(tmp_path_factory.mktemp("spark-local")),
        },
    ) as session:
        jvm = session.sparkContext._gateway.proc
        yield session
    # the session's JVM ends with it, not with the test process
    assert jvm.poll() is not None


def _edge_cases(month: pd.DataFrame, delay_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows that make the month hard: (rows read before the month's own rows of their day,
    rows in a file read after every day file)."""
    rng = np.random.default_rng(7)
    picks = month.iloc[rng.choice(len(month), size=300, replace=False)]
    # ties on time: the card's and the terminal's other transactions at the same millisecond,
    # earlier in input order (same day file, before) and later (a file read last)
    before = picks.iloc[:150].assign(
        transaction_id=lambda f: "tie-before-" + f["transaction_id"],
        tx_amount=lambda f: f["tx_amount"] * 4.0,
    )
    after = picks.iloc[150:].assign(
        transaction_id=lambda f: "tie-after-" + f["transaction_id"],
        tx_amount=lambda f: f["tx_amount"] * 0.5,
    )
    # first transactions of new cards, at terminals exactly `delay` after a fraud there and
    # one millisecond before that: a label matures on the boundary, not a millisecond earlier
    frauds = month[month["tx_fraud"] == 1].head(40)
    delay = pd.Timedelta(milliseconds=delay_days * DAY_MS)
    boundary = []
    for offset, tag in ((delay, "on"), (delay - pd.Timedelta(milliseconds=1), "before")):
        boundary.append(
            frauds.assign(
                transaction_id=lambda f, tag=tag: f"late-{tag}-" + f["transaction_id"],
                customer_id=lambda f, tag=tag: f"new-{tag}-" + f["transaction_id"],
                tx_datetime=frauds["tx_datetime"] + offset,
                tx_fraud=0,
            )
        )
    late = pd.concat(boundary)
    late = late[late["tx_datetime"] <= month["tx_datetime"].max()]
    return pd.concat([before, late]), after


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame):
    """A registered model, and the last month of the small world with edge cases as a folder of
    daily Parquet files plus one extra file."""
    root = tmp_path_factory.mktemp("spark-world")
    settings = make_settings(root / "work")
    train_and_register(small_transactions, settings, production="serve it")
    start = small_transactions["tx_datetime"].max().normalize() - pd.Timedelta(days=MONTH_DAYS)
    month = small_transactions[small_transactions["tx_datetime"] >= start]
    early, late = _edge_cases(month, settings.features.label_delay_days)
    folder = root / "month"
    write_daily_parquet(pd.concat([early, month], ignore_index=True), folder)
    late.to_parquet(folder / "zz-resent-late.parquet", index=False)
    return settings, folder


def _spark_features(spark, folder: Path, settings) -> pd.DataFrame:
    frame, _ = read_transactions(spark, folder, settings.data.columns)
    got = spark_features(frame, settings.features).toPandas()
    return got.drop(columns="tx_datetime").set_index("transaction_id")


def _local_features(folder: Path, settings) -> pd.DataFrame:
    transactions = load_transactions(folder, settings.data.columns)
    expected = build_features(transactions, settings.features)
    expected.index = pd.Index(transactions["transaction_id"], name="transaction_id")
    return expected


def _assert_same_features(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert len(got) == len(expected) and set(got.index) == set(expected.index)
    got = got.loc[expected.index, list(expected.columns)]
    for name in expected.columns:
        np.testing.assert_allclose(
            got[name].to_numpy(dtype=np.float64),
            expected[name].to_numpy(dtype=np.float64),
            rtol=1e-9,
            atol=1e-9,
            equal_nan=True,
            err_msg=name,
        )


def test_spark_features_equal_build_features(spark, world) -> None:
    settings, folder = world
    expected = _local_features(folder, settings)
    _assert_same_features(_spark_features(spark, folder, settings), expected)
    # the month holds what the parity is about
    ties = expected.index.str.startswith("tie-")
    assert ties.sum() == 300
    assert (expected["customer_nb_tx_1d"] == 1).any()  # first transactions of a card
    assert expected["amount_to_customer_avg_30d"].isna().any()
    on = expected[expected.index.str.startswith("late-on-")]
    before = expected[expected.index.str.startswith("late-before-")]
    assert len(on) and len(before)
    # a fraud label counts from exactly `delay` after its transaction
    assert (on["terminal_risk_1d"] > 0).all()
    assert on["terminal_risk_1d"].sum() > before["terminal_risk_1d"].sum()
    assert (expected.filter(like="customer_nb_large_amounts").sum() > 0).all()
    # the month's ties and late labels reach the quantiles and the decayed risk too
    assert (on["terminal_risk_half_life_7d"] > 0).all()
    assert on["terminal_risk_half_life_7d"].sum() > before["terminal_risk_half_life_7d"].sum()
    assert (expected.loc[ties, "amount_to_customer_max_30d"].dropna() > 0).all()
    assert expected["amount_to_customer_p90_30d"].isna().any()


def test_csv_with_mapped_columns_and_no_labels(spark, world, tmp_path: Path) -> None:
    settings, folder = world
    settings = settings.model_copy(
        update={"data": settings.data.model_copy(update={"columns": MAPPED})}
    )
    week = load_transactions(folder)
    week = week[week["tx_datetime"] >= week["tx_datetime"].max() - pd.Timedelta(days=7)]
    week = week.drop(columns="tx_fraud").rename(columns=MAPPED)
    csv = tmp_path / "csv"
    csv.mkdir()
    half = len(week) // 2
    week.iloc[:half].to_csv(csv / "a.csv", index=False)
    week.iloc[half:].to_csv(csv / "b.csv.gz", index=False)
    expected = _local_features(csv, settings)
    assert (expected.filter(like="terminal_risk") == 0).all().all()
    _assert_same_features(_spark_features(spark, csv, settings), expected)


def test_a_resent_id_is_refused_and_nothing_is_written(spark, world, tmp_path: Path) -> None:
    settings, folder = world
    data = tmp_path / "resent"
    data.mkdir()
    day = sorted(folder.glob("20*.parquet"))[-1]
    frame = pd.read_parquet(day)
    frame.to_parquet(data / "a.parquet", index=False)
    frame.head(2).to_parquet(data / "b.parquet", index=False)  # the same ids sent again
    resent = repr(str(frame["transaction_id"].iloc[0]))
    with pytest.raises(DataValidationError, match="duplicated") as local:
        load_transactions(data)
    assert resent in str(local.value)
    output = tmp_path / "scores"
    with pytest.raises(DataValidationError, match="duplicated") as failure:
        score_with_spark(spark, settings, data, output, "models:/fraud-detector/Production")
    assert resent in str(failure.value) and "b.parquet" in str(failure.value)
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["resent"]  # no temporary folder left


def test_spark_scores_equal_the_local_score_command(world, tmp_path: Path) -> None:
    """`fraudflow score --engine spark` in its own process (its own JVM) writes, per day, the
    probabilities the local engine writes."""
    settings, folder = world
    config = write_config(tmp_path / "config.yaml", settings)
    local = tmp_path / "local.parquet"
    assert (
        main(["score", "--config", str(config), "--data", str(folder), "--output", str(local)]) == 0
    )
    output = tmp_path / "spark-scores"
    command = [sys.executable, "-m", "fraudflow.cli", "score", "--engine", "spark"]
    command += ["--master", "local[2]", "--config", str(config), "--data", str(folder)]
    done = subprocess.run(
        command + ["--output", str(output)],
        env=clean_env({"PYTHONPATH": str(REPO)}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = pd.read_parquet(local).set_index("transaction_id")["fraud_probability"]
    scores = pd.read_parquet(output)
    assert len(scores) == len(expected)
    got = scores.set_index("transaction_id")["fraud_probability"].loc[expected.index]
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-9, atol=1e-12)
    days = sorted(p.name for p in output.iterdir() if p.is_dir())
    assert len(days) == MONTH_DAYS + 1 and all(d.startswith("day=20") for d in days)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.yaml",
        "local.parquet",
        "spark-scores",
    ]


@pytest.fixture
def failing_run(tmp_path: Path, world) -> Iterator[tuple[Path, Path, Path]]:
    """A config, a data folder to spoil, and the output path a failed run must not create."""
    settings, folder = world
    data = tmp_path / "data"
    data.mkdir()
    for day in sorted(folder.glob("20*.parquet"))[:2]:
        (data / day.name).write_bytes(day.read_bytes())
    yield write_config(tmp_path / "config.yaml", settings), data, tmp_path / "scores"
    assert not (tmp_path / "scores").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _score(config: Path, data: Path, output: Path, *extra: str) -> int:
    args = ["score", "--engine", "spark", "--config", str(config), "--data", str(data)]
    return main(args + ["--output", str(output), "--model-uri", "models:/fraud-detector/1", *extra])


def test_an_unreachable_master_is_named(failing_run, capsys) -> None:
    config, data, output = failing_run
    master = f"spark://127.0.0.1:{free_port()}"
    assert _score(config, data, output, "--master", master) == 2
    assert f"Spark master {master} cannot be reached" in capsys.readouterr().err


def test_a_missing_column_is_named(failing_run, capsys) -> None:
    config, data, output = failing_run
    day = sorted(data.iterdir())[0]
    pd.read_parquet(day).rename(columns={"tx_amount": "amount"}).to_parquet(day, index=False)
    assert _score(config, data, output) == 2
    err = capsys.readouterr().err
    assert "column 'tx_amount' is missing from 1 of 2 files" in err and day.name in err


def test_an_unreadable_file_is_named(failing_run, capsys) -> None:
    config, data, output = failing_run
    (data / "2099-01-01.parquet").write_bytes(b"PAR1 not really parquet")
    assert _score(config, data, output) == 2
    assert "2099-01-01.parquet: could not be read" in capsys.readouterr().err


def test_csv_output_and_local_master_are_refused(failing_run, capsys) -> None:
    config, data, output = failing_run
    assert _score(config, data, output.with_suffix(".csv")) == 2
    assert "Parquet folder" in capsys.readouterr().err
    args = ["score", "--config", str(config), "--data", str(data), "--output", str(output)]
    assert main(args + ["--master", "local[2]"]) == 2
    assert "--master is for --engine spark" in capsys.readouterr().err


PYFUNC_LOADED = "the logged pyfunc was loaded"


@contextmanager
def exploding_pyfunc(settings) -> Iterator[list[Path]]:
    """Every logged model's pyfunc code in the artifact store replaced, for the block, by code
    that raises as soon as anything loads it; yields the replaced files."""
    originals = {
        code: code.read_bytes()
        for mlmodel in Path(settings.workdir).rglob("MLmodel")
        for code in mlmodel.parent.glob("*.py")
    }
    try:
        for code in originals:
            code.write_text(f"raise RuntimeError({PYFUNC_LOADED!r})\n")
        yield list(originals)
    finally:
        for code, content in originals.items():
            code.write_bytes(content)


def test_the_spark_engine_scores_from_the_booster_and_never_loads_the_pyfunc(
    spark, world, tmp_path: Path
) -> None:
    """With the logged pyfunc's code made to raise when loaded (MLflow's loader now fails),
    the Spark engine still scores what the local engine scores: it builds the checked booster
    from its text on the executors and runs nothing logged with the model."""
    settings, folder = world
    data = tmp_path / "data"
    data.mkdir()
    for day in sorted(folder.glob("20*.parquet"))[-3:]:
        (data / day.name).write_bytes(day.read_bytes())
    config = write_config(tmp_path / "config.yaml", settings)
    local = tmp_path / "local.parquet"
    assert (
        main(["score", "--config", str(config), "--data", str(data), "--output", str(local)]) == 0
    )
    with exploding_pyfunc(settings) as replaced:
        assert replaced
        use_store(settings)
        with pytest.raises(Exception) as loading:
            mlflow.pyfunc.load_model(PRODUCTION)
        assert PYFUNC_LOADED in repr(loading.value) + repr(loading.value.__cause__)
        result = score_with_spark(spark, settings, data, tmp_path / "spark", PRODUCTION)
    expected = pd.read_parquet(local).set_index("transaction_id")["fraud_probability"]
    assert result.rows == len(expected)
    scores = pd.read_parquet(result.output).set_index("transaction_id")["fraud_probability"]
    got = scores.loc[expected.index]
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-9, atol=1e-12)
