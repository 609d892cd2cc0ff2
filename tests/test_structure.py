"""The package's structure: imports go one way (no cycle among bnexp's modules, tested on the source
itself), the error type is a leaf, and commands that need no torch do not import it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bnexp
from bnexp.config import config_dir

PACKAGE = Path(bnexp.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def bnexp_imports(path: Path, modules: set[str]) -> set[str]:
    """The bnexp modules a file imports, at its top or inside functions (a lazy import is an arrow too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # from bnexp import data
    return {name for name in found if name in modules} - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: bnexp_imports(path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None (depth-first search)."""
    state, path = {}, []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_bnexp_modules():
    graph = import_graph()
    assert {"bnexp.cli", "bnexp.train", "bnexp.trainer", "bnexp.stepper", "bnexp.record"} <= set(graph)
    assert graph["bnexp.train"] >= {"bnexp.trainer", "bnexp.stepper", "bnexp.builders"}  # the parser sees arrows
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_errors_is_a_leaf_and_models_do_not_depend_on_the_config():
    graph = import_graph()
    assert graph["bnexp.errors"] == set()
    for module in ("bnexp.norm", "bnexp.models", "bnexp.models.mlp", "bnexp.models.inception", "bnexp.data",
                   "bnexp.mnist", "bnexp.checkpoint"):
        assert "bnexp.config" not in graph[module], module
    errors = (PACKAGE / "errors.py").read_text()
    assert "import torch" not in errors and "from torch" not in errors


@pytest.mark.parametrize("args", [["--help"], ["report", "--help"], ["finalize", "--help"], ["train", "--help"],
                                  ["resume"]])
def test_commands_that_train_nothing_import_neither_torch_nor_tensorboard(args):
    probe = ("import sys\nfrom bnexp.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'tensorboard', 'torchvision') if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr


def test_the_configs_compose_without_importing_bnexp_first():
    """Hydra alone composes bnexp's configs (no resolver to register first)."""
    script = ("from hydra import compose, initialize_config_dir\n"
              f"with initialize_config_dir(config_dir={str(config_dir())!r}, version_base='1.3'):\n"
              "    cfg = compose('config', overrides=['norm=none'], return_hydra_config=True)\n"
              "print(cfg.norm.name, 'trainer.threads' in cfg.hydra.job.config.override_dirname.exclude_keys)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["none", "True"], done.stderr


SCRIPTS = sorted((PACKAGE.parent / "scripts").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_shell_scripts_parse(script):
    """bash reads a script as it runs: a syntax error deep in a case (a `;;` lost in a comment) would
    only show after the hours of sweeps before it."""
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_save_records_keeps_every_finished_run_a_report_reads(tmp_path):
    """scripts/records.sh: a plain job's files and a replicated job's seeds (RUN/seed_<s>) are kept,
    laid out as under the sweeps, with bnexp evaluate's tables; Hydra's own config copies are not; a
    run that has not finished (stopped, or no summary yet) is left out, and a step not begun is passed over."""
    sweeps, out = tmp_path / "sweeps", tmp_path / "out"
    runs = {sweeps / "main" / "experiment=a,trainer.seed=0": "completed",
            sweeps / "main" / "experiment=a,trainer.seed=1": "interrupted",
            sweeps / "main" / "experiment=a,trainer.seed=2": None,
            **{sweeps / "fast" / "experiment=b,trainer.seed=0" / f"seed_{s}": status
               for s, status in ((0, "completed"), (1, "diverged"))}}
    for run, status in runs.items():
        (run / ".hydra").mkdir(parents=True)
        for name in ("config.yaml", "metrics.csv", ".hydra/config.yaml", "events.out.tfevents.1"):
            (run / name).write_text(name)
        if status:
            (run / "summary.json").write_text(json.dumps({"status": status, "steps": 10}, indent=2))
    evaluated = sweeps / "main" / "experiment=a,trainer.seed=0" / "evaluate" / "step_10"  # bnexp evaluate's
    evaluated.mkdir(parents=True)
    for name in ("evaluation.csv", "evaluation.json", "events.out.tfevents.2"):
        (evaluated / name).write_text(name)
    records = PACKAGE.parent / "scripts" / "records.sh"
    save = f". {records}; set -euo pipefail; save_records {sweeps} {out} main fast small"
    done = subprocess.run(["bash", "-c", save], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    kept = sorted(str(p.relative_to(out / "records")) for p in (out / "records").rglob("*") if p.is_file())
    tables = [f"main/experiment=a,trainer.seed=0/evaluate/step_10/evaluation.{kind}" for kind in ("csv", "json")]
    assert kept == sorted([*tables, *(f"{run.relative_to(sweeps)}/{name}" for run, status in runs.items()
                                     if status in ("completed", "diverged")
                                     for name in ("config.yaml", "metrics.csv", "summary.json"))])


@pytest.mark.parametrize("args, says", [(["run", "0.5x"], "'0.5x' is not a width > 0"),
                                        (["report", "0"], "'0' is not a width > 0"),
                                        (["train"], "usage:"),
                                        (["run"], "no CUDA device")])
def test_the_gpu_study_refuses_what_it_cannot_run(tmp_path, args, says):
    """scripts/reproduce_inception_gpu.sh stops with one line before starting its lanes: a bad width, a
    step it has not, or (here, without a GPU) no CUDA device; nothing is written."""
    if args == ["run"] and torch.cuda.is_available():
        pytest.skip("a CUDA device is available: the study would start")
    env = {**os.environ, "BNEXP_RUNS": str(tmp_path), "BNEXP": str(Path(sys.executable).parent / "bnexp")}
    done = subprocess.run(["bash", str(PACKAGE.parent / "scripts" / "reproduce_inception_gpu.sh"), *args],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []
