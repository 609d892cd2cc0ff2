"""Replicas (trainer.replicas=R): each replica is the run of its seed, trained together with the others.

Equal to float tolerance, not bitwise: the vmapped kernels sum in another order than the single
run's. The tolerances below are a few hundred times float32's rounding (1.2e-7) at the values
compared, and far below what a different seed changes (losses by 1e-2 and more).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from bnexp import checkpoint
from bnexp.rundir import replica_dirs
from bnexp.runs import load_run
from bnexp.train import run

from conftest import BNEXP, FAST, only

STEPS = ["trainer.max_steps=1000", "trainer.eval_every=500", "trainer.log_every=1", "trainer.checkpoint_every=0"]


def weights(run_dir: Path) -> dict:
    return torch.load(checkpoint.checkpoints(run_dir)[0], weights_only=False)


def assert_same_run(alone: Path, replica: Path, tolerance: float, optimizer: bool) -> None:
    a, b = load_run(alone), load_run(replica)
    losses_a, losses_b = a.curves["train/loss"], b.curves["train/loss"]
    assert sorted(losses_a) == sorted(losses_b)
    steps = sorted(losses_a)
    torch.testing.assert_close(torch.tensor([losses_b[s] for s in steps]), torch.tensor([losses_a[s] for s in steps]),
                               rtol=tolerance, atol=1e-6)
    state_a, state_b = weights(alone), weights(replica)
    assert state_a["step"] == state_b["step"]
    for name, value in state_a["model"].items():  # parameters and BN running statistics
        torch.testing.assert_close(state_b["model"][name], value, rtol=tolerance, atol=tolerance,
                                   msg=lambda m, name=name: f"{name}: {m}")
    for i, s in state_a["optimizer"]["state"].items() if optimizer else ():  # SGD's momentum, Adam's moments and step
        for key, value in s.items():
            torch.testing.assert_close(state_b["optimizer"]["state"][i][key], value, rtol=tolerance, atol=tolerance)
    assert a.summary["best_accuracy"] == pytest.approx(b.summary["best_accuracy"], abs=2e-3)


@pytest.mark.parametrize("case, tolerance", [
    (["norm=none"], 1e-4),
    (["norm=batch", "optim.lr=0.2", "optim.momentum=0.9"], 1e-4),
    (["norm=batch_paper"], 1e-4),
    (["norm=batch", "trainer.compile=true"], 1e-4),  # the vmapped step compiled
    (["norm=group", "norm.groups=4", "data.distort=0.3", "optim.lr=0.2"], 1e-4),  # on-device augmentation
    (["norm=layer", "optim.lr=0.2", "trainer.max_steps=300"], 1e-4),
    # BN over virtual batches of 4: noisy statistics amplify rounding, in the running averages most.
    (["norm=ghost", "optim.lr=0.2", "trainer.max_steps=100"], 1e-3),
    # The recurrent model with per-step BN, Adam and each replica's gradient clipped on its own.
    (["model=lstm", "model.hidden=16", "data.shape=[1,8,8]", "norm=batch", "optim=adam", "optim.lr=0.01",
      "optim.clip_norm=0.5", "trainer.max_steps=100"], 1e-4),
], ids=["mlp-none", "mlp-batch-momentum", "mlp-batch_paper", "mlp-batch-compiled", "mlp-group-distort", "mlp-layer",
        "mlp-ghost", "lstm-batch-adam-clipped"])
def test_replica_r_is_the_run_of_seed_r_alone(compose, tmp_path, case, tolerance):
    check_replicas_against_runs_alone(compose, tmp_path, ["data=synthetic", "trainer.progress=false", *STEPS, *case],
                                      tolerance)


# With BN, 2e-3: on a 2-core AMD EPYC with AVX-512, 3 of the stem's 108 weights part by 1.4e-3 after
# its one step (float32 rounding of that ill-conditioned gradient); the update is still checked to
# be 5x the tolerance, so a wrong one fails.
@pytest.mark.parametrize("norm, steps, lr, tolerance, layout", [
    ("none", 10, 0.01, 1e-3, "false"), ("batch", 1, 0.1, 2e-3, "false"),
    ("batch", 1, 0.1, 2e-3, "true"),  # the twin in channels_last, against runs alone in channels_last
], ids=["none", "batch", "batch-channels_last"])
def test_an_inception_replica_is_the_run_of_its_seed_alone(compose, tmp_path, monkeypatch, norm, steps, lr, tolerance,
                                                           layout):
    """To 1e-3 (2e-3 with BN), over a few steps. This small conv net is chaotic: any change of rounding flips
    max-pool and ReLU decisions, and the losses part by ~5% within 30 steps, whether the change is
    vmap's (one grouped convolution for all replicas) or the run alone on 1 thread instead of 2
    (measured both ways on a 2-core CPU). With BN, a channel of near-constant input makes the
    gradient ill-conditioned: the single run's float32 weight gradients were 0.5% off float64 in
    one layer on step 1. So: the replicas' init, data, per-replica BN statistics and update agree
    before rounding has compounded; the MLP tests above hold over 1,000 steps. The learning rates make
the update several times the tolerance (checked), so that a wrong update cannot pass."""
    overrides = ["data=synthetic", "trainer.progress=false", "model=inception", "model.width=0.0625",
                 "model.stem=small", f"norm={norm}", "model.dropout=0", "data.shape=[3,16,16]", f"optim.lr={lr}",
                 "optim.momentum=0.9", f"trainer.max_steps={steps}", f"trainer.eval_every={steps}",
                 "trainer.log_every=1", "trainer.checkpoint_every=0", f"trainer.channels_last={layout}"]
    from bnexp import stepper

    wide_steps, wide_forward = [], stepper.Stack.wide_forward
    monkeypatch.setattr(stepper.Stack, "wide_forward",
                        lambda self, x, y: wide_steps.append(1) or wide_forward(self, x, y))
    # Momentum buffers are sums of raw gradients, where the flips above show first: weights only.
    check_replicas_against_runs_alone(compose, tmp_path, overrides, tolerance=tolerance, optimizer=False)
    assert len(wide_steps) == steps  # the replicas trained as models.stacked's wide twin, not vmapped


@pytest.mark.parametrize("fold", ["true", "false"])
def test_one_pass_evaluates_every_replica_as_its_own_evaluation_would(compose, tmp_path, monkeypatch, fold):
    """A stacked Inception's replicas are evaluated in one pass of the wide inference network
    (with each replica's BN folded, or not): every replica's test accuracy and loss, training-set
    accuracy and loss, and probe percentiles are those its own evaluation finds, to float rounding,
    at every evaluation."""
    from bnexp import trainer
    from bnexp.probes import PERCENTILES

    own, together = {}, trainer.evaluate_together

    def compare(records, wide, replicas, step):
        alone = {r: (record.test_passes(), record.probe.percentiles()) for r, record in records.items()}
        together(records, wide, replicas, step)
        for r, record in records.items():
            tested, percentiles = alone[r]
            assert record.history[-1] == (step, pytest.approx(tested.accuracy, abs=1e-9))
            assert len(percentiles) == 3 * len(PERCENTILES)  # three probed layers
            assert record.probe.percentiles() == pytest.approx(percentiles, rel=1e-4, abs=1e-5)
            own[record.dir.name, step] = tested

    monkeypatch.setattr(trainer, "evaluate_together", compare)
    overrides = ["data=synthetic", "data.n_test=256", "data.n_train=256", "trainer.progress=false",
                 "model=inception", "model.width=0.0625", "model.stem=small", "norm=batch", "model.dropout=0",
                 "data.shape=[3,16,16]", "trainer.max_steps=4", "trainer.eval_every=2", "trainer.log_every=1",
                 "trainer.checkpoint_every=0", "trainer.eval_train=true", f"trainer.eval_fold_bn={fold}",
                 "trainer.seed=3", "trainer.replicas=3"]
    summaries = list(run(compose(*overrides), tmp_path).values())
    assert [s["status"] for s in summaries] == ["completed"] * 3
    assert sorted(own) == [(f"seed_{s}", step) for s in (3, 4, 5) for step in (0, 2, 4)]
    for (name, step), tested in own.items():  # what was logged is what each one's own passes found
        curves = load_run(tmp_path / name).curves
        assert curves["test/loss"][step] == pytest.approx(tested.loss, rel=1e-5)
        assert curves["train_set/accuracy"][step] == pytest.approx(tested.train_set["train_set/accuracy"], abs=1e-9)
        assert curves["train_set/loss"][step] == pytest.approx(tested.train_set["train_set/loss"], rel=1e-5)


def check_replicas_against_runs_alone(compose, tmp_path, overrides, tolerance=1e-4, optimizer=True):
    replicated = list(run(compose(*overrides, "trainer.seed=3", "trainer.replicas=2"),
                          tmp_path / "replicated").values())
    assert_training_moved_the_weights(compose(*overrides, "trainer.seed=3"), tmp_path / "replicated" / "seed_3",
                                      tolerance)
    assert [s["status"] for s in replicated] == ["completed", "completed"]
    dirs = replica_dirs(tmp_path / "replicated")
    assert [d.name for d in dirs] == ["seed_3", "seed_4"]
    for seed, replica in zip((3, 4), dirs, strict=True):
        alone = tmp_path / f"alone_{seed}"
        alone.mkdir()
        assert only(run(compose(*overrides, f"trainer.seed={seed}"), alone))["status"] == "completed"
        assert_same_run(alone, replica, tolerance, optimizer)
        assert load_run(replica).config["trainer.seed"] == seed
    # Statistics per replica, never pooled: the two replicas' running means differ.
    buffers = [weights(d)["model"] for d in dirs]
    for name in (n for n in buffers[0] if n.endswith("running_mean")):
        assert not torch.allclose(buffers[0][name], buffers[1][name]), name


def assert_training_moved_the_weights(cfg, run_dir: Path, tolerance: float) -> None:
    """The run's update is far larger than the tolerance the comparison allows: it could not pass by
    comparing two barely trained networks. Measured against the seed's initial weights."""
    from bnexp import data, models

    torch.manual_seed(cfg.trainer.seed)
    source = data.build(cfg.data, cfg.trainer, torch.device("cpu"))
    initial = models.build(cfg.model, cfg.norm, source.input_shape, source.num_classes).state_dict()
    trained = weights(run_dir)["model"]
    moved = [(trained[k] - initial[k]).abs().max().item() for k in initial if initial[k].is_floating_point()]
    assert sorted(moved)[len(moved) // 2] > 5 * tolerance, moved  # the median tensor's largest change


def test_a_diverging_replica_ends_there_and_the_others_are_untouched(compose, tmp_path, monkeypatch):
    """Replica seed 0 gets a non-finite input from step 120 on; seed 1 must train as without it."""
    from bnexp import data

    overrides = [*FAST, "trainer.log_every=10", "trainer.replicas=2", "trainer.checkpoint_every=0"]
    clean = list(run(compose(*overrides), tmp_path / "clean").values())
    reseeded = data.DeviceData.reseeded

    def poisoned(self, seed):
        source = reseeded(self, seed)
        draw = source.next_batch

        def next_batch(step):
            x, y = draw(step)
            return (x * float("nan") if seed == 0 and step >= 120 else x), y

        source.next_batch = next_batch
        return source

    monkeypatch.setattr(data.DeviceData, "reseeded", poisoned)
    diverged, survivor = run(compose(*overrides), tmp_path / "poisoned").values()
    assert diverged["status"] == "diverged" and diverged["diverged_at_step"] == 121
    assert survivor["status"] == "completed" and survivor["steps"] == 200
    assert survivor["final_accuracy"] == clean[1]["final_accuracy"]
    for name, value in weights(tmp_path / "clean" / "seed_1")["model"].items():
        assert torch.equal(weights(tmp_path / "poisoned" / "seed_1")["model"][name], value), name
    assert computed(tmp_path / "poisoned" / "seed_1") == computed(tmp_path / "clean" / "seed_1")


def computed(run_dir: Path) -> dict:
    """A run's curves less the timing ones, which differ between any two runs."""
    return {tag: values for tag, values in load_run(run_dir).curves.items() if not tag.startswith("perf/")}


RESUMED = ["data=synthetic", "norm=batch", "optim.lr=0.2", "optim.momentum=0.9", "trainer.max_steps=3000",
           "trainer.eval_every=500", "trainer.log_every=50", "trainer.checkpoint_every=200", "trainer.progress=false",
           "trainer.threads=1", "trainer.replicas=3"]


def test_sigkill_then_resume_ends_bitwise_like_the_uninterrupted_replicated_run(bnexp, runs_root, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert bnexp("train", *RESUMED, f"hydra.run.dir={reference}").returncode == 0
    proc = subprocess.Popen([BNEXP, "train", *RESUMED, f"hydra.run.dir={killed}"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not all(checkpoint.checkpoints(killed / f"seed_{s}") for s in range(3)) or \
            max(int(p.stem.split("_")[1]) for p in checkpoint.checkpoints(killed / "seed_0")) < 1000:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no chance to checkpoint or write anything
    proc.wait()
    assert not list(killed.rglob("summary.json"))

    done = bnexp("resume", str(killed))
    assert done.returncode == 0, done.stderr
    for s in range(3):
        a, b = reference / f"seed_{s}", killed / f"seed_{s}"
        assert computed(a) == computed(b)
        for name, value in weights(a)["model"].items():
            assert torch.equal(weights(b)["model"][name], value), name
    assert bnexp("resume", str(killed)).returncode == 0  # every replica has ended: nothing to do


def test_sigterm_checkpoints_every_replica_and_resume_finishes_them(bnexp, tmp_path):
    group = tmp_path / "group"
    proc = subprocess.Popen([BNEXP, "train", *RESUMED, f"hydra.run.dir={group}"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not all(checkpoint.checkpoints(group / f"seed_{s}") for s in range(3)):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    stopped = [load_run(group / f"seed_{s}").summary for s in range(3)]
    assert {(s["status"], s["stopped_by"]) for s in stopped} == {("interrupted", "SIGTERM")}
    assert len({s["steps"] for s in stopped}) == 1  # one step for all: each checkpointed where the group stopped
    for s in range(3):
        assert int(checkpoint.checkpoints(group / f"seed_{s}")[0].stem.split("_")[1]) == stopped[0]["steps"]
    done = bnexp("resume", str(group))
    assert done.returncode == 0, done.stderr
    assert [load_run(group / f"seed_{s}").summary["status"] for s in range(3)] == ["completed"] * 3


def test_one_replica_resumes_alone_as_a_run_of_its_seed(bnexp, tmp_path):
    """A replica stopped at step 100 of 200 and continued alone ends as its uninterrupted replica
    did (to float tolerance: the run alone sums in another order), with its own seed."""
    group = tmp_path / "group"
    assert bnexp("train", *FAST, "trainer.replicas=2", "trainer.checkpoint_every=100", "optim.momentum=0.9",
                 f"hydra.run.dir={group}").returncode == 0
    reference = tmp_path / "reference"
    shutil.copytree(group / "seed_1", reference)
    (group / "seed_1" / "summary.json").unlink()  # as if it had stopped at its last checkpoint
    for p in checkpoint.checkpoints(group / "seed_1")[:1]:
        p.unlink()
    done = bnexp("resume", str(group / "seed_1"))
    assert done.returncode == 0, done.stderr
    assert "(step 100)" in done.stdout and "x 2 replicas" not in done.stdout  # a run of one seed, from step 100
    resumed = load_run(group / "seed_1")
    assert resumed.summary["status"] == "completed" and resumed.config["trainer.seed"] == 1
    assert_same_run(reference, group / "seed_1", tolerance=1e-4, optimizer=True)
    moved = max((weights(reference)["model"][k] - weights(group / "seed_0")["model"][k]).abs().max().item()
                for k in weights(reference)["model"])
    assert moved > 1e-2  # the other seed's run is far from it: the comparison above can tell them apart


@pytest.mark.parametrize("override, message", [
    ("norm=batch_renorm", "norm=batch_renorm reads its step counter"),
    ("model=inception", "dropout draws its masks"),
    ("trainer.channels_last=true", "trainer.channels_last applies to model=inception's wide twin only"),
    ("trainer.replicas=0", "trainer.replicas must be a whole number >= 1"),
])
def test_what_cannot_be_replicated_is_refused_with_the_reason(bnexp, override, message):
    done = bnexp("train", *FAST, "trainer.replicas=2", override)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and message in done.stderr


def test_a_sweep_runs_one_replicated_job_per_config(bnexp, runs_root):
    done = bnexp("train", "-m", *FAST, "norm=none,batch", "trainer.replicas=2")
    assert done.returncode == 0, done.stderr
    assert "4 jobs: 4 completed" in done.stderr  # every replica's run is listed at the sweep's end
    runs = sorted(p.parent for p in runs_root.rglob("summary.json"))
    assert [(p.parent.name.split("_")[0], p.name) for p in runs] == [("0", "seed_0"), ("0", "seed_1"),
                                                                     ("1", "seed_0"), ("1", "seed_1")]
    assert [load_run(p).config["norm.name"] for p in runs] == ["none", "none", "batch", "batch"]


def test_the_replicas_left_in_a_group_resume_as_themselves(bnexp, tmp_path):
    """A group whose seed 0 has ended and whose seed 1 stopped at step 100: `bnexp resume GROUP`
    continues seed 1 alone, with seed 1's batches (not the group's first seed's), and it ends as
    its uninterrupted self."""
    group = tmp_path / "group"
    assert bnexp("train", *FAST, "trainer.replicas=2", "trainer.checkpoint_every=100",
                 f"hydra.run.dir={group}").returncode == 0
    shutil.copytree(group / "seed_1", tmp_path / "reference")
    (group / "seed_1" / "summary.json").unlink()
    checkpoint.checkpoints(group / "seed_1")[0].unlink()  # back to its step-100 checkpoint
    done = bnexp("resume", str(group))
    assert done.returncode == 0, done.stderr
    assert "x 1 replicas (seeds 1)" in done.stdout and "seed_0 already completed" in done.stdout
    assert_same_run(tmp_path / "reference", group / "seed_1", tolerance=1e-4, optimizer=True)
