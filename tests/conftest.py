"""Shared helpers: compose a config in-process, run the real `bnexp` console script in a
subprocess, find what runs wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bnexp import config

BNEXP = shutil.which("bnexp", path=str(Path(sys.executable).parent)) or shutil.which("bnexp")

# Small and fast: synthetic data, a few hundred steps, no progress bar.
FAST = ["data=synthetic", "trainer.max_steps=200", "trainer.eval_every=100", "trainer.log_every=50",
        "trainer.progress=false"]


@pytest.fixture
def compose():
    """compose(*overrides): the config `bnexp train OVERRIDES` would run, composed in-process."""
    return lambda *overrides: config.compose(list(overrides))


@pytest.fixture
def runs_root(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def bnexp(runs_root, tmp_path):
    """Call `bnexp ARGS...` as a user would, with runs and data under the test's temporary dir."""

    def call(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
        assert BNEXP, "the bnexp console script is not installed"
        full_env = {**os.environ, "BNEXP_RUNS": str(runs_root), "BNEXP_DATA": str(tmp_path / "data"),
                    **(env or {})}
        full_env.pop("HYDRA_FULL_ERROR", None)  # the user's view: compact errors
        return subprocess.run([BNEXP, *args], capture_output=True, text=True, env=full_env,
                              cwd=tmp_path, timeout=timeout)

    return call


def only(results: dict) -> dict:
    """The summary of the one run that train.run trained ({run dir: summary})."""
    [summary] = results.values()
    return summary


def run_dirs(root: Path) -> list[Path]:
    """Every run directory under root: the ones Hydra wrote a resolved config into."""
    return sorted(p.parent.parent for p in root.rglob(".hydra/config.yaml"))


def summaries(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("summary.json"))]
