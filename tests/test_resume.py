"""Checkpoints and resume: a killed, preempted or interrupted run continues where it stopped and
ends exactly where an uninterrupted run ends."""

import errno
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from bnexp import checkpoint
from bnexp.errors import UserError

from conftest import BNEXP, FAST, summaries

# Long enough to be stopped mid-run; Batch Renorm (a step-counting buffer) and on-device distortion
# (a per-step generator) make the state that must survive richer than plain BN's.
RUN = ["data=synthetic", "data.distort=0.3", "norm=batch_renorm", "norm.warmup_steps=500", "norm.rmax_steps=2000",
       "norm.dmax_steps=1500", "trainer.max_steps=3000", "trainer.eval_every=500", "trainer.log_every=50",
       "trainer.checkpoint_every=200", "trainer.progress=false",
       # Bitwise equality needs the same reduction order, so the same thread count in every segment.
       "trainer.threads=1"]


def read_rows(run_dir: Path) -> list[tuple[str, str, str]]:
    """metrics.csv without the timing rows, which differ between any two runs."""
    lines = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    return [tuple(line.split(",")) for line in lines if ",perf/" not in line]


def final_weights(run_dir: Path) -> dict:
    return torch.load(checkpoint.checkpoints(run_dir)[0], weights_only=False)["model"]


def start(runs_root: Path, cwd: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "BNEXP_RUNS": str(runs_root)}
    return subprocess.Popen([BNEXP, "train", *RUN, *overrides], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, after_step: int) -> None:
    deadline = time.time() + 120
    while not any(int(p.stem.split("_")[1]) >= after_step for p in checkpoint.checkpoints(run_dir)):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The same run, never interrupted (made once; tests work on copies)."""
    root = tmp_path_factory.mktemp("reference")
    env = {**os.environ, "BNEXP_RUNS": str(root / "runs")}
    done = subprocess.run([BNEXP, "train", *RUN, f"hydra.run.dir={root / 'run'}"], capture_output=True, text=True,
                          env=env, cwd=root)
    assert done.returncode == 0, done.stderr
    return root / "run"


@pytest.fixture
def reference(uninterrupted, tmp_path) -> Path:
    return Path(shutil.copytree(uninterrupted, tmp_path / "reference"))


def test_sigkill_then_resume_ends_bitwise_like_an_uninterrupted_run(bnexp, runs_root, tmp_path, reference):
    run_dir = tmp_path / "killed"
    proc = start(runs_root, tmp_path, f"hydra.run.dir={run_dir}")
    wait_for_checkpoint(proc, run_dir, after_step=1000)
    proc.kill()  # SIGKILL: no chance to checkpoint or write anything
    proc.wait()
    assert not (run_dir / "summary.json").exists()
    killed_at = max(int(row[0]) for row in read_rows(run_dir))
    assert killed_at < 3000

    done = bnexp("resume", str(run_dir))
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout
    assert read_rows(run_dir) == read_rows(reference)  # no step twice, none missing, same values
    for name, value in final_weights(reference).items():
        assert torch.equal(final_weights(run_dir)[name], value), name
    summary, expected = (summaries(d)[0] for d in (run_dir, reference))
    assert summary["status"] == "completed" and summary["final_accuracy"] == expected["final_accuracy"]

    # TensorBoard shows one value per step too: the resumed writer purged the killed run's later events.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == list(range(50, 3001, 50))


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_then_stops_and_resume_finishes(bnexp, runs_root, tmp_path, signum, code):
    run_dir = tmp_path / "preempted"
    proc = start(runs_root, tmp_path, f"hydra.run.dir={run_dir}")
    wait_for_checkpoint(proc, run_dir, after_step=200)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    [summary] = summaries(run_dir)
    assert summary["status"] == "interrupted" and summary["stopped_by"] == signum.name
    assert checkpoint.checkpoints(run_dir)[0].name == f"step_{summary['steps']:09d}.pt"  # where it stopped

    done = bnexp("resume", str(run_dir))
    assert done.returncode == 0, done.stderr
    [summary] = summaries(run_dir)
    assert summary["status"] == "completed" and summary["steps"] == 3000
    # A finished run resumed again (a requeued job) is left as it is.
    again = bnexp("resume", str(run_dir))
    assert again.returncode == 0 and "already completed" in again.stdout


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(bnexp, tmp_path, reference):
    newest, previous = checkpoint.checkpoints(reference)
    (reference / "summary.json").unlink()  # as if the machine died right after the last checkpoint
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    done = bnexp("resume", str(reference))
    assert done.returncode == 0, done.stderr
    assert f"checkpoint {newest} is damaged" in done.stdout and f"resuming from {previous}" in done.stdout
    assert summaries(reference)[0]["status"] == "completed"


def test_all_checkpoints_damaged_is_refused_not_restarted(bnexp, tmp_path, reference):
    (reference / "summary.json").unlink()
    for path in checkpoint.checkpoints(reference):
        path.write_bytes(b"not a checkpoint")
    done = bnexp("resume", str(reference))
    assert done.returncode != 0
    assert "every checkpoint in" in done.stderr and "refusing to start over" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (reference / "summary.json").exists()


def test_resuming_with_a_different_config_is_refused(bnexp, tmp_path, reference):
    (reference / "summary.json").unlink()
    done = bnexp("resume", str(reference), "optim.lr=0.5")
    assert done.returncode != 0
    assert "holds a run with a different config (optim.lr: 2.0 -> 0.5)" in done.stderr
    assert not (reference / "summary.json").exists()


def test_a_run_made_before_an_option_existed_is_finished_by_todays_bnexp(bnexp, reference):
    """An option the run's config.yaml lacks (newer than the run, at its default) is no difference;
    a setting the run has and the resume changes still is."""
    (reference / "summary.json").unlink()
    config = OmegaConf.load(reference / "config.yaml")
    del config.trainer["eval_train"]
    OmegaConf.save(config, reference / "config.yaml")
    done = bnexp("resume", str(reference))
    assert done.returncode == 0, done.stderr
    assert (reference / "summary.json").exists()


def test_resume_of_a_folder_that_is_not_a_run(bnexp, tmp_path):
    done = bnexp("resume", str(tmp_path))
    assert done.returncode != 0 and "is not a bnexp run dir" in done.stderr


def test_a_full_disk_leaves_the_previous_checkpoint_the_newest(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, 100, {"model": {"w": torch.ones(3)}})

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    full = "No space left on device.*the newest good one is step_000000100"
    with pytest.raises(checkpoint.CheckpointError, match=full):
        checkpoint.save(tmp_path, 200, {"model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    assert [p.name for p in checkpoint.directory(tmp_path).iterdir()] == ["step_000000100.pt"]  # no .tmp left
    assert torch.equal(checkpoint.load_latest(tmp_path)["model"]["w"], torch.ones(3))


def test_checkpoints_restore_the_random_number_generators(tmp_path):
    torch.manual_seed(0)
    checkpoint.save(tmp_path, 1, {})
    expected = torch.rand(5)
    torch.rand(100)  # move on
    state = checkpoint.load_latest(tmp_path)
    assert not torch.equal(torch.rand(5), expected)  # loading alone restores nothing
    checkpoint.set_rng_states(state["rng"])
    assert torch.equal(torch.rand(5), expected)


def test_only_the_two_newest_checkpoints_are_kept(tmp_path):
    for step in (100, 200, 300):
        checkpoint.save(tmp_path, step, {})
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == ["step_000000300.pt", "step_000000200.pt"]
    with pytest.raises(UserError):  # and a run dir whose checkpoints are all unreadable is refused
        for path in checkpoint.checkpoints(tmp_path):
            path.write_bytes(b"")
        checkpoint.load_latest(tmp_path)


def test_resume_never_starts_over(bnexp, tmp_path, reference):
    rows = read_rows(reference)
    (reference / "summary.json").unlink()
    done = bnexp("resume", str(reference), "trainer.resume=never")
    assert done.returncode == 0, done.stderr
    assert "resuming from" not in done.stdout
    assert read_rows(reference) == rows  # the same run again, from step 0
    assert len(list(reference.glob("events.out.tfevents.*"))) == 1  # the first attempt's events are gone


def test_a_full_disk_during_a_run_fails_it_with_the_reason(tmp_path, monkeypatch, compose):
    from bnexp.train import run

    cfg = compose(*FAST, "trainer.checkpoint_every=100")
    real_save, saved = torch.save, []

    def disk_fills_after_one_checkpoint(obj, f):
        if saved:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        saved.append(real_save(obj, f))

    monkeypatch.setattr(torch, "save", disk_fills_after_one_checkpoint)
    [summary] = run(cfg, tmp_path).values()
    assert summary["status"] == "failed" and "No space left on device" in summary["error"]
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == ["step_000000100.pt"]
    assert not list(checkpoint.directory(tmp_path).glob("*.tmp"))


def test_a_finished_run_with_a_different_config_is_refused_too(bnexp, reference):
    done = bnexp("resume", str(reference), "trainer.max_steps=6000")
    assert done.returncode != 0 and "trainer.max_steps: 3000 -> 6000" in done.stderr


def test_a_sweep_run_again_skips_finished_jobs(bnexp, tmp_path):
    sweep = ["-m", *FAST, "trainer.seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    assert bnexp("train", *sweep).returncode == 0
    again = bnexp("train", *sweep)
    assert again.returncode == 0 and again.stdout.count("already completed; nothing to do") == 2


def test_a_sweep_run_again_with_other_options_keeps_its_runs(bnexp, tmp_path):
    # Job dirs named by number only, so that the second sweep's jobs land in the first one's.
    sweep = ["-m", *FAST, "trainer.seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}",
             "hydra.sweep.subdir=${hydra.job.num}"]
    assert bnexp("train", *sweep).returncode == 0
    again = bnexp("train", *sweep, "optim.lr=0.5")  # another config in the same dirs: refused, listed
    assert again.returncode == 1 and "2 jobs: 2 failed" in again.stderr
    assert "holds a run with a different config" in again.stderr
    assert [s["status"] for s in summaries(tmp_path / "sweep")] == ["completed", "completed"]
