"""Data-parallel runs on CPU (gloo, 2 processes): SyncBatchNorm over the global batch, and a
torchrun run that equals one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bnexp import checkpoint
from bnexp.norm import SyncBatchNorm

X = torch.randn(60, 8, generator=torch.Generator().manual_seed(0)) * 3 + 1
C = torch.randn(60, 8, generator=torch.Generator().manual_seed(1))  # weighs each output differently in the loss


def shard_forward(rank: int, init_file: str, out: str, sync: bool) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    layer = SyncBatchNorm(8) if sync else nn.BatchNorm1d(8)
    layer.weight.data.uniform_(0.5, 1.5)
    x = X[rank * 30 : (rank + 1) * 30].clone().requires_grad_()
    y = layer(x)
    (y * C[rank * 30 : (rank + 1) * 30]).sum().backward()
    torch.save({"y": y.detach(), "x_grad": x.grad, "weight_grad": layer.weight.grad,
                "running_mean": layer.running_mean, "running_var": layer.running_var}, f"{out}.{rank}")
    dist.destroy_process_group()


def two_processes(tmp_path: Path, sync: bool) -> dict:
    out = str(tmp_path / "shard")
    mp.spawn(shard_forward, args=(str(tmp_path / "init"), out, sync), nprocs=2)
    a, b = (torch.load(f"{out}.{r}") for r in (0, 1))
    return {"y": torch.cat([a["y"], b["y"]]), "x_grad": torch.cat([a["x_grad"], b["x_grad"]]),
            # each process's weight gradient is its part of the sum; DDP would add them
            "weight_grad": a["weight_grad"] + b["weight_grad"], "running_mean": a["running_mean"],
            "running_var": a["running_var"], "other_running_mean": b["running_mean"]}


def one_process() -> dict:
    torch.manual_seed(0)
    layer = nn.BatchNorm1d(8)
    layer.weight.data.uniform_(0.5, 1.5)
    x = X.clone().requires_grad_()
    y = layer(x)
    (y * C).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "weight_grad": layer.weight.grad, "running_mean": layer.running_mean,
            "running_var": layer.running_var}


def test_sync_bn_on_2_x_30_equals_bn_on_60(tmp_path):
    synced, single = two_processes(tmp_path, sync=True), one_process()
    for key in single:
        torch.testing.assert_close(synced[key], single[key], rtol=1e-5, atol=1e-5, msg=key)
    torch.testing.assert_close(synced["other_running_mean"], single["running_mean"])  # both processes agree


def test_without_sync_each_process_normalizes_its_own_shard(tmp_path):
    per_shard, single = two_processes(tmp_path, sync=False), one_process()
    for key in ("y", "x_grad", "running_mean", "running_var"):
        assert not torch.allclose(per_shard[key], single[key], atol=1e-3), key
    assert not torch.allclose(per_shard["running_mean"], per_shard["other_running_mean"])


TRAIN = ["data=synthetic", "trainer.max_steps=100", "trainer.eval_every=50", "trainer.log_every=10",
         "trainer.batch_size=60", "optim.lr=0.5", "trainer.progress=false"]


def train(tmp_path: Path, name: str, nproc: int, *overrides: str) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)] if nproc > 1 else \
        [sys.executable]
    env = {**os.environ, "BNEXP_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, "-m", "bnexp", "train", *TRAIN, *overrides, f"hydra.run.dir={tmp_path / name}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def weights(run_dir: Path) -> dict:
    return torch.load(checkpoint.checkpoints(run_dir)[0], weights_only=False)["model"]


def test_torchrun_with_sync_bn_trains_like_one_process_with_the_global_batch(tmp_path):
    for name, nproc, extra in (("single", 1, []), ("sync", 2, ["norm.sync=true"]), ("per_shard", 2, [])):
        done = train(tmp_path, name, nproc, *extra)
        assert done.returncode == 0, done.stderr[-3000:]
    single, synced, per_shard = (weights(tmp_path / n) for n in ("single", "sync", "per_shard"))
    for key, value in single.items():  # to 1e-5 relative (1e-6 absolute near zero), as the README says
        torch.testing.assert_close(synced[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.allclose(per_shard["hidden.0.norm.running_mean"], single["hidden.0.norm.running_mean"], atol=1e-3)
    # Rank 0 alone wrote: one event file, one metrics.csv with each step once, one summary.
    run_dir = tmp_path / "sync"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    steps = [line.split(",")[0] for line in rows if ",train/loss," in line]
    assert steps == [str(s) for s in range(10, 101, 10)]
    assert (run_dir / "summary.json").exists()


def test_a_batch_that_does_not_split_among_the_processes_is_refused(tmp_path):
    done = train(tmp_path, "odd", 2, "trainer.batch_size=61")
    assert done.returncode != 0
    assert "trainer.batch_size=61 cannot be split among 2 processes" in done.stderr


def test_a_sweep_under_torchrun_is_refused(tmp_path):
    env = {**os.environ, "BNEXP_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "bnexp",
                           "train", "-m", "trainer.seed=0,1"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0 and "a sweep (-m) cannot run under torchrun" in done.stderr


def test_a_finished_torchrun_run_is_not_run_again(tmp_path):
    overrides = ["norm.sync=true", "trainer.checkpoint_every=50", "trainer.max_steps=50"]
    done = train(tmp_path, "run", 2, *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    again = train(tmp_path, "run", 2, *overrides)  # a requeued job: every process sees the finished run
    assert again.returncode == 0 and "already completed" in again.stdout + again.stderr


def test_a_checkpoint_that_rank_0_cannot_write_stops_every_process(tmp_path):
    """Rank 0 alone writes: when its checkpoint fails, the other process must not wait for it forever."""
    run_dir = tmp_path / "blocked"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("a file where the checkpoints folder should be")
    done = train(tmp_path, "blocked", 2, "trainer.checkpoint_every=50")
    assert done.returncode != 0
    assert "could not write checkpoint" in done.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps"] == 50 and "could not write checkpoint" in summary["error"]
