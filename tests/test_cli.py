"""The real `bnexp` entry point, in a subprocess, on synthetic data."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import bnexp as bnexp_module
from bnexp import __version__ as bnexp_version

from conftest import FAST, run_dirs, summaries

TAGS = {"train/loss", "train/error", "test/error", "test/accuracy", "test/loss", "opt/lr", "perf/steps_per_s",
        *(f"probe/hidden{i}/p{q}" for i in (1, 2, 3) for q in (15, 50, 85))}


def read_csv(run_dir):
    out = defaultdict(dict)
    with open(run_dir / "metrics.csv") as f:
        for row in csv.DictReader(f):
            out[row["tag"]][int(row["step"])] = float(row["value"])
    return out


def test_help_lists_the_subcommands(bnexp):
    done = bnexp("--help")
    assert done.returncode == 0
    listed = [line.split()[0] for line in done.stdout.split("commands:")[1].splitlines()
              if line.startswith("  ") and not line.startswith("   ")]
    assert listed == ["train", "resume", "finalize", "evaluate", "report"]
    bare = bnexp()
    assert bare.returncode == 2 and bare.stdout == done.stdout  # no command: the usage, as an error


def test_unknown_subcommand_is_an_error(bnexp):
    done = bnexp("fly")
    assert done.returncode == 2
    assert "unknown command 'fly'" in done.stderr


def test_train_run_writes_events_csv_and_summary_that_agree(bnexp, runs_root):
    done = bnexp("train", *FAST, "trainer.targets=[0.5,1.0]")
    assert done.returncode == 0, done.stderr
    [run_dir] = run_dirs(runs_root)

    events = EventAccumulator(str(run_dir)).Reload()
    assert TAGS <= set(events.Tags()["scalars"])
    hparams = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["optim.lr"].number_value == pytest.approx(2.0)
    assert start.session_start_info.hparams["norm.name"].string_value == "batch"
    assert "trainer.seed" in start.session_start_info.hparams
    metrics = read_csv(run_dir)
    assert set(metrics) == set(events.Tags()["scalars"])  # the same scalars in both places
    for tag in TAGS:
        from_events = {e.step: e.value for e in events.Scalars(tag)}
        assert from_events.keys() == metrics[tag].keys()
        assert all(metrics[tag][s] == pytest.approx(v, rel=1e-6) for s, v in from_events.items())

    # Evaluations at step 0, every eval_every and the end; training scalars every log_every.
    assert sorted(metrics["test/accuracy"]) == [0, 100, 200]
    assert sorted(metrics["train/loss"]) == [50, 100, 150, 200]
    summary = json.loads((run_dir / "summary.json").read_text())
    accuracy = metrics["test/accuracy"]
    assert summary["status"] == "completed" and summary["steps"] == 200
    assert summary["final_accuracy"] == accuracy[200]
    assert summary["best_accuracy"] == max(accuracy.values())
    assert accuracy[summary["best_step"]] == summary["best_accuracy"]
    assert summary["steps_to_target"]["0.5"] == min(s for s, a in accuracy.items() if a >= 0.5)
    assert summary["best_accuracy"] > 0.5  # it learned something
    assert (run_dir / "config.yaml").exists() and (run_dir / "train.log").exists()


def test_no_hparams_sub_run(bnexp, runs_root):
    assert bnexp("train", *FAST).returncode == 0
    [run_dir] = run_dirs(runs_root)
    event_dirs = {p.parent for p in runs_root.rglob("events.out.tfevents.*")}
    assert event_dirs == {run_dir}


def test_sweep_makes_one_run_dir_per_job(bnexp, runs_root):
    done = bnexp("train", "-m", "norm=none,batch", *FAST, "trainer.threads=1")
    assert done.returncode == 0, done.stderr
    dirs = run_dirs(runs_root)
    assert len(dirs) == 2
    assert [("norm=batch" in d.name, "norm=none" in d.name) for d in dirs] == [(False, True), (True, False)]
    assert [s["status"] for s in summaries(runs_root)] == ["completed", "completed"]
    # Job dirs are named after what tells the experiments apart, not after execution settings.
    assert all("trainer.max_steps=200" in d.name and "threads" not in d.name and "progress" not in d.name
               for d in dirs)


def test_the_summary_records_the_code_that_made_the_run(bnexp, runs_root):
    assert bnexp("train", *FAST).returncode == 0
    [summary] = summaries(runs_root)
    assert summary["bnexp"] == bnexp_version and summary["torch"] == torch.__version__
    repo = Path(bnexp_module.__file__).resolve().parents[1]
    if (repo / ".git").exists():  # an editable install in a checkout, as in development and CI
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True)
        assert summary["git_commit"] == head.stdout.strip()
        assert summary["git_dirty"] is bool(status.stdout.strip())
    else:
        assert summary["git_commit"] is None and summary["git_dirty"] is None


def test_the_summary_says_how_much_of_the_run_was_evaluation(bnexp, runs_root):
    assert bnexp("train", *FAST).returncode == 0
    [summary] = summaries(runs_root)
    assert 0 < summary["eval_time_s"] < summary["wall_time_s"]


@pytest.mark.parametrize("deterministic", ["true", "false"])  # the README promises both on CPU
def test_same_seed_same_result(bnexp, runs_root, deterministic):
    done = bnexp("train", "-m", "trainer.seed=3,3", f"trainer.deterministic={deterministic}", *FAST)
    assert done.returncode == 0, done.stderr
    a, b = summaries(runs_root)
    assert a["final_accuracy"] == b["final_accuracy"]
    c, d = [read_csv(r)["train/loss"] for r in run_dirs(runs_root)]
    assert c == d


def test_fig1_preset_composes_with_either_norm(bnexp):
    done = bnexp("train", "experiment=fig1_mnist", "norm=none", "--cfg", "job")
    assert done.returncode == 0, done.stderr
    assert "norm:\n  name: none" in done.stdout
    assert "max_steps: 50000" in done.stdout and "batch_size: 60" in done.stdout
    assert "name: fig1_mnist" in done.stdout
    default = bnexp("train", "--cfg", "job")
    assert "norm:\n  name: batch" in default.stdout and "name: mnist" in default.stdout


def test_lr_mult_scales_the_logged_learning_rate(bnexp, runs_root):
    assert bnexp("train", *FAST, "optim.lr=0.01", "optim.lr_mult=30").returncode == 0
    [run_dir] = run_dirs(runs_root)
    assert all(lr == pytest.approx(0.3) for lr in read_csv(run_dir)["opt/lr"].values())


def test_exponential_schedule_decays_in_steps(bnexp, runs_root):
    done = bnexp("train", *FAST, "schedule=exponential", "optim.lr=0.1", "schedule.decay_rate=0.5",
                 "schedule.decay_steps=100")
    assert done.returncode == 0, done.stderr
    lr = read_csv(run_dirs(runs_root)[0])["opt/lr"]
    # lr used by step s (1-based) is 0.1 * 0.5 ** floor((s - 1) / 100)
    assert lr == {50: pytest.approx(0.1), 100: pytest.approx(0.1), 150: pytest.approx(0.05), 200: pytest.approx(0.05)}


def test_divergence_is_a_result(bnexp, runs_root, tmp_path):
    """The exact step of the first non-finite loss, whatever the log window: the same run logged every
    step has finite losses up to the step before it."""
    diverging = [*FAST, "norm=none", "model.activation=relu", "optim.lr=1e30"]
    done = bnexp("train", *diverging, f"hydra.run.dir={tmp_path / 'windows'}")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "windows" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["steps"] == 50  # it stopped at the window's end
    assert 1 <= summary["diverged_at_step"] <= 50
    done = bnexp("train", *diverging, "trainer.log_every=1", f"hydra.run.dir={tmp_path / 'steps'}")
    assert done.returncode == 0, done.stderr
    every_step = json.loads((tmp_path / "steps" / "summary.json").read_text())
    logged = read_csv(tmp_path / "steps")["train/loss"]
    assert every_step["diverged_at_step"] == summary["diverged_at_step"] == max(logged, default=0) + 1
    assert all(math.isfinite(v) for v in logged.values())


def test_shell_completion_offers_config_groups(bnexp):
    done = bnexp("-sc", "query=bash", env={"COMP_LINE": "bnexp train norm=", "COMP_POINT": "18"})
    assert done.returncode == 0, done.stderr
    offered = set(done.stdout.split())
    assert {"norm=batch", "norm=none", "norm=batch_renorm", "norm=group"} <= offered
    assert all(option.startswith("norm=") for option in offered)


def test_wheel_ships_the_configs(tmp_path):
    """A plain `pip install .` must find configs/ too: the wheel carries it as bnexp/configs."""
    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "src"  # build from a copy: building writes build/ and *.egg-info/
    shutil.copytree(repo, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "runs"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("bnexp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.removeprefix("bnexp/configs/") for n in names if n.startswith("bnexp/configs/")}
    in_repo = {str(p.relative_to(repo / "configs")) for p in (repo / "configs").rglob("*.yaml")}
    assert "config.yaml" in shipped and in_repo <= shipped
    assert "bnexp/cli.py" in names and "bnexp/models/mlp.py" in names


def test_joblib_sweep_runs_every_job_and_lists_what_did_not_complete(bnexp, runs_root):
    done = bnexp("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *FAST, "norm=none",
                 "model.activation=relu", "optim.lr=0.1,-1,1e30")
    assert done.returncode == 1  # a job failed; the sweep still ran the others
    assert [s["status"] for s in summaries(runs_root)] == ["completed", "diverged"]
    [failure] = runs_root.rglob("failure.json")
    assert "1_" in failure.parent.name and "optim.lr must be a number > 0" in json.loads(failure.read_text())["error"]
    assert "3 jobs: 1 completed, 1 diverged, 1 failed" in done.stderr
    assert "failed: 1_" in done.stderr and "optim.lr must be a number > 0, got -1" in done.stderr
    assert "diverged: 2_" in done.stderr
    # joblib gives each of the 2 jobs its share of the cores, so they do not fight over them
    assert f"({max(1, os.cpu_count() // 2)} threads)" in done.stdout


def test_slurm_preset_composes_and_submitit_runs_the_jobs(bnexp, runs_root):
    shown = bnexp("train", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra")
    assert shown.returncode == 0, shown.stderr
    assert "_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in shown.stdout
    assert "partition: gpu" in shown.stdout and "requeue: true" in shown.stdout
    # No Slurm here: submitit's local executor runs the same pickled jobs in its job environment.
    done = bnexp("train", "-m", "hydra/launcher=submitit_local", *FAST, "trainer.seed=0,1")
    assert done.returncode == 0, done.stderr
    assert [s["status"] for s in summaries(runs_root)] == ["completed", "completed"]


def test_finalize_reevaluates_the_same_weights_with_population_statistics(bnexp, runs_root, tmp_path):
    run_dir = tmp_path / "bn"
    assert bnexp("train", *FAST, "trainer.batch_size=4", "optim.lr=0.1", f"hydra.run.dir={run_dir}").returncode == 0
    [newest] = (run_dir / "checkpoints").iterdir()  # the final one
    before = newest.read_bytes()
    done = bnexp("finalize", str(run_dir), "--batches", "50")
    assert done.returncode == 0, done.stderr
    result = json.loads((run_dir / "finalized.json").read_text())
    # Moving averages: exactly what the run's last evaluation measured.
    assert result["moving_average"]["accuracy"] == summaries(run_dir)[0]["final_accuracy"]
    assert result["moving_average"]["loss"] == pytest.approx(read_csv(run_dir)["test/loss"][200])
    assert result["batches"] == 50 and result["examples"] == 200 and result["checkpoint_step"] == 200
    assert result["population"]["loss"] != result["moving_average"]["loss"]
    assert newest.read_bytes() == before  # the run itself is left as it was

    renorm = tmp_path / "renorm"
    assert bnexp("train", *FAST, "norm=batch_renorm", f"hydra.run.dir={renorm}").returncode == 0
    refused = bnexp("finalize", str(renorm))
    assert refused.returncode == 2 and "norm=batch_renorm has no BN population statistics" in refused.stderr
