"""SQLite stores (the embedded MLflow store, the online state): copied through SQLite's online
backup API, which gives a consistent snapshot while other processes keep writing."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

BUSY_TIMEOUT_S = 30.0


def backup_sqlite(source: Path, target: Path) -> Path:
    """A consistent copy of the database `source` at `target` (a new file), taken while
    writers go on: the backup API restarts its copy when a writer changes a page it copied."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with closing(
        sqlite3.connect(
            f"{Path(source).resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S
        )
    ) as src:
        with closing(sqlite3.connect(target)) as dst:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside
    return target


def check_integrity(path: Path) -> None:
    """Raise ValueError unless SQLite finds the database file sound (`quick_check`: the
    structure of every page, without integrity_check's index-by-index cross-check, which takes
    minutes on a large online state; the file's checksum was verified before)."""
    with closing(sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)) as db:
        result = db.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        raise ValueError(f"{path} fails SQLite's integrity check: {result}")


def replace_text(path: Path, old: str, new: str) -> int:
    """Replace `old` by `new` in every text value of every table (MLflow keeps absolute
    artifact locations in its runs, experiments, logged models and model versions); returns
    the number of values changed."""
    changed = 0
    with closing(sqlite3.connect(path)) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for column in [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]:
                cursor = db.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                    f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0',
                    (old, new, old),
                )
                changed += cursor.rowcount
        db.commit()
    return changed


def is_empty_sqlite(path: Path) -> bool:
    """True when there is no database at `path` (or an empty file). Judged from the file alone:
    opening a database, even read-only, touches its shared-memory file."""
    return not Path(path).is_file() or Path(path).stat().st_size == 0
