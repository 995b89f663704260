"""A consistent copy of the prediction log for a backup, taken while writers append."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

from pipelines.log.reader import whole_lines
from pipelines.log.record import FILE_PREFIX, FILE_SUFFIX, PARQUET_SUFFIX


def snapshot_log(folder: Path, target: Path, skipped: list[Path] | None = None) -> list[Path]:
    """Copy the log to `target` while writers append: every Parquet file whole, every JSON-lines
    file up to its last complete record (a record being written is not yet acknowledged). A
    file compacted while this runs is taken from its Parquet copy, one deleted past its
    retention is left out. A log file that is a symlink or a special file is never followed:
    it is added to `skipped`. Returns the copies."""
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(Path(folder).glob(f"{FILE_PREFIX}*")):
        if not path.name.endswith((FILE_SUFFIX, PARQUET_SUFFIX)) or path.name.startswith("."):
            continue
        try:
            regular = stat.S_ISREG(path.lstat().st_mode)
        except FileNotFoundError:
            continue
        if not regular:
            if skipped is not None:
                skipped.append(path)
            continue
        destination = target / path.name
        if destination.exists():
            continue  # its Parquet copy, taken when the JSON file vanished under us
        try:
            data = whole_lines(path)[0] if path.name.endswith(FILE_SUFFIX) else None
            if data is None:
                shutil.copyfile(path, destination)
            else:
                destination.write_bytes(data.to_pybytes())
        except FileNotFoundError:
            compacted = path.with_suffix(PARQUET_SUFFIX)
            if not compacted.is_file():
                continue  # deleted past its retention (`fraudflow prune`) while this ran
            shutil.copyfile(compacted, target / compacted.name)
            destination = target / compacted.name
        copied.append(destination)
    return copied
