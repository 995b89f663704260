"""A strict check of a LightGBM text booster, in Python, before LightGBM's own parser sees it.

LightGBM's parser trusts its input: a tree it cannot read throws inside an OpenMP region and
aborts the process, a split on a feature past the end of a row reads outside it when a row is
scored, a child index pointing back up the tree loops forever, and a file cut inside its last
tree loads as a smaller model. So the text is read here first, as data, and only the shape
fraudflow trains is accepted: one binary model (one class, one tree per iteration), numerical
splits only, every index in range, every tree a tree (each node reached exactly once from the
root), every number finite, the sizes capped, the header's `tree_sizes` matching the tree
blocks, and `end of trees` where the last block ends.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

TREE_FIELDS = (
    "num_leaves",
    "num_cat",
    "split_feature",
    "split_gain",
    "threshold",
    "decision_type",
    "left_child",
    "right_child",
    "leaf_value",
    "leaf_weight",
    "leaf_count",
    "internal_value",
    "internal_weight",
    "internal_count",
    "is_linear",
    "shrinkage",
)
HEADER_REQUIRED = (
    "version",
    "num_class",
    "num_tree_per_iteration",
    "label_index",
    "max_feature_idx",
    "objective",
    "feature_names",
    "feature_infos",
    "tree_sizes",
)
# decision_type bits: 1 categorical (never trained here), 2 default left, 4|8 missing type
# (0 none, 1 zero, 2 NaN)
DECISION_TYPES = frozenset({0, 2, 4, 6, 8, 10})
_INT = re.compile(r"-?[0-9]{1,10}")
_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")
_INTS = re.compile(rf"{_INT.pattern}(?: {_INT.pattern})*")
_FLOATS = re.compile(rf"{_FLOAT.pattern}(?: {_FLOAT.pattern})*")
_OBJECTIVE = re.compile(r"binary sigmoid:(\S+)")
_NAME = re.compile(r"[^\s=\[\]:]+")
_FEATURE_INFO = re.compile(r"none|\[[^\s\]]+:[^\s\]]+\]")
_PARAMETER = re.compile(r"\[[a-z0-9_]+: [^\]\n]*\]")
INT32_MAX = 2**31 - 1


class BoosterTextError(ValueError):
    """A booster text that is not in the shape fraudflow trains; the message names where."""


@dataclass(frozen=True)
class BoosterLimits:
    """What a booster may weigh before it is refused unread."""

    max_bytes: int = 512 * 1024 * 1024
    max_trees: int = 100_000
    max_leaves: int = 131_072


@dataclass(frozen=True)
class BoosterShape:
    """What the check read: enough to compare with the metadata."""

    trees: int
    feature_names: tuple[str, ...]


def check_booster_text(
    data: bytes, limits: BoosterLimits = BoosterLimits(), features: int | None = None
) -> BoosterShape:
    """The shape of a booster text, or BoosterTextError naming the first thing wrong with it.

    `features`: the number of features the model must split on (the metadata's list)."""
    if len(data) > limits.max_bytes:
        raise BoosterTextError(f"{len(data):,} bytes, over the limit of {limits.max_bytes:,}")
    if not data.startswith(b"tree\n"):
        raise BoosterTextError("not a LightGBM text model (no 'tree' first line)")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise BoosterTextError(f"not ASCII text (byte {exc.start})") from exc
    if "\r" in text or "\x00" in text:
        raise BoosterTextError("carriage returns or NUL bytes in the text")
    start = text.find("\nTree=")
    if start < 0:
        raise BoosterTextError("no tree in the file")
    start += 1
    header = _header(text[len("tree\n") : start], limits, features)
    sizes = header.tree_sizes
    offset = start
    for index, size in enumerate(sizes):
        block = text[offset : offset + size]
        if len(block) != size:
            raise BoosterTextError(
                f"Tree={index}: the file ends {size - len(block):,} bytes into its "
                f"{size:,}-byte block (cut short)"
            )
        _tree(block, index, header.max_feature_idx, limits)
        offset += size
    if not text.startswith("end of trees\n", offset):
        found = text[offset : offset + 40].split("\n", 1)[0]
        raise BoosterTextError(
            f"'end of trees' expected after the {len(sizes)} trees of tree_sizes, found "
            f"{found!r}" + (" (the file is cut short)" if offset >= len(text) else "")
        )
    _trailer(text[offset + len("end of trees\n") :])
    return BoosterShape(trees=len(sizes), feature_names=header.feature_names)


@dataclass(frozen=True)
class _Header:
    max_feature_idx: int
    feature_names: tuple[str, ...]
    tree_sizes: tuple[int, ...]


def _header(text: str, limits: BoosterLimits, features: int | None) -> _Header:
    values: dict[str, str] = {}
    for line in text.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise BoosterTextError(f"header line {line[:60]!r} is not key=value")
        if key not in HEADER_REQUIRED:
            raise BoosterTextError(f"header: unknown key {key[:60]!r}")
        if key in values:
            raise BoosterTextError(f"header: {key} given twice")
        if "=" in value:
            raise BoosterTextError(f"header: {key} holds '='")
        values[key] = value
    missing = [key for key in HEADER_REQUIRED if key not in values]
    if missing:
        raise BoosterTextError(f"header: missing {', '.join(missing)}")
    if values["version"] != "v4":
        raise BoosterTextError(f"header: version {values['version'][:20]!r}, not v4")
    for key, want in (("num_class", 1), ("num_tree_per_iteration", 1), ("label_index", 0)):
        if _int(values[key], f"header: {key}") != want:
            raise BoosterTextError(f"header: {key}={values[key][:20]}, not {want} (binary model)")
    objective = _OBJECTIVE.fullmatch(values["objective"])
    if not objective:
        raise BoosterTextError(
            f"header: objective {values['objective'][:60]!r}, not 'binary sigmoid:<number>'"
        )
    if not _float(objective.group(1), "header: objective sigmoid") > 0:
        raise BoosterTextError("header: objective sigmoid must be positive")
    max_feature_idx = _int(values["max_feature_idx"], "header: max_feature_idx")
    if max_feature_idx < 0 or (features is not None and max_feature_idx != features - 1):
        raise BoosterTextError(
            f"header: max_feature_idx={max_feature_idx}, but the model has "
            f"{features if features is not None else 'no'} features"
        )
    names = tuple(values["feature_names"].split(" "))
    if len(names) != max_feature_idx + 1 or not all(_NAME.fullmatch(n) for n in names):
        raise BoosterTextError(
            f"header: feature_names holds {len(names)} names, not {max_feature_idx + 1} "
            "plain names"
        )
    infos = values["feature_infos"].split(" ")
    if len(infos) != max_feature_idx + 1 or not all(_FEATURE_INFO.fullmatch(i) for i in infos):
        raise BoosterTextError(
            f"header: feature_infos holds {len(infos)} entries, not {max_feature_idx + 1} "
            "numerical ranges"
        )
    raw_sizes = values["tree_sizes"].split(" ")
    if len(raw_sizes) > limits.max_trees:
        raise BoosterTextError(
            f"header: tree_sizes lists {len(raw_sizes):,} trees, over the limit of "
            f"{limits.max_trees:,}"
        )
    sizes = tuple(_int(s, f"header: tree_sizes[{i}]") for i, s in enumerate(raw_sizes))
    if any(size <= 0 for size in sizes):
        raise BoosterTextError("header: tree_sizes holds a size that is not positive")
    return _Header(max_feature_idx, names, sizes)


def _tree(block: str, index: int, max_feature_idx: int, limits: BoosterLimits) -> None:
    where = f"Tree={index}"
    first, _, rest = block.partition("\n")
    if first != where:
        raise BoosterTextError(
            f"tree_sizes: block {index} starts with {first[:40]!r}, not {where!r} "
            "(tree sizes and tree blocks disagree)"
        )
    body, blank, tail = rest.partition("\n\n")
    if not blank or tail.strip("\n"):
        raise BoosterTextError(
            f"{where}: its {len(block):,}-byte block (tree_sizes) is not key=value lines then "
            "blank lines (tree sizes and tree blocks disagree)"
        )
    values: dict[str, str] = {}
    for line in body.split("\n"):
        key, sep, value = line.partition("=")
        if not sep:
            raise BoosterTextError(f"{where}: line {line[:40]!r} is not key=value")
        if key not in TREE_FIELDS:
            raise BoosterTextError(f"{where}: unknown field {key[:40]!r}")
        if key in values:
            raise BoosterTextError(f"{where}: {key} given twice")
        values[key] = value
    missing = [key for key in TREE_FIELDS if key not in values]
    if missing:
        raise BoosterTextError(f"{where}: missing {', '.join(missing)}")
    leaves = _int(values["num_leaves"], f"{where}: num_leaves")
    if not 1 <= leaves <= limits.max_leaves:
        raise BoosterTextError(f"{where}: num_leaves={leaves}, not within 1..{limits.max_leaves:,}")
    if _int(values["num_cat"], f"{where}: num_cat") != 0:
        raise BoosterTextError(f"{where}: num_cat={values['num_cat']}: categorical splits")
    if _int(values["is_linear"], f"{where}: is_linear") != 0:
        raise BoosterTextError(f"{where}: is_linear={values['is_linear']}: linear leaves")
    _float(values["shrinkage"], f"{where}: shrinkage")
    nodes = leaves - 1

    def ints(key: str, count: int) -> list[int]:
        return _numbers(values[key], count, f"{where}: {key}", _INTS, _int)

    def floats(key: str, count: int) -> list[float]:
        return _numbers(values[key], count, f"{where}: {key}", _FLOATS, _float)

    split_feature = ints("split_feature", nodes)
    for node, feature in enumerate(split_feature):
        if not 0 <= feature <= max_feature_idx:
            raise BoosterTextError(
                f"{where}: split_feature[{node}]={feature}, outside 0..{max_feature_idx}"
            )
    for node, kind in enumerate(ints("decision_type", nodes)):
        if kind not in DECISION_TYPES:
            raise BoosterTextError(f"{where}: decision_type[{node}]={kind}, not a numerical split")
    for key in ("split_gain", "threshold", "internal_value", "internal_weight"):
        floats(key, nodes)
    floats("leaf_value", leaves)
    # LightGBM writes no leaf weight for a one-leaf tree
    floats("leaf_weight", 0 if leaves == 1 and not values["leaf_weight"] else leaves)
    for key, count in (("internal_count", nodes), ("leaf_count", leaves)):
        if any(c < 0 for c in ints(key, count)):
            raise BoosterTextError(f"{where}: {key} holds a negative count")
    _structure(where, leaves, ints("left_child", nodes), ints("right_child", nodes))


def _structure(where: str, leaves: int, left: list[int], right: list[int]) -> None:
    """Every internal node and every leaf reached exactly once from the root (node 0): a tree,
    with no cycle, no shared child and no index outside it."""
    if leaves == 1:
        return
    nodes = leaves - 1
    seen_nodes = [False] * nodes
    seen_leaves = [False] * leaves
    seen_nodes[0] = True
    stack = [0]
    while stack:
        node = stack.pop()
        for side, children in (("left_child", left), ("right_child", right)):
            child = children[node]
            if child >= 0:
                if child >= nodes:
                    raise BoosterTextError(
                        f"{where}: {side}[{node}]={child}, past the {nodes} internal nodes"
                    )
                if seen_nodes[child]:
                    raise BoosterTextError(
                        f"{where}: {side}[{node}]={child} reaches node {child} a second time "
                        "(a cycle or a shared node)"
                    )
                seen_nodes[child] = True
                stack.append(child)
            else:
                leaf = ~child
                if leaf >= leaves:
                    raise BoosterTextError(
                        f"{where}: {side}[{node}]={child} names leaf {leaf}, past the "
                        f"{leaves} leaves"
                    )
                if seen_leaves[leaf]:
                    raise BoosterTextError(
                        f"{where}: {side}[{node}]={child} reaches leaf {leaf} a second time"
                    )
                seen_leaves[leaf] = True
    if not all(seen_nodes) or not all(seen_leaves):
        raise BoosterTextError(
            f"{where}: {seen_nodes.count(False)} internal nodes and "
            f"{seen_leaves.count(False)} leaves are not reached from the root"
        )


def _trailer(text: str) -> None:
    """What LightGBM writes after the trees: importances, parameters, pandas categories."""
    section = None
    for line in text.split("\n"):
        if not line:
            continue
        if line in ("feature_importances:", "parameters:"):
            section = line
        elif line == "end of parameters":
            section = None
        elif line.startswith("pandas_categorical:"):
            if line != "pandas_categorical:null":
                raise BoosterTextError("pandas_categorical: categorical features")
            section = None
        elif section == "feature_importances:":
            name, sep, count = line.partition("=")
            if not sep or not _NAME.fullmatch(name) or not _INT.fullmatch(count):
                raise BoosterTextError(f"feature_importances: line {line[:40]!r}")
        elif section == "parameters:":
            if not _PARAMETER.fullmatch(line):
                raise BoosterTextError(f"parameters: line {line[:40]!r}")
            if line.startswith(("[objective: ", "[linear_tree: ")) and line not in (
                "[objective: binary]",
                "[linear_tree: 0]",
            ):
                raise BoosterTextError(f"parameters: {line[:40]} (not a plain binary model)")
        else:
            raise BoosterTextError(f"after the trees: unexpected line {line[:40]!r}")


def _numbers(raw: str, count: int, what: str, pattern: re.Pattern, one: Callable) -> list:
    """The `count` space-separated numbers of a field; one regular expression over the whole
    field on the common path, each value on its own only to name the one that is wrong."""
    items = raw.split(" ") if raw else []
    if len(items) != count:
        raise BoosterTextError(f"{what} holds {len(items)} values, not {count}")
    if raw and pattern.fullmatch(raw):
        values = [int(v) for v in items] if one is _int else [float(v) for v in items]
        if one is _int and -INT32_MAX <= min(values) and max(values) <= INT32_MAX:
            return values
        if one is _float and math.isfinite(sum(values)):  # no inf, so no overflow either
            return values
    return [one(v, f"{what}[{i}]") for i, v in enumerate(items)]


def _int(text: str, what: str) -> int:
    if not _INT.fullmatch(text):
        raise BoosterTextError(f"{what}: {text[:30]!r} is not an integer")
    value = int(text)
    if abs(value) > INT32_MAX:
        raise BoosterTextError(f"{what}: {value} is out of range")
    return value


def _float(text: str, what: str) -> float:
    if not _FLOAT.fullmatch(text):
        raise BoosterTextError(f"{what}: {text[:30]!r} is not a finite number")
    value = float(text)
    if not math.isfinite(value):
        raise BoosterTextError(f"{what}: {text[:30]!r} is not a finite number")
    return value
