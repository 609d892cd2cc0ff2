"""How much faster are seeds trained together (trainer.replicas=R) than one run at a time?

For the Figure 1 MLP with and without BN: a run alone (the normal path), then bnexp's replicated
trainer at R = 1, 2, 5, 10, 20, eager and compiled: replica-steps/s (R x the steps/s the trainer
logs, evaluation left out), the ratio to one run at a time, and the fraction of the arithmetic
limit (training FLOPs per step, 2 x 3 per weight per example, over the machine's measured float32
matmul rate). Then the wall
time of the whole Figure 1 protocol (2 nets x 5 seeds x --protocol-steps steps, evaluation every
500) as two replicated runs (R=5, compiled) against the ten runs one after another.

    python scripts/bench_replicas.py                          # about 30 minutes on 2 cores
    python scripts/bench_replicas.py --steps 500 --protocol-steps 5000   # a quick look
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from bnexp.config import compose
from bnexp.runs import load_run
from bnexp.train import run


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                flags = Path("/proc/cpuinfo").read_text()
                extras = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
                return f"{name} ({', '.join(extras)})" if extras else name
    except OSError:
        pass
    return platform.processor() or "unknown"


def matmul_rate(threads: int, size: int = 1024, repeats: int = 30) -> float:
    """The machine's float32 matmul rate in FLOP/s (best of a few large products)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def flops_per_step(cfg) -> float:
    """Training FLOPs of one step of one replica: multiply-adds of the linear layers, forward and
    the two backward products (6 FLOPs per weight per example); norms and activations left out."""
    from bnexp import models

    model = models.build(cfg.model, cfg.norm, (1, 28, 28), 10)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6 * weights * cfg.trainer.batch_size


def timed_run(overrides: list[str], root: Path) -> tuple[float, list[Path]]:
    """(wall seconds, run dirs) of one bnexp run in-process."""
    cfg = compose(overrides)
    run_dir = Path(tempfile.mkdtemp(dir=root))
    start = time.perf_counter()
    dirs = list(run(cfg, run_dir))
    return time.perf_counter() - start, dirs


def training_rate(run_dir: Path) -> float:
    """Steps/s of training alone: the median of the trainer's per-window perf/steps_per_s."""
    rates = sorted(load_run(run_dir).curves["perf/steps_per_s"].values())
    return rates[len(rates) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps per rate measurement")
    parser.add_argument("--replicas", default="1,2,5,10,20")
    parser.add_argument("--protocol-steps", type=int, default=50000, help="0: skip the protocol")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_replicas_"))
    common = ["experiment=fig1_mnist", "trainer.progress=false", f"trainer.threads={args.threads}",
              "trainer.checkpoint_every=0"]
    peak = matmul_rate(args.threads)
    print(f"device=cpu: {cpu_name()} | torch {torch.__version__} | {args.threads} threads | "
          f"float32 matmul {peak / 1e9:.0f} GFLOP/s (1024^3, best of 30)")
    for norm in ("batch", "none"):
        net = [*common, f"norm={norm}", f"trainer.max_steps={args.steps}", f"trainer.eval_every={args.steps}"]
        flops = flops_per_step(compose(net))
        alone = training_rate(timed_run(net, root)[1][0])  # a run alone: the normal path, not compiled
        print(f"norm={norm:5s} one run alone: {alone:7.0f} steps/s  {100 * alone * flops / peak:5.1f}% of the "
              "arithmetic limit")
        for compiled in (False, True):
            for r in (int(x) for x in args.replicas.split(",")):
                _, dirs = timed_run([*net, f"trainer.replicas={r}", f"trainer.compile={compiled}"], root)
                rate = r * training_rate(dirs[0])
                print(f"norm={norm:5s} R={r:3d} {'compiled' if compiled else 'eager   '}: {rate:7.0f} replica-steps/s  "
                      f"x{rate / alone:.2f} over one run at a time  {100 * rate * flops / peak:5.1f}% of the "
                      "arithmetic limit")
    if args.protocol_steps:
        protocol = [*common, f"trainer.max_steps={args.protocol_steps}", "trainer.eval_every=500"]
        one_at_a_time = sum(timed_run([*protocol, f"norm={norm}", f"trainer.seed={seed}"], root)[0]
                            for norm in ("none", "batch") for seed in range(5))
        together = sum(timed_run([*protocol, f"norm={norm}", "trainer.replicas=5", "trainer.compile=true"], root)[0]
                       for norm in ("none", "batch"))
        print(f"Figure 1 protocol (2 nets x 5 seeds x {args.protocol_steps} steps, evaluation every 500): "
              f"one run at a time {one_at_a_time:.0f} s, replicated (R=5, compiled) {together:.0f} s, "
              f"x{one_at_a_time / together:.2f}")


if __name__ == "__main__":
    main()
