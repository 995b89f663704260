"""MLflow artifacts of the embedded store: the local artifact folder copied as files, and the
absolute paths MLflow wrote into them relocated (a tracking server's artifacts go through
`pipelines.mlflow.artifacts`)."""

from __future__ import annotations

from pathlib import Path

from pipelines.backup.confined import copy_tree

# MLmodel files (and any small text file) that name the artifact folder by its absolute path
_TEXT_LIMIT = 1_000_000


def copy_local(source: Path, target: Path, shown_as: str) -> list[dict[str, str]]:
    """Copy the artifact folder (files are written once by MLflow and never changed after);
    symlinks and special files in it are skipped, never followed: returns them."""
    return copy_tree(source, target, shown_as)


def relocate_files(folder: Path, old: str, new: str) -> int:
    """Rewrite `old` to `new` in the small text files under `folder` (MLmodel's artifact_path
    is an absolute file:// URI); returns the number of files changed."""
    changed = 0
    for path in Path(folder).rglob("*"):
        if not path.is_file() or path.stat().st_size > _TEXT_LIMIT:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if old in text:
            path.write_text(text.replace(old, new))
            changed += 1
    return changed
