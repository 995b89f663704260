"""The architecture rules hold as import contracts (setup.cfg's [importlinter] sections, run by
`make lint`), and each contract fails when the import it forbids is added on purpose."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fraudflow", "serving", "drift", "pipelines")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _tree(folder: Path) -> Path:
    """A copy of the four packages and the contracts, to break on purpose."""
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, folder / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "setup.cfg", folder / "setup.cfg")
    return folder


def _lint(tree: Path) -> tuple[int, str]:
    """lint-imports on the copy (its packages first on the path), output on one line."""
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(tree / "setup.cfg")],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, " ".join((done.stdout + done.stderr).split())


def test_the_contracts_hold_on_the_code_as_it_is(tmp_path: Path) -> None:
    code, output = _lint(_tree(tmp_path))
    assert code == 0, output
    assert "0 broken" in output and " BROKEN" not in output


@pytest.mark.parametrize(
    "module, line, contract",
    [
        ("serving/routes.py", "import mlflow", "Only the MLflow edge imports mlflow"),
        (
            "drift/report.py",
            "import serving.app",
            "The entry layer over serving and drift, over pipelines; serving and drift independent",
        ),
        (
            "pipelines/features.py",
            "from pipelines.state import factory",
            "The core of pipelines imports none of its rooms",
        ),
        (
            "pipelines/mlflow/registry.py",
            "from pipelines.training import train",
            "The rooms of pipelines: backup over training and batch, over the MLflow edge, "
            "over the log, over the state",
        ),
        (
            "pipelines/state/protocol.py",
            "from pipelines.state import redis",
            "No import cycles between the packages and modules of a room",
        ),
        (
            "serving/predictor.py",
            "from pipelines.training import plots",
            "Serving a model pulls in neither matplotlib nor scikit-learn",
        ),
        (
            "pipelines/mlflow/pyfunc_model.py",
            "from pipelines import model",
            "The pyfunc logged with every model imports nothing of fraudflow",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    tree = _tree(tmp_path)
    with open(tree / module, "a") as handle:
        handle.write(f"\n{line}  # added on purpose\n")
    code, output = _lint(tree)
    assert code != 0, output
    verdict = next(w for w in output[output.index(contract) :].split() if w in ("KEPT", "BROKEN"))
    assert verdict == "BROKEN", output
    broken = output[output.index("Broken contracts") :]
    assert contract in broken and Path(module).stem in broken, output  # the import is named
