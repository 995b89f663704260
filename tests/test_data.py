"""Tests for pipelines.data: reading, validating and writing raw transactions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.data import (
    DataValidationError,
    load_transactions,
    validate_transactions,
    write_transactions,
)
from pipelines.settings import LABEL_COLUMN, RAW_COLUMNS

ALL_COLUMNS = list(RAW_COLUMNS) + [LABEL_COLUMN]
UPPER = {c: c.upper() for c in ALL_COLUMNS}


def make_frame(n: int = 6, start: str = "2018-04-01", first_id: int = 0) -> pd.DataFrame:
    """A clean frame in our names: int ids, timestamps one hour apart, small amounts."""
    return pd.DataFrame(
        {
            "transaction_id": np.arange(first_id, first_id + n, dtype=np.int64),
            "tx_datetime": pd.date_range(start, periods=n, freq="h"),
            "customer_id": np.arange(n, dtype=np.int64) % 3,
            "terminal_id": np.arange(n, dtype=np.int64) % 4 + 100,
            "tx_amount": np.round(np.linspace(1.5, 90.25, n), 2),
            "tx_fraud": np.arange(n) % 2,
        }
    )


def csv_frame(n: int = 6) -> pd.DataFrame:
    """Like make_frame but every value as text, so single cells can be made bad."""
    frame = make_frame(n)
    frame["tx_datetime"] = frame["tx_datetime"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    return frame.astype(str)


def problem_about(exc: pytest.ExceptionInfo[DataValidationError], phrase: str) -> str:
    """The single problem line containing `phrase` (also checks it is in the message)."""
    matches = [p for p in exc.value.problems if phrase in p]
    assert len(matches) == 1, f"expected one problem about {phrase!r}, got {exc.value.problems}"
    assert matches[0] in str(exc.value)
    return matches[0]


def assert_rows(problem: str, count: int) -> None:
    assert re.search(rf"(?<![\d.]){count} rows?\b", problem), f"{count} rows not in {problem!r}"


def assert_normalized(frame: pd.DataFrame, with_label: bool = True) -> None:
    expected = ALL_COLUMNS if with_label else list(RAW_COLUMNS)
    assert list(frame.columns) == expected
    for col in ("transaction_id", "customer_id", "terminal_id"):
        assert frame[col].dtype == object
        assert all(type(v) is str for v in frame[col])
    assert frame["tx_datetime"].dtype == np.dtype("datetime64[ns]")
    assert frame["tx_amount"].dtype == np.float64
    if with_label:
        assert frame["tx_fraud"].dtype == np.int8
    assert isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0
    assert frame["tx_datetime"].is_monotonic_increasing


# ----------------------------------------------------------------------------- reading


def test_reads_csv_file_with_int_ids_as_plain_text(tmp_path: Path) -> None:
    source = make_frame(6)
    source.to_csv(tmp_path / "tx.csv", index=False)

    result = load_transactions(tmp_path / "tx.csv")

    assert_normalized(result)
    assert len(result) == 6
    assert result["transaction_id"].tolist() == ["0", "1", "2", "3", "4", "5"]
    assert result["terminal_id"].tolist() == ["100", "101", "102", "103", "100", "101"]
    assert (result["tx_datetime"] == source["tx_datetime"]).all()
    assert result["tx_amount"].tolist() == source["tx_amount"].tolist()
    assert result["tx_fraud"].tolist() == [0, 1, 0, 1, 0, 1]


def test_reads_parquet_file(tmp_path: Path) -> None:
    source = make_frame(5)
    source["tx_datetime"] = source["tx_datetime"].astype("datetime64[us]")
    source.to_parquet(tmp_path / "tx.parquet", index=False)

    result = load_transactions(tmp_path / "tx.parquet", require_labels=True)

    assert_normalized(result)
    assert result["transaction_id"].tolist() == ["0", "1", "2", "3", "4"]
    assert (result["tx_datetime"].to_numpy() == source["tx_datetime"].to_numpy()).all()


def test_label_column_is_optional_unless_required(tmp_path: Path) -> None:
    make_frame(3).drop(columns="tx_fraud").to_csv(tmp_path / "tx.csv", index=False)

    result = load_transactions(tmp_path / "tx.csv")

    assert_normalized(result, with_label=False)
    with pytest.raises(DataValidationError) as exc:
        load_transactions(tmp_path / "tx.csv", require_labels=True)
    assert "tx_fraud" in problem_about(exc, "missing label column")


def test_reads_folder_of_mixed_daily_files_in_filename_order(tmp_path: Path) -> None:
    folder = tmp_path / "transactions"
    folder.mkdir()
    day1, day2, day3 = (
        make_frame(4, "2018-04-01", 0),
        make_frame(3, "2018-04-02", 10),
        make_frame(5, "2018-04-03", 20),
    )
    # Names sort in day order; write them in another order to prove sorting is by name.
    day3.to_csv(folder / "2018-04-03.csv.gz", index=False)
    day1.to_csv(folder / "2018-04-01.csv", index=False)
    day2.to_parquet(folder / "2018-04-02.parquet", index=False)
    (folder / "_SUCCESS").write_text("")
    (folder / ".part.crc").write_text("x")

    result = load_transactions(folder, require_labels=True)

    assert_normalized(result)
    assert len(result) == 4 + 3 + 5
    expected_ids = [str(i) for i in [*range(0, 4), *range(10, 13), *range(20, 25)]]
    assert result["transaction_id"].tolist() == expected_ids
    assert result["tx_datetime"].dt.day.tolist() == [1] * 4 + [2] * 3 + [3] * 5


def test_uppercase_column_mapping_is_all_that_is_needed(tmp_path: Path) -> None:
    make_frame(4).rename(columns=UPPER).to_csv(tmp_path / "tx.csv", index=False)

    result = load_transactions(tmp_path / "tx.csv", columns=UPPER, require_labels=True)

    assert_normalized(result)
    assert result["transaction_id"].tolist() == ["0", "1", "2", "3"]


def test_unmapped_file_names_are_reported_with_the_columns_found(tmp_path: Path) -> None:
    make_frame(2).rename(columns=UPPER).to_parquet(tmp_path / "tx.parquet", index=False)

    with pytest.raises(DataValidationError) as exc:
        load_transactions(tmp_path / "tx.parquet")

    assert len([p for p in exc.value.problems if "missing required column" in p]) == 5
    assert "TRANSACTION_ID" in problem_about(exc, "the files have columns")


def test_extra_columns_are_dropped_and_mapping_renames(tmp_path: Path) -> None:
    frame = make_frame(3).rename(columns={"tx_amount": "AMOUNT_EUR"})
    frame["tx_amount"] = -1.0  # a column with our name but not the mapped one: must be ignored
    frame["comment"] = "x"
    frame.to_csv(tmp_path / "tx.csv", index=False)

    result = load_transactions(tmp_path / "tx.csv", columns={"tx_amount": "AMOUNT_EUR"})

    assert list(result.columns) == ALL_COLUMNS
    assert result["tx_amount"].tolist() == make_frame(3)["tx_amount"].tolist()


def test_leading_zeros_in_ids_survive_csv_and_parquet(tmp_path: Path) -> None:
    frame = csv_frame(3)
    frame["transaction_id"] = ["007", "0008", "9"]
    frame["customer_id"] = ["00042", "00042", "042"]
    frame["terminal_id"] = ["0", "00", "000"]
    frame.to_csv(tmp_path / "tx.csv", index=False)
    frame.to_parquet(tmp_path / "tx.parquet", index=False)

    for name in ("tx.csv", "tx.parquet"):
        result = load_transactions(tmp_path / name)
        assert result["transaction_id"].tolist() == ["007", "0008", "9"]
        assert result["customer_id"].tolist() == ["00042", "00042", "042"]
        assert result["terminal_id"].tolist() == ["0", "00", "000"]


def test_every_row_is_kept_and_order_is_stable_by_datetime(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 2000
    frame = make_frame(n)
    # Few distinct times in random order: many ties, whose file order must be kept.
    frame["tx_datetime"] = pd.Timestamp("2018-04-01") + pd.to_timedelta(
        rng.integers(0, 20, n), unit="min"
    )
    frame.to_csv(tmp_path / "tx.csv", index=False)

    result = load_transactions(tmp_path / "tx.csv")

    assert len(result) == n
    expected = frame.sort_values("tx_datetime", kind="mergesort")
    assert result["transaction_id"].tolist() == expected["transaction_id"].astype(str).tolist()
    assert result["tx_datetime"].is_monotonic_increasing


def test_tz_aware_datetimes_become_naive_utc(tmp_path: Path) -> None:
    frame = make_frame(2)
    frame["tx_datetime"] = pd.to_datetime(["2018-04-01 10:00", "2018-04-01 12:30"]).tz_localize(
        "Europe/Paris"
    )
    frame.to_parquet(tmp_path / "tx.parquet", index=False)
    text = csv_frame(3)
    text["tx_datetime"] = ["2018-04-01T10:00:00+02:00", "2018-04-01T09:00:00Z", "2018-04-01 07:30"]
    text.to_csv(tmp_path / "tx.csv", index=False)

    from_parquet = load_transactions(tmp_path / "tx.parquet")
    from_csv = load_transactions(tmp_path / "tx.csv")

    assert from_parquet["tx_datetime"].dt.tz is None
    assert from_parquet["tx_datetime"].tolist() == [
        pd.Timestamp("2018-04-01 08:00"),
        pd.Timestamp("2018-04-01 10:30"),
    ]
    # 10:00+02:00 = 08:00Z, 09:00Z, naive 07:30 kept as is; then sorted by time.
    assert from_csv["transaction_id"].tolist() == ["2", "0", "1"]
    assert from_csv["tx_datetime"].tolist() == [
        pd.Timestamp("2018-04-01 07:30"),
        pd.Timestamp("2018-04-01 08:00"),
        pd.Timestamp("2018-04-01 09:00"),
    ]


# ----------------------------------------------------------------------------- bad input

BAD_CELLS = [
    # (column, cells to overwrite {row: text}, phrase in the problem, affected rows)
    ("transaction_id", {1: "", 4: ""}, "missing or empty", 2),
    ("customer_id", {0: "  ", 2: "", 5: ""}, "missing or empty", 3),
    ("tx_datetime", {3: ""}, "missing or empty", 1),
    ("tx_amount", {0: "", 1: ""}, "missing or empty", 2),
    ("tx_datetime", {0: "2018-13-45", 2: "yesterday", 5: "01/04/2018"}, "unparsable dates", 3),
    ("tx_amount", {1: "12,50", 3: "abc"}, "non-numeric", 2),
    ("tx_amount", {2: "-0.01", 4: "-5"}, "negative", 2),
    ("tx_amount", {0: "inf", 3: "-inf"}, "non-finite", 2),
    ("transaction_id", {1: "0", 2: "0", 4: "3"}, "duplicated", 5),
    ("tx_fraud", {0: "yes", 2: "", 3: "2"}, "labels other than 0/1", 3),
]


@pytest.mark.parametrize("column, cells, phrase, count", BAD_CELLS)
def test_bad_values_are_reported_with_column_and_row_count(
    tmp_path: Path, column: str, cells: dict[int, str], phrase: str, count: int
) -> None:
    frame = csv_frame(6)
    for row, text in cells.items():
        frame.loc[row, column] = text
    frame.to_csv(tmp_path / "tx.csv", index=False)

    with pytest.raises(DataValidationError) as exc:
        load_transactions(tmp_path / "tx.csv")

    problem = problem_about(exc, phrase)
    assert f"'{column}'" in problem
    assert_rows(problem, count)
    assert len(exc.value.problems) == 1, exc.value.problems


def test_problem_names_the_file_column_and_example_rows(tmp_path: Path) -> None:
    frame = csv_frame(6)
    frame.loc[[1, 2, 4, 5], "tx_amount"] = ["-1", "-2", "-3", "-4"]
    frame.rename(columns=UPPER).to_csv(tmp_path / "tx.csv", index=False)

    with pytest.raises(DataValidationError) as exc:
        load_transactions(tmp_path / "tx.csv", columns=UPPER)

    problem = problem_about(exc, "negative")
    assert "'tx_amount' (file column 'TX_AMOUNT')" in problem
    assert_rows(problem, 4)
    assert "row 1: -1.0, row 2: -2.0, row 4: -3.0" in problem  # at most 3 examples
    assert "row 5" not in problem


def test_missing_required_column_is_reported_with_file_name(tmp_path: Path) -> None:
    make_frame(3).rename(columns=UPPER).drop(columns="CUSTOMER_ID").to_csv(
        tmp_path / "tx.csv", index=False
    )

    with pytest.raises(DataValidationError) as exc:
        load_transactions(tmp_path / "tx.csv", columns=UPPER)

    problem = problem_about(exc, "missing required column")
    assert "'customer_id' (file column 'CUSTOMER_ID')" in problem


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    frame = csv_frame(6).drop(columns="terminal_id")
    frame.loc[0, "tx_datetime"] = "not a date"
    frame.loc[[1, 2], "tx_amount"] = ["-3", "x"]
    frame.loc[[3, 4], "transaction_id"] = ["5", "5"]
    frame.loc[5, "tx_fraud"] = "maybe"
    frame.to_csv(tmp_path / "tx.csv", index=False)

    with pytest.raises(DataValidationError) as exc:
        load_transactions(tmp_path / "tx.csv")

    assert "'terminal_id'" in problem_about(exc, "missing required column")
    assert_rows(problem_about(exc, "unparsable dates"), 1)
    assert_rows(problem_about(exc, "negative"), 1)
    assert_rows(problem_about(exc, "non-numeric"), 1)
    assert_rows(problem_about(exc, "duplicated"), 3)  # rows 3, 4 and the original "5"
    assert_rows(problem_about(exc, "labels other than 0/1"), 1)
    problem_about(exc, "the files have columns")  # a hint, since a column is missing
    assert len(exc.value.problems) == 7
    assert str(tmp_path / "tx.csv") in str(exc.value)


def test_duplicates_across_files_name_file_and_row(tmp_path: Path) -> None:
    make_frame(3, "2018-04-01", 0).to_csv(tmp_path / "a.csv", index=False)
    make_frame(3, "2018-04-02", 2).to_parquet(tmp_path / "b.parquet", index=False)

    with pytest.raises(DataValidationError) as exc:
        load_transactions(tmp_path)

    problem = problem_about(exc, "duplicated")
    assert_rows(problem, 2)
    assert "'2' (a.csv row 2, b.parquet row 0)" in problem


def test_folder_files_must_share_columns(tmp_path: Path) -> None:
    make_frame(2, "2018-04-01", 0).to_csv(tmp_path / "a.csv", index=False)
    make_frame(3, "2018-04-02", 10).drop(columns="tx_fraud").to_csv(tmp_path / "b.csv", index=False)

    with pytest.raises(DataValidationError) as exc:
        load_transactions(tmp_path)

    assert "b.csv" in problem_about(exc, "is missing from 1 of 2 files")
    assert_rows(problem_about(exc, "labels other than 0/1"), 3)


def test_validate_transactions_rejects_numbers_as_dates_and_bad_types() -> None:
    frame = make_frame(4)
    frame["tx_datetime"] = frame["tx_datetime"].astype("int64")  # epoch ns: never guessed
    frame["tx_amount"] = [1.0, np.nan, 2.0, -np.inf]
    frame["tx_fraud"] = [0.0, 1.0, np.nan, 0.5]

    with pytest.raises(DataValidationError) as exc:
        validate_transactions(frame, source="request")

    assert_rows(problem_about(exc, "unparsable dates"), 4)
    assert_rows(problem_about(exc, "'tx_amount': 1 row with missing"), 1)
    assert_rows(problem_about(exc, "non-finite"), 1)
    assert "negative" not in str(exc.value)  # -inf is reported once, as non-finite
    assert_rows(problem_about(exc, "labels other than 0/1"), 2)
    assert "in request" in str(exc.value)


def test_validate_transactions_normalizes_in_memory_frames() -> None:
    frame = make_frame(3).iloc[::-1]  # reversed, with a non-default index
    frame["terminal_id"] = [7.0, 8.0, 9.0]  # floats holding integers, e.g. from JSON
    frame["tx_fraud"] = [True, False, True]
    frame["extra"] = 1

    result = validate_transactions(frame)

    assert_normalized(result)
    assert result["transaction_id"].tolist() == ["0", "1", "2"]
    assert result["terminal_id"].tolist() == ["9", "8", "7"]
    assert result["tx_fraud"].tolist() == [1, 0, 1]


# ----------------------------------------------------------------------------- paths


def test_missing_path_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_transactions(tmp_path / "nowhere")


def test_folder_without_data_files_names_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "empty_day_folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "_SUCCESS").write_text("")

    with pytest.raises(DataValidationError, match="empty_day_folder"):
        load_transactions(folder)


def test_unsupported_extension_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "tx.json").write_text("{}")
    with pytest.raises(ValueError, match=r"tx\.json"):
        load_transactions(tmp_path / "tx.json")

    make_frame(2).to_csv(tmp_path / "day.csv", index=False)
    with pytest.raises(DataValidationError, match=r"tx\.json"):
        load_transactions(tmp_path)  # a folder with an unknown file is not silently skipped


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    make_frame(2).to_csv(tmp_path / "ok.csv", index=False)

    with pytest.raises(DataValidationError) as exc:
        load_transactions(tmp_path)

    assert "broken.parquet" in problem_about(exc, "could not be read")


# ----------------------------------------------------------------------------- writing


@pytest.mark.parametrize("name", ["out.csv", "out.csv.gz", "out.parquet"])
def test_write_transactions_round_trips(tmp_path: Path, name: str) -> None:
    frame = make_frame(5)
    frame["customer_id"] = ["001", "002", "001", "010", "100"]
    original = validate_transactions(frame)
    path = tmp_path / "nested" / name

    write_transactions(original, path)
    write_transactions(original, path)  # overwriting is fine

    pd.testing.assert_frame_equal(load_transactions(path), original)
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temporary file left


def test_write_transactions_failure_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    write_transactions(validate_transactions(make_frame(3)), path)
    before = path.read_bytes()
    unwritable = pd.DataFrame({"mixed": [1, "a", 2.5]})  # pyarrow refuses mixed objects

    with pytest.raises(Exception):
        write_transactions(unwritable, path)

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


def test_write_transactions_rejects_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"out\.json"):
        write_transactions(make_frame(1), tmp_path / "out.json")
    assert list(tmp_path.iterdir()) == []
