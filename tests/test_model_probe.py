"""A new model is tried in a child process before a worker parses it, and the single-row fast
path's buffers are as long as LightGBM says one row's answer is."""

from __future__ import annotations

import re
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from pipelines.booster_check import BoosterLimits
from pipelines.model import FraudScorer
from serving.model_probe import ModelProbe, ProbeError, probe_key, run_probe
from serving.online_scorer import OnlineScorer, SingleRowContributions, SingleRowProbability

FEATURES = ("a", "b", "c", "d")
# generous: a spawned interpreter importing LightGBM on a busy machine
TIMEOUT_S = 600.0


def train(params: dict, labels) -> lgb.Booster:
    rows = np.random.default_rng(0).normal(size=(600, len(FEATURES)))
    rows[::5, 2] = np.nan
    return lgb.train(
        {"num_leaves": 4, "verbose": -1, "num_threads": 1, **params},
        lgb.Dataset(rows, labels(rows), feature_name=list(FEATURES)),
        num_boost_round=4,
    )


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("probe")
    booster = train({"objective": "binary"}, lambda x: (x[:, 0] > 0).astype(int))
    saved = FraudScorer(booster, FEATURES, 0.5).save(folder)
    return Path(saved["booster"]), Path(saved["meta"])


def test_good_files_pass_once_and_the_verdict_is_kept(model_files, tmp_path) -> None:
    booster, meta = model_files
    probe = ModelProbe(BoosterLimits(), TIMEOUT_S, tmp_path / "probed")
    probe.require(booster, meta)
    assert (tmp_path / "probed" / f"{probe_key(booster, meta)}.json").is_file()
    # another worker of the replica reads the verdict: no child, even with no time at all
    ModelProbe(BoosterLimits(), 1e-9, tmp_path / "probed").require(booster, meta)


def test_refused_files_name_the_reason(model_files, tmp_path) -> None:
    booster, meta = model_files
    bad = tmp_path / "booster.txt"
    bad.write_text(re.sub(r"split_feature=\d", "split_feature=9", booster.read_text(), count=1))
    (tmp_path / "meta.json").write_text(meta.read_text().replace('"booster_sha256"', '"x"'))
    with pytest.raises(ProbeError, match="split_feature"):
        run_probe(bad, tmp_path / "meta.json", BoosterLimits(), TIMEOUT_S)
    with pytest.raises(ProbeError, match="SHA-256"):  # meta.json's hash of the booster
        run_probe(bad, meta, BoosterLimits(), TIMEOUT_S)


def test_a_child_that_does_not_finish_in_time_is_stopped(model_files) -> None:
    """No interpreter starts, imports LightGBM and scores in a microsecond: the deadline passes
    and the child is killed, as an endless loop in the native code would be."""
    with pytest.raises(ProbeError, match="did not load and score .* within"):
        run_probe(*model_files, BoosterLimits(), 1e-6)


def test_fast_path_buffers_are_sized_by_lightgbm(model_files) -> None:
    scorer = FraudScorer.load(*model_files)
    assert SingleRowProbability.output_size(scorer.booster, SingleRowProbability.PREDICT_TYPE) == 1
    assert (
        SingleRowContributions.output_size(scorer.booster, SingleRowContributions.PREDICT_TYPE)
        == len(FEATURES) + 1
    )
    online = OnlineScorer(scorer)
    assert online.row_probability is not None and online.row_contributions is not None
    # a model answering more values per row than the caller reads is kept off the fast path
    multiclass = train(
        {"objective": "multiclass", "num_class": 3},
        lambda x: (x[:, 0] > 0).astype(int) + (x[:, 1] > 0).astype(int),
    )
    with pytest.raises(ValueError, match="answers 3 values per row"):
        SingleRowProbability(FraudScorer(multiclass, FEATURES, 0.5))
    with pytest.raises(ValueError, match="answers 15 values per row"):
        SingleRowContributions(FraudScorer(multiclass, FEATURES, 0.5))
