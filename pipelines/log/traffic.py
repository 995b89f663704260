"""Production data for monitoring and retraining: late labels (from /feedback, through the
online state, and from labelled files) joined with the prediction log."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pandas as pd

from pipelines.live_evidence import shared_rows
from pipelines.log.reader import MonitoringInputError, read_predictions
from pipelines.log.record import log_folder
from pipelines.settings import RAW_COLUMNS, Settings
from pipelines.state.factory import received_labels


def labels_from_file(path: Path, columns: dict[str, str]) -> pd.DataFrame:
    """Labels from a CSV or Parquet file (or a folder of them) with a transaction id and a label
    column (named through the config's column mapping)."""
    path = Path(path)
    files = sorted(path.glob("*.parquet")) + sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise MonitoringInputError(f"label file not found: {path}")
    id_column = columns.get("transaction_id", "transaction_id")
    label_column = columns.get("tx_fraud", "tx_fraud")
    frames = []
    for file in files:
        data = pd.read_parquet(file) if file.suffix == ".parquet" else pd.read_csv(file)
        missing = [c for c in (id_column, label_column) if c not in data]
        if missing:
            raise MonitoringInputError(f"label file {file} has no column {missing}")
        labels = pd.to_numeric(data[label_column], errors="coerce")
        bad = ~labels.isin([0, 1])
        if bad.any():
            raise MonitoringInputError(
                f"label file {file}: column {label_column!r} must be 0 or 1; "
                f"{int(bad.sum())} rows are not"
            )
        frames.append(
            pd.DataFrame(
                {"transaction_id": data[id_column].astype(str), "tx_fraud": labels.astype(int)}
            )
        )
    return pd.concat(frames, ignore_index=True)


def attach_labels(predictions: pd.DataFrame, sources: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """`tx_fraud` joined by transaction id (NaN where no label has arrived); a later source
    overrides an earlier one (a corrected label)."""
    if not sources or all(s.empty for s in sources):
        return predictions.assign(tx_fraud=float("nan"))
    labels = pd.concat(sources, ignore_index=True).drop_duplicates("transaction_id", keep="last")
    mapping = labels.set_index("transaction_id")["tx_fraud"]
    return predictions.assign(tx_fraud=predictions["transaction_id"].map(mapping).astype(float))


def label_sources(settings: Settings, extra_files: Sequence[Path] = ()) -> list[pd.DataFrame]:
    """Late labels: /feedback's (in the online state), then the configured label files, then
    `extra_files` (a later source corrects an earlier one)."""
    files = [settings.under_workdir(f) for f in settings.monitoring.label_files]
    files += [Path(f) for f in extra_files]
    return [received_labels(settings)] + [labels_from_file(f, settings.data.columns) for f in files]


def production_transactions(
    settings: Settings, extra_label_files: Sequence[Path] = ()
) -> pd.DataFrame:
    """Every logged production transaction whose label has arrived, in the raw schema."""
    logged = read_predictions(log_folder(settings), features=())
    if logged.empty:
        return pd.DataFrame(columns=[*RAW_COLUMNS, "tx_fraud"])
    labelled = attach_labels(logged, label_sources(settings, extra_label_files))
    labelled = labelled.loc[labelled["tx_fraud"].notna().to_numpy(), [*RAW_COLUMNS, "tx_fraud"]]
    return labelled.astype({"tx_fraud": int})


def live_traffic(
    settings: Settings,
    since: datetime,
    until: datetime,
    champion_version: str,
    challenger_version: str,
    extra_label_files: Sequence[Path] = (),
) -> pd.DataFrame:
    """The transactions logged in [since, until) that the champion version and the challenger
    version both scored (shadow or canary), late labels joined (NaN where none arrived yet):
    the input of `pipelines.live_evidence.compare_live`."""
    logged = read_predictions(log_folder(settings), since, until, features=(), roles=True)
    shared = shared_rows(logged, champion_version, challenger_version)
    if shared.empty:
        return shared
    labelled = attach_labels(
        shared.drop(columns="tx_fraud"), label_sources(settings, extra_label_files)
    )
    return labelled[shared.columns]
