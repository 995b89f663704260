"""The booster compiled to machine code with lleaves (LLVM), for batch scoring.

A compiled model is built once per model file and cached under a key made of the model text's
SHA-256, the lleaves version and the host CPU (code built for one CPU may not run on another),
so a new model version, a new lleaves or another machine each get their own build. Before a
compiled model scores anything its results are checked against the booster's on the first
rows it is given: a difference above `TOLERANCE` (or a build that fails) is reported and the
booster is used instead. Serving never uses this: one row at a time gains little from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import lightgbm as lgb
import numpy as np

log = logging.getLogger(__name__)

TOLERANCE = 1e-9
CHECK_ROWS = 20_000
MODEL_FILE = "model.txt"
BINARY_FILE = "model.so"
MANIFEST_FILE = "manifest.json"


class CompileError(RuntimeError):
    """A compiled model that could not be built or loaded, or whose results differ."""


def cache_key(model_text: str) -> str:
    """The cache folder name of a model: its text hash, the lleaves version, the host CPU."""
    from llvmlite import binding

    digest = hashlib.sha256(model_text.encode()).hexdigest()[:32]
    cpu = binding.get_host_cpu_name()
    version = metadata.version("lleaves")
    return f"{digest}-lleaves{version}-{cpu}"


def build(booster: lgb.Booster, cache_dir: Path, label: str = "") -> "object":
    """The lleaves model of a booster: loaded from the cache, or compiled into it atomically."""
    import lleaves

    text = booster.model_to_string()
    folder = Path(cache_dir) / cache_key(text)
    binary = folder / BINARY_FILE
    model_file = folder / MODEL_FILE
    if not binary.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        log.info("compiling the model with lleaves into %s (once per model)", folder)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as work:
            tmp_model = Path(work) / MODEL_FILE
            tmp_model.write_text(text)
            tmp_binary = Path(work) / BINARY_FILE
            try:
                lleaves.Model(model_file=str(tmp_model)).compile(cache=str(tmp_binary))
            except Exception as exc:  # LLVM reports failures as many exception types
                raise CompileError(f"lleaves could not compile the model: {exc}") from exc
            os.replace(tmp_model, model_file)
            (folder / MANIFEST_FILE).write_text(
                json.dumps({"model": label, "trees": booster.num_trees()})
            )
            os.replace(tmp_binary, binary)  # last: its presence means the build is complete
    model = lleaves.Model(model_file=str(model_file))
    try:
        model.compile(cache=str(binary))
    except Exception as exc:
        raise CompileError(f"the compiled model {binary} does not load: {exc}") from exc
    return model


@dataclass
class BatchPredictor:
    """Probabilities for float matrices in feature order, on `threads` threads.

    With `compiled` set, the first matrix is scored by both the compiled model and the booster;
    the compiled model is kept only if they agree within TOLERANCE.
    """

    booster: lgb.Booster
    threads: int
    compiled: object | None = None
    checked: bool = field(default=False, init=False)

    @property
    def engine(self) -> str:
        return "lleaves" if self.compiled is not None else "booster"

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        if self.compiled is not None and not self.checked:
            self._check(matrix)
        if self.compiled is not None:
            return self.compiled.predict(matrix, n_jobs=self.threads)
        return self.booster.predict(matrix, num_threads=self.threads)

    def _check(self, matrix: np.ndarray) -> None:
        sample = matrix[:CHECK_ROWS]
        with_missing = sample[: min(len(sample), 100)].copy()
        with_missing[:, ::2] = np.nan  # the missing-value branches too
        probe = np.vstack([sample, with_missing])
        expected = self.booster.predict(probe, num_threads=self.threads)
        got = self.compiled.predict(probe, n_jobs=self.threads)
        difference = float(np.max(np.abs(expected - got))) if len(probe) else 0.0
        self.checked = True
        if not difference <= TOLERANCE:
            log.warning(
                "the compiled model differs from the booster by %.3g (> %g): using the booster",
                difference,
                TOLERANCE,
            )
            self.compiled = None
        else:
            log.info(
                "compiled model checked on %d rows: max difference %.3g", len(probe), difference
            )


def batch_predictor(
    booster: lgb.Booster, threads: int, compiled: str, cache_dir: Path, label: str = ""
) -> BatchPredictor:
    """The predictor a batch command asked for; a compiled model that fails falls back, loudly."""
    if compiled == "off":
        return BatchPredictor(booster, threads)
    try:
        model = build(booster, cache_dir, label)
    except (CompileError, OSError, ImportError) as exc:
        log.warning("batch.compiled=%s unavailable (%s): using the booster", compiled, exc)
        return BatchPredictor(booster, threads)
    return BatchPredictor(booster, threads, model)
