"""Hundreds of damaged or crafted boosters made from a trained one: each is refused with a
message by the check that runs before LightGBM parses a booster, or, if it passes, loads and
scores in a child process exactly as LightGBM itself scores it (no crash, no hang).

The mutations that make LightGBM abort, read out of bounds, loop forever or load a smaller
model (FIELD-NOTES, "LightGBM under gunicorn") are all in the must-refuse set: without the
check this test fails.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from pipelines.booster_check import BoosterLimits, BoosterTextError, check_booster_text

FEATURES = [f"feature_{i}" for i in range(8)]
LIMITS = BoosterLimits(max_bytes=4 * 1024 * 1024, max_trees=1000, max_leaves=4096)
ROOT = Path(__file__).resolve().parent.parent
# generous: the child loads every survivor; a hang is a failure, a slow machine is not
CHILD_TIMEOUT_S = 900


@dataclass(frozen=True)
class Mutant:
    name: str
    text: str
    # True: the check must refuse it; False: it may pass, and then must score as LightGBM does
    must_refuse: bool


@dataclass
class Booster:
    """A booster text in three parts, to be changed and written back."""

    header: list[str]
    trees: list[list[str]]  # each: its key=value lines
    trailer: str

    @classmethod
    def parse(cls, text: str) -> "Booster":
        head, _, rest = text.partition("\nTree=")
        body, _, trailer = ("Tree=" + rest).partition("end of trees\n")
        trees = []
        for block in re.split(r"\n\n\n(?=Tree=|$)", body.strip("\n") + "\n\n\n"):
            if block:
                trees.append(block.split("\n")[1:])
        return cls(head.split("\n"), trees, "end of trees\n" + trailer)

    def render(self, fix_sizes: bool = True, numbers: list[int] | None = None) -> str:
        blocks = [
            f"Tree={i if numbers is None else numbers[i]}\n" + "\n".join(lines) + "\n\n\n"
            for i, lines in enumerate(self.trees)
        ]
        header = list(self.header)
        if fix_sizes:
            header = [
                (
                    f"tree_sizes={' '.join(str(len(b)) for b in blocks)}"
                    if line.startswith("tree_sizes=")
                    else line
                )
                for line in header
            ]
        return "\n".join(header) + "\n" + "".join(blocks) + self.trailer

    def copy(self) -> "Booster":
        return Booster(list(self.header), [list(t) for t in self.trees], self.trailer)

    def field(self, tree: int, key: str) -> list[str]:
        for line in self.trees[tree]:
            if line.startswith(f"{key}="):
                value = line.partition("=")[2]
                return value.split(" ") if value else []
        raise KeyError(key)

    def set_field(self, tree: int, key: str, values: list[str] | str) -> "Booster":
        value = values if isinstance(values, str) else " ".join(values)
        lines = self.trees[tree]
        for i, line in enumerate(lines):
            if line.startswith(f"{key}="):
                lines[i] = f"{key}={value}"
        return self

    def set_header(self, key: str, value: str) -> "Booster":
        self.header = [f"{key}={value}" if h.startswith(f"{key}=") else h for h in self.header]
        return self


@pytest.fixture(scope="module")
def trained() -> str:
    """A small binary booster with NaN-aware splits and default directions both ways."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3000, len(FEATURES)))
    x[::4, 1] = np.nan
    x[::9, 5] = 0.0
    y = (x[:, 0] + np.nan_to_num(x[:, 1]) * 0.5 + rng.normal(size=3000) > 0.8).astype(int)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 15, "verbose": -1, "num_threads": 1, "seed": 1},
        lgb.Dataset(x, y, feature_name=FEATURES),
        num_boost_round=24,
    )
    return booster.model_to_string()


def mutants(text: str) -> list[Mutant]:
    base = Booster.parse(text)
    assert base.render() == text  # the parts write back to the very text
    rng = random.Random(19)
    out: list[Mutant] = []
    trees = len(base.trees)
    nodes = [len(base.field(t, "split_feature")) for t in range(trees)]

    def add(name: str, booster_or_text: Booster | str, must_refuse: bool = True) -> None:
        rendered = booster_or_text if isinstance(booster_or_text, str) else booster_or_text.render()
        out.append(Mutant(name, rendered, must_refuse))

    def some_trees(k: int) -> list[int]:
        return sorted(rng.sample([t for t in range(trees) if nodes[t] > 1], k))

    # split features outside the rows
    for t in some_trees(6):
        for bad in (len(FEATURES), len(FEATURES) + 1, 1000, -1, 2**31, 99999999999):
            b = base.copy()
            values = b.field(t, "split_feature")
            values[rng.randrange(nodes[t])] = str(bad)
            add(f"tree {t} split_feature {bad}", b.set_field(t, "split_feature", values))
    # child indices outside the tree, cycles, self-loops, shared children
    for t in some_trees(8):
        n = nodes[t]
        for side in ("left_child", "right_child"):
            for label, bad in (
                ("internal past the end", lambda node: n),
                ("far internal", lambda node: 1_000_000),
                ("leaf past the end", lambda node: ~(n + 1)),
                ("far leaf", lambda node: -1_000_000),
                ("self-loop", lambda node: node),
                ("to the root", lambda node: 0),
                ("int overflow", lambda node: 2**31),
            ):
                b = base.copy()
                values = b.field(t, side)
                node = rng.randrange(n)
                values[node] = str(bad(node))
                add(f"tree {t} {side}[{node}] {label}", b.set_field(t, side, values))
        b = base.copy()
        left, right = b.field(t, "left_child"), b.field(t, "right_child")
        node = rng.randrange(n)
        right[node] = left[node]
        add(f"tree {t} both children of {node} the same", b.set_field(t, "right_child", right))
        if n > 2:  # a child pointing at its parent's parent: a cycle
            b = base.copy()
            left = b.field(t, "left_child")
            parents = {
                int(c): p
                for p in range(n)
                for c in (left[p], b.field(t, "right_child")[p])
                if int(c) > 0
            }
            child = max(parents)
            left[child] = str(parents[child])
            add(f"tree {t} cycle {child}->{parents[child]}", b.set_field(t, "left_child", left))
    # non-finite or unreadable numbers
    for t in some_trees(6):
        for key, count in (
            ("threshold", nodes[t]),
            ("leaf_value", nodes[t] + 1),
            ("split_gain", nodes[t]),
            ("internal_value", nodes[t]),
            ("leaf_weight", nodes[t] + 1),
        ):
            for bad in ("nan", "inf", "-inf", "1e999", "NaN", "0x1p3", "1_0", ""):
                b = base.copy()
                values = b.field(t, key)
                values[rng.randrange(count)] = bad
                add(f"tree {t} {key} {bad!r}", b.set_field(t, key, values))
        add(f"tree {t} shrinkage nan", base.copy().set_field(t, "shrinkage", "nan"))
    # a binary model only, one tree per iteration, one class
    for key, value in (
        ("num_class", "3"),
        ("num_class", "0"),
        ("num_tree_per_iteration", "3"),
        ("num_tree_per_iteration", "0"),
        ("label_index", "1"),
        ("objective", "multiclass num_class:3"),
        ("objective", "regression"),
        ("objective", "binary sigmoid:0"),
        ("objective", "binary sigmoid:-1"),
        ("objective", "binary sigmoid:nan"),
        ("objective", "lambdarank"),
        ("version", "v3"),
        ("max_feature_idx", str(len(FEATURES))),
        ("max_feature_idx", "3"),
        ("max_feature_idx", "-1"),
        ("max_feature_idx", "99999999"),
        ("feature_names", " ".join(FEATURES[:-1])),
        ("feature_names", " ".join(FEATURES + ["extra"])),
        ("feature_infos", "none"),
    ):
        add(f"header {key}={value}", base.copy().set_header(key, value))
    multiclass = base.copy().set_header("num_class", "4").set_header("num_tree_per_iteration", "4")
    add("multiclass header", multiclass.set_header("objective", "multiclass num_class:4"))
    for i, line in enumerate(base.header[1:], start=1):
        if line:
            b = base.copy()
            del b.header[i]
            add(f"header without {line.split('=')[0]}", b)
            b = base.copy()
            b.header.insert(i, line)
            add(f"header with {line.split('=')[0]} twice", b)
    for extra in ("average_output", "monotone_constraints=1 0 0 0 0 0 0 0", "x=1", "garbage"):
        b = base.copy()
        b.header.insert(3, extra)
        add(f"header line {extra!r}", b)
    # sizes: huge counts, arrays that disagree with num_leaves, limits
    for t in some_trees(4):
        leaves = nodes[t] + 1
        for bad in (leaves + 1, leaves - 1, 0, -3, 10**6, 2**31, 99999999999):
            add(f"tree {t} num_leaves {bad}", base.copy().set_field(t, "num_leaves", str(bad)))
        b = base.copy()
        add(
            f"tree {t} one split too many",
            b.set_field(t, "split_feature", [*b.field(t, "split_feature"), "0"]),
        )
        add(f"tree {t} num_cat 1", base.copy().set_field(t, "num_cat", "1"))
        add(f"tree {t} is_linear 1", base.copy().set_field(t, "is_linear", "1"))
        add(
            f"tree {t} decision_type 1", base.copy().set_field(t, "decision_type", ["1"] * nodes[t])
        )
        add(
            f"tree {t} decision_type 12",
            base.copy().set_field(t, "decision_type", ["12"] * nodes[t]),
        )
        b = base.copy()
        b.trees[t] = [line for line in b.trees[t] if not line.startswith("leaf_value=")]
        add(f"tree {t} without leaf_value", b)
        b = base.copy()
        b.trees[t].insert(3, b.trees[t][3])
        add(f"tree {t} a field twice", b)
        b = base.copy()
        b.trees[t].insert(5, "cat_threshold=1")
        add(f"tree {t} an extra field", b)
        b = base.copy()
        b.trees[t].insert(5, "no equals sign here")
        add(f"tree {t} a line without '='", b)
    for bad_sizes in ("99999999999", "0", "-5", "1 2 3", " ".join(["100"] * 5000)):
        add(
            f"tree_sizes {bad_sizes[:20]}",
            base.copy().set_header("tree_sizes", bad_sizes).render(fix_sizes=False),
        )
    add(
        "tree_sizes off by one",
        base.render(fix_sizes=False).replace("tree_sizes=", "tree_sizes=1", 1),
    )
    b = base.copy()
    sizes = b.render().split("tree_sizes=", 1)[1].split("\n", 1)[0].split(" ")
    sizes[0], sizes[1] = sizes[1], sizes[0]
    add("tree_sizes swapped", b.set_header("tree_sizes", " ".join(sizes)).render(fix_sizes=False))
    # duplicated and dropped trees
    for t in some_trees(4):
        b = base.copy()
        b.trees.insert(t, list(b.trees[t]))
        add(f"tree {t} twice, sizes kept", b.render(fix_sizes=False))
        add(
            f"tree {t} twice, numbers kept",
            b.render(numbers=list(range(t + 1)) + list(range(t, trees))),
        )
        add(f"tree {t} twice, renumbered", b, must_refuse=False)  # a bigger model, well formed
        b = base.copy()
        del b.trees[t]
        add(f"tree {t} dropped, sizes kept", b.render(fix_sizes=False))
        add(f"tree {t} dropped, renumbered", b, must_refuse=False)
    # a file cut short, anywhere up to its last tree's end, and in what follows the trees
    end_of_trees = text.index("end of trees\n") + len("end of trees\n")
    last_tree = text.rindex("\nTree=")
    cuts = sorted(
        {rng.randrange(5, end_of_trees) for _ in range(50)}
        | {rng.randrange(last_tree, end_of_trees) for _ in range(20)}
        | {end_of_trees - 1, end_of_trees - 4, text.index("end of trees"), 4, 5}
    )
    for cut in cuts:
        add(f"cut at byte {cut} of {len(text)}", text[:cut])
    for cut in sorted({rng.randrange(end_of_trees, len(text)) for _ in range(8)}):
        add(f"cut at byte {cut} (after the trees)", text[:cut], must_refuse=False)
    # one token changed, anywhere in the trees: many refused, the rest well formed
    tokens = [
        m for m in re.finditer(r"[^\s=]+", text) if text.index("\nTree=") < m.start() < end_of_trees
    ]
    for i in range(160):
        token = rng.choice(tokens)
        replacement = rng.choice(
            [
                token.group() + "9",
                token.group()[:-1] or "x",
                "x",
                "-",
                "1e400",
                str(rng.randrange(-40, 40)),
                rng.choice(tokens).group(),
            ]
        )
        mutated = text[: token.start()] + replacement + text[token.end() :]
        add(
            f"token {i} at {token.start()}: {token.group()[:20]!r} -> {replacement[:20]!r}",
            mutated,
            False,
        )
    # one digit changed in the trees: the sizes still agree, so the fields themselves are read
    digits = [i for i in range(text.index("\nTree="), end_of_trees) if text[i].isdigit()]
    for i in range(80):
        at = rng.choice(digits)
        digit = rng.choice([d for d in "0123456789" if d != text[at]])
        line = text[text.rindex("\n", 0, at) + 1 : at].split("=")[0]
        add(
            f"digit {i} of {line} at {at}: {text[at]} -> {digit}",
            text[:at] + digit + text[at + 1 :],
            False,
        )
    # a valid file with its lines reordered inside a tree: well formed
    b = base.copy()
    b.trees[0] = list(reversed(b.trees[0]))
    add("tree 0 fields reversed", b, must_refuse=False)
    return out


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import lightgbm as lgb
    from pipelines.model import FraudScorer
    from serving.online_scorer import OnlineScorer

    folder, features = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(3)
    rows = np.vstack([
        np.zeros((1, features)),
        np.full((1, features), np.nan),
        rng.normal(size=(40, features)),
        rng.normal(scale=1e6, size=(4, features)),
    ])
    rows[5::3, 1] = np.nan
    for name in json.loads(open(f"{folder}/survivors.json").read()):
        print("loading", name, flush=True)
        scorer = FraudScorer.load(f"{folder}/{name}.txt", f"{folder}/meta.json")
        native = lgb.Booster(model_file=f"{folder}/{name}.txt")
        online = OnlineScorer(scorer)
        want = native.predict(rows, num_threads=1)
        want_contrib = native.predict(rows, pred_contrib=True, num_threads=1)
        assert np.array_equal(scorer.predict_rows(rows), want, equal_nan=True), name
        assert np.array_equal(online.probabilities([rows[0]]), want[:1]), name
        assert np.array_equal(scorer.contribution_rows(rows), want_contrib, equal_nan=True), name
        assert np.array_equal(
            np.array(online.contributions([rows[0]])), want_contrib[:1, :-1]
        ), name
        print("scored", name, flush=True)
    print("done", flush=True)
    """)


def test_every_mutated_booster_is_refused_or_scores_as_lightgbm(trained, tmp_path) -> None:
    cases = mutants(trained)
    assert len(cases) >= 300, len(cases)
    assert len({m.text for m in cases}) > 0.9 * len(cases)
    check_booster_text(trained.encode(), LIMITS, features=len(FEATURES))  # the original passes
    survivors: list[Mutant] = []
    not_refused: list[str] = []
    for mutant in cases:
        try:
            check_booster_text(mutant.text.encode(), LIMITS, features=len(FEATURES))
        except BoosterTextError as exc:
            assert str(exc), mutant.name  # a message naming what is wrong
            continue
        if mutant.must_refuse:
            not_refused.append(mutant.name)
        else:
            survivors.append(mutant)
    assert not not_refused, f"{len(not_refused)} not refused: {not_refused[:20]}"
    refused = len(cases) - len(survivors)
    assert refused >= 250, refused
    assert survivors  # some well-formed changes pass, and are then scored below

    # every survivor loads and scores in a child process exactly as LightGBM does, with no crash
    for i, mutant in enumerate(survivors):
        (tmp_path / f"s{i}.txt").write_text(mutant.text)
    (tmp_path / "meta.json").write_text(json.dumps({"features": FEATURES, "threshold": 0.5}))
    (tmp_path / "survivors.json").write_text(json.dumps([f"s{i}" for i in range(len(survivors))]))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), str(len(FEATURES))],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    last = done.stdout.strip().splitlines()[-1:] or ["nothing"]
    loading = [
        line.split(" ", 1)[1] for line in done.stdout.splitlines() if line.startswith("loading")
    ]
    culprit = survivors[int(loading[-1][1:])].name if loading else "none"
    assert done.returncode == 0 and last == [
        "done"
    ], f"the child ended with {done.returncode} on {culprit}: {done.stderr[-2000:]}"
