"""Run dirs that no fault leaves half-written: one owner per run dir, and every fault a user meets
(a corrupt file read back, a write that fails, an unreadable image) ends in one line and a non-zero
exit, with nothing left that looks finished."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bnexp import checkpoint, rundir
from bnexp.errors import RunDirInUse
from bnexp.runlog import RunLog
from bnexp.runs import load_run
from bnexp.train import run

from conftest import BNEXP, FAST

LONG = ["data=synthetic", "trainer.max_steps=100000", "trainer.eval_every=50000", "trainer.log_every=50",
        "trainer.checkpoint_every=100", "trainer.progress=false", "trainer.threads=1"]


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def wait_for(condition, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def contents(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under directory, with its size and modification time (ns)."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


# --- one owner per run dir ----------------------------------------------------------------------

def test_a_second_process_is_refused_before_it_touches_a_live_run(bnexp, tmp_path):
    live = tmp_path / "live"
    proc = subprocess.Popen([BNEXP, "train", *LONG, f"hydra.run.dir={live}"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: checkpoint.checkpoints(live), proc)
        proc.send_signal(19)  # SIGSTOP: the live run's files hold still while the second one tries
        before = contents(live)
        second = bnexp("train", *LONG, f"hydra.run.dir={live}")
        assert second.returncode == 2
        line = one_line(second.stderr)
        assert line.startswith(f"bnexp: error: {live} is in use by another bnexp run (pid {proc.pid} on ")
        assert contents(live) == before  # not a byte written, not a file opened for writing
        also = bnexp("resume", str(live))
        assert also.returncode == 2 and "is in use" in one_line(also.stderr)
        assert len(list(live.glob("events.out.tfevents.*"))) == 1
    finally:
        proc.kill()  # SIGKILL (works on a stopped process): the kernel releases the lock
        proc.wait()
    assert rundir.acquire(live)  # a killed run's lock is free: it can be resumed
    rundir.release(live)


def test_a_locked_run_dir_refuses_single_runs_and_sweep_jobs_and_finalize(bnexp, tmp_path):
    """The lock is held by this test's process; bnexp in another process is refused, naming us."""
    run_dir, sweep = tmp_path / "run", tmp_path / "sweep"
    assert bnexp("train", *FAST, f"hydra.run.dir={run_dir}").returncode == 0
    assert bnexp("train", "-m", *FAST, "trainer.seed=0,1", f"hydra.sweep.dir={sweep}",
                 "hydra.sweep.subdir=${hydra.job.num}").returncode == 0
    (run_dir / "summary.json").unlink()
    rundir.acquire(run_dir)
    rundir.acquire(sweep / "1")
    try:
        before = contents(run_dir)
        done = bnexp("resume", str(run_dir))
        assert done.returncode == 2
        assert f"(pid {os.getpid()} on " in one_line(done.stderr)
        assert contents(run_dir) == before
        finalized = bnexp("finalize", str(run_dir))
        assert finalized.returncode == 2 and "is in use" in one_line(finalized.stderr)
        (sweep / "1" / "summary.json").unlink()
        again = bnexp("train", "-m", *FAST, "trainer.seed=0,1", f"hydra.sweep.dir={sweep}",
                      "hydra.sweep.subdir=${hydra.job.num}")
        # The refused job is another process's (another lane of this sweep dir): listed as training
        # there, not a failure of this sweep; the other job found nothing to do.
        assert again.returncode == 0, again.stderr
        assert "already completed; nothing to do" in again.stdout and "is in use" in again.stdout
        assert f"training elsewhere: 1 by pid {os.getpid()} on " in again.stderr
        assert not (sweep / "1" / "failure.json").exists()  # nothing written into a dir another process owns
    finally:
        rundir.release(run_dir)
        rundir.release(sweep / "1")
    assert bnexp("resume", str(run_dir)).returncode == 0


def test_the_holder_of_a_run_dir_is_whoever_trains_there_now(tmp_path):
    assert rundir.holder(tmp_path / "never") is None
    hold = subprocess.Popen(["python3", "-c", "import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR | "
                             "os.O_CREAT)\nos.write(fd, b'pid 1 on elsewhere')\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
                             "print('held', flush=True)\ntime.sleep(60)", str(tmp_path / rundir.LOCK)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert hold.stdout.readline().strip() == "held"
        assert rundir.holder(tmp_path) == "pid 1 on elsewhere"
    finally:
        hold.kill()
        hold.wait()
    assert rundir.holder(tmp_path) is None  # the kernel released it with the process
    with rundir.owned(tmp_path):
        assert "(this process)" in rundir.holder(tmp_path)


def test_the_lock_is_taken_once_per_process_and_released_with_it(tmp_path):
    with rundir.owned(tmp_path / "a"):
        with rundir.owned(tmp_path / "a", tmp_path / "b"):  # re-entrant: the inner block keeps "a" held
            pass
        assert Path(tmp_path / "a").resolve() in rundir._held and Path(tmp_path / "b").resolve() not in rundir._held
        other = subprocess.run(["python3", "-c", "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
                                "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n"
                                "    sys.exit(3)", str(tmp_path / "a" / rundir.LOCK)])
        assert other.returncode == 3  # another process cannot take it
    assert not rundir._held
    rundir.acquire(tmp_path / "a")  # free again
    rundir.release(tmp_path / "a")


def test_refusal_names_the_holder(tmp_path):
    (tmp_path / rundir.LOCK).write_text("pid 4242 on elsewhere, since 2026-01-01 00:00:00\n")
    fd = os.open(tmp_path / rundir.LOCK, os.O_RDWR)
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX)  # this file description holds it; rundir.acquire opens another
    try:
        with pytest.raises(RunDirInUse, match="in use by another bnexp run .pid 4242 on elsewhere"):
            rundir.acquire(tmp_path)
    finally:
        os.close(fd)


# --- faults while writing -----------------------------------------------------------------------

def test_a_replicated_run_whose_checkpoint_cannot_be_written_fails_every_replica(bnexp, tmp_path):
    group = tmp_path / "group"
    (group / "seed_1").mkdir(parents=True)
    (group / "seed_1" / "checkpoints").write_text("a file where the checkpoints folder should be")
    done = bnexp("train", *FAST, "trainer.replicas=2", "trainer.checkpoint_every=100", f"hydra.run.dir={group}")
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith("bnexp: error: could not write checkpoint") and "seed_1" in line
    summaries = [json.loads((group / f"seed_{s}" / "summary.json").read_text()) for s in (0, 1)]
    assert [(s["status"], s["steps"]) for s in summaries] == [("failed", 100), ("failed", 100)]
    assert all("could not write checkpoint" in s["error"] for s in summaries)
    assert [checkpoint.step_of(p) for p in checkpoint.checkpoints(group / "seed_0")] == [100]  # resumable


def test_a_log_that_cannot_be_written_fails_the_run_with_the_reason(tmp_path, compose, monkeypatch):
    real, calls = RunLog.scalars, []

    def disk_fills(self, step, values):
        calls.append(step)
        if step >= 150:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.dir / "metrics.csv"))
        real(self, step, values)

    monkeypatch.setattr(RunLog, "scalars", disk_fills)
    for replicas in (1, 2):
        results = run(compose(*FAST, "trainer.checkpoint_every=100", f"trainer.replicas={replicas}"),
                      tmp_path / str(replicas))
        assert len(results) == replicas
        for summary in results.values():
            assert summary["status"] == "failed" and summary["steps"] == 150
            assert "No space left on device" in summary["error"]


def test_a_run_dir_that_vanishes_mid_run_ends_in_one_line_and_no_summary(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([BNEXP, "train", *LONG, f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: checkpoint.checkpoints(run_dir), proc)
    shutil.rmtree(run_dir)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    line = one_line(stderr)
    assert line.startswith(f"bnexp: error: {run_dir} ended failed") and "summary could not be written" in line
    assert not run_dir.exists()


def test_replicas_train_outside_the_main_thread(tmp_path, compose):
    """Signal handlers can only be set in the main thread: elsewhere (a launcher's worker thread) leave them."""
    results = {}
    worker = threading.Thread(target=lambda: results.update(run(compose(*FAST, "trainer.replicas=2"), tmp_path)))
    worker.start()
    worker.join(timeout=240)
    assert [s["status"] for s in results.values()] == ["completed", "completed"]


# --- corrupt files read back --------------------------------------------------------------------

@pytest.fixture
def finished(bnexp, tmp_path) -> Path:
    run_dir = tmp_path / "finished"
    done = bnexp("train", *FAST, "trainer.checkpoint_every=100", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr
    return run_dir


@pytest.mark.parametrize("file, text, message", [
    ("config.yaml", "trainer: [unclosed\n", "config.yaml cannot be read (ParserError"),
    ("config.yaml", "- a list, not settings\n", "config.yaml is not a bnexp config"),
    (".hydra/overrides.yaml", "{{{\n", "overrides.yaml cannot be read"),
    (".hydra/overrides.yaml", "a: mapping\n", "overrides.yaml is not a list of overrides"),
])
def test_resume_of_a_run_with_a_corrupt_config_is_one_line(bnexp, finished, file, text, message):
    (finished / file).write_text(text)
    done = bnexp("resume", str(finished))
    assert done.returncode == 2
    assert message in one_line(done.stderr)


@pytest.mark.parametrize("text", ['{"status": "compl', "[]", '"completed"', "\x00\x01"])
def test_a_damaged_summary_is_an_unfinished_run_that_resume_finishes(bnexp, finished, text):
    expected = json.loads((finished / "summary.json").read_text())
    (finished / "summary.json").write_text(text)
    report = bnexp("report", str(finished))
    assert report.returncode == 2 and "unreadable summary.json" in report.stderr
    done = bnexp("resume", str(finished))
    assert done.returncode == 0, done.stderr
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final_accuracy"] == expected["final_accuracy"]


def test_a_damaged_metrics_line_is_refused_but_a_partial_last_line_is_dropped(bnexp, finished):
    (finished / "summary.json").unlink()
    path = finished / "metrics.csv"
    rows = path.read_text().splitlines()
    path.write_text("\n".join([*rows, "200,train/lo"]) + "\n")  # killed mid-write
    assert bnexp("resume", str(finished)).returncode == 0
    (finished / "summary.json").unlink()
    rows = path.read_text().splitlines()
    path.write_text("\n".join([rows[0], "garbage,here,x", *rows[1:]]) + "\n")
    done = bnexp("resume", str(finished))
    assert done.returncode == 2
    assert "metrics.csv line 2 is damaged" in one_line(done.stderr)


def test_a_checkpoint_that_is_not_this_runs_is_skipped_or_refused(bnexp, finished):
    (finished / "summary.json").unlink()
    newest, older = checkpoint.checkpoints(finished)
    good = {path: torch.load(path, weights_only=False) for path in (newest, older)}
    torch.save({"step": 200, "model": {}}, newest)  # a foreign file under a checkpoint's name
    done = bnexp("resume", str(finished))
    assert done.returncode == 0, done.stderr
    assert f"{newest} is damaged" in done.stdout and "lacks optimizer" in done.stdout
    for garbage, message in ((dict(model={"nonsense": torch.ones(1)}), "does not fit this run's model"),
                             (dict(rng={"torch": "garbage"}), "holds no random states this process can take")):
        (finished / "summary.json").unlink(missing_ok=True)
        for path, state in good.items():
            torch.save({**state, **garbage}, path)
        done = bnexp("resume", str(finished))
        assert done.returncode == 2
        assert message in one_line(done.stderr)


def test_report_and_train_share_one_rule_for_targets(bnexp, finished):
    for bad in ("2", "0", "0.9,1.5", "nan", "x"):
        done = bnexp("report", str(finished), "--targets", bad)
        assert done.returncode == 2 and "accuracies must be numbers in (0, 1]" in done.stderr, bad
        refused = bnexp("train", *FAST, f"trainer.targets=[{bad}]")
        assert refused.returncode == 2, bad
    assert bnexp("report", str(finished), "--targets", "0.5,1").returncode == 0
    assert bnexp("report", str(finished), "--target", "1.5").returncode == 2


def test_a_garbage_failure_json_does_not_break_the_sweeps_listing(bnexp, tmp_path):
    sweep = ["-m", *FAST, "trainer.seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}",
             "hydra.sweep.subdir=${hydra.job.num}"]
    assert bnexp("train", *sweep).returncode == 0
    (tmp_path / "sweep" / "0" / "failure.json").write_text("[1, 2")
    (tmp_path / "sweep" / "1" / "failure.json").write_text("[]")
    again = bnexp("train", *sweep)
    assert again.returncode == 0 and "2 jobs: 2 completed" in again.stderr


# --- an unreadable image ------------------------------------------------------------------------

def image_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.jpg")


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_fails_the_run_naming_the_file_and_resume_finishes_it(bnexp, tmp_path, workers):
    root, run_dir = tmp_path / "images", tmp_path / "run"
    image_tree(root)
    bad = root / "train" / "dog" / "3.jpg"
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 3])  # truncated, as a few ImageNet files are
    overrides = ["data=imagefolder", f"data.root={root}", "data.size=16", f"data.workers={workers}",
                 "model.hidden=[8]", "trainer.batch_size=4", "trainer.max_steps=40", "trainer.eval_every=20",
                 "trainer.log_every=2", "trainer.checkpoint_every=2", "trainer.progress=false", "norm=none",
                 f"hydra.run.dir={run_dir}"]
    done = bnexp("train", *overrides)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith("bnexp: error: cannot read image ") and str(bad) in line
    summary = load_run(run_dir).summary
    assert summary["status"] == "failed" and str(bad) in summary["error"]
    stopped = summary["steps"]  # every step before the unreadable batch is done, and checkpointed
    assert stopped < 40
    assert [checkpoint.step_of(p) for p in checkpoint.checkpoints(run_dir)][:1] == ([stopped] if stopped else [])
    bad.write_bytes(good)  # fixed
    done = bnexp("resume", str(run_dir))
    assert done.returncode == 0, done.stderr
    assert not stopped or f"step_{stopped:09d}.pt (step {stopped})" in done.stdout  # from where it stopped
    assert load_run(run_dir).summary["status"] == "completed"


def test_a_parallel_sweep_job_that_cannot_checkpoint_is_listed_and_the_others_finish(bnexp, tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "1").mkdir(parents=True)
    (sweep / "1" / "checkpoints").write_text("a file where the checkpoints folder should be")
    done = bnexp("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *FAST, "trainer.seed=0,1",
                 "trainer.checkpoint_every=100", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra.job.num}")
    assert done.returncode == 1
    assert "2 jobs: 1 completed, 1 failed" in done.stderr and "could not write checkpoint" in done.stderr
    assert load_run(sweep / "0").summary["status"] == "completed"
    failed = load_run(sweep / "1").summary
    assert failed["status"] == "failed" and failed["steps"] == 100


def test_a_disk_that_fills_while_torch_saves_a_checkpoint_fails_every_replica_and_resume_finishes(
        tmp_path, compose, monkeypatch):
    """torch.save reports a full disk as RuntimeError ("[enforce fail at inline_container.cc] unexpected
    pos"), not OSError: each run still ends failed, naming the cause and its newest good checkpoint,
    leaves no partial file, and resumes once there is space."""
    real = torch.save

    def disk_fills(state, f, *args, **kwargs):
        if state["step"] >= 200:
            f.write(b"PK\x03\x04 half a zip")
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1856 vs 1752")
        real(state, f, *args, **kwargs)

    for replicas in (1, 2):
        monkeypatch.setattr(checkpoint.torch, "save", disk_fills)
        overrides = [*FAST, "trainer.max_steps=300", "trainer.checkpoint_every=100", f"trainer.replicas={replicas}"]
        results = run(compose(*overrides), tmp_path / str(replicas))
        assert len(results) == replicas
        for run_dir, summary in results.items():
            assert summary["status"] == "failed" and summary["steps"] == 200
            assert "unexpected pos" in summary["error"]
            assert "the newest good one is step_000000100.pt" in summary["error"]
            assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_000000100.pt"]  # no .tmp left
        monkeypatch.setattr(checkpoint.torch, "save", real)
        again = run(compose(*overrides, "trainer.resume=auto"), tmp_path / str(replicas))
        assert [s["status"] for s in again.values()] == ["completed"] * replicas
        assert all(s["steps"] == 300 for s in again.values())
