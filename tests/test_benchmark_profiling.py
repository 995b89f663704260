"""The benchmark's profile rows name frames that exist: each of our rows points at a file of
the repository, and a py-spy raw stack through every frame counts in every row."""

from __future__ import annotations

from pathlib import Path

from benchmarks.env import ROOT
from benchmarks.profiling import PROFILE_FRAMES, aggregate_profile, frame
from pipelines.state.sqlite import SqliteOnlineState


def test_our_frames_are_derived_from_the_functions_where_they_live() -> None:
    assert frame(SqliteOnlineState.observe) == (
        "SqliteOnlineState.observe (pipelines/state/sqlite.py"
    )
    ours = [needle for _, needle in PROFILE_FRAMES if needle.endswith(".py") and " (" in needle]
    for needle in ours:
        path = needle.split(" (", 1)[1]
        if not path.startswith(("flask/", "gunicorn/")):
            assert (ROOT / path).is_file(), needle


def test_a_stack_through_every_frame_counts_in_every_row(tmp_path: Path) -> None:
    stack = ";".join(f"{needle}:{n})" for n, (_, needle) in enumerate(PROFILE_FRAMES, 1))
    raw = tmp_path / "py-spy.txt"
    raw.write_text(f"{stack} 7\n")
    shares = aggregate_profile([raw])
    assert shares["samples"] == 7
    assert all(share == 1.0 for _, share in shares["frames"]), shares["frames"]
