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

With --net inception, the same for Figure 3's width-1/8 network at its study preset (BN-x5 on
MNIST, channels_last, batch 32; BN-x5 with LRN, and the Inception baseline with model.dropout=0,
since replicas refuse dropout): one run alone against R stacked replicas (the wide twin of
models.stacked), and the protocol as Figure 3's stackable step trains it (BN-x5, BN-x30 and
BN-x5-sigmoid, 5 seeds each, --protocol-steps steps, the preset's geometric evaluation schedule).

    python scripts/bench_replicas.py --net inception --steps 200 --replicas 2,5,10 --protocol-steps 1500
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from bnexp import trainer
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
    """Training FLOPs of one step of one replica: the multiply-adds of the linear layers and
    convolutions, forward and the two backward products (3 x 2 FLOPs per multiply-add); norms,
    pooling and activations left out. Counted on one batch (a convolution's depend on its map size)."""
    from bnexp import models

    model = models.build(cfg.model, cfg.norm, (1, 28, 28), 10)
    macs = []

    def count(module, inputs, out):
        if isinstance(module, torch.nn.Linear):
            macs.append(module.weight.numel() * out.shape[0])
        else:  # a convolution: every output value is (c_in / groups) x kernel multiply-adds
            macs.append(out.numel() * module.weight[0].numel())

    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            m.register_forward_hook(count)
    with torch.no_grad():
        model(torch.zeros(cfg.trainer.batch_size, 1, 28, 28))
    return 6 * sum(macs)


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


def rates(name: str, net: list[str], replicas: list[int], peak: float, root: Path) -> None:
    """One run alone (the normal path, not compiled), then R replicas eager and compiled: each one's
    replica-steps/s, its ratio to the run alone and its share of the arithmetic limit, and the wall
    time of the whole run (compilation and evaluations included)."""
    flops = flops_per_step(compose(net))
    wall, dirs = timed_run(net, root)
    alone = training_rate(dirs[0])
    print(f"{name} one run alone: {alone:7.1f} steps/s  {100 * alone * flops / peak:5.1f}% of the "
          f"arithmetic limit  ({wall:.0f} s)")
    for compiled in (False, True):
        for r in replicas:
            wall, dirs = timed_run([*net, f"trainer.replicas={r}", f"trainer.compile={compiled}"], root)
            rate = r * training_rate(dirs[0])
            print(f"{name} R={r:3d} {'compiled' if compiled else 'eager   '}: {rate:7.1f} replica-steps/s  "
                  f"x{rate / alone:.2f} over one run at a time  {100 * rate * flops / peak:5.1f}% of the "
                  f"arithmetic limit  ({wall:.0f} s for {r} x the run)")


def inception(args, common: list[str], peak: float, root: Path) -> None:
    study = [*common, "scale=inception_mnist_plateau", "model.dropout=0"]
    every = ["trainer.eval_schedule=every", f"trainer.eval_every={args.steps}", f"trainer.max_steps={args.steps}",
             "trainer.log_every=10"]
    replicas = [int(x) for x in args.replicas.split(",")]
    presets = {"bn_x5": ["experiment=bn_x5"], "bn_x5_lrn": ["experiment=bn_x5", "model.lrn=true"],
               "inception": ["experiment=inception"]}
    for name in args.presets.split(",") if args.presets else ():
        rates(f"{name:11s}", [*study, *presets[name], *every], replicas, peak, root)
    if args.protocol_steps:  # the presets' own evaluation schedule; BN-x* have no dropout to lift
        protocol = [*study, f"trainer.max_steps={args.protocol_steps}"]
        models = args.protocol_models.split(",")

        def timed(extra: list[str], seeds) -> tuple[float, float]:
            """(wall seconds, seconds evaluating) of the three models' runs for `seeds`."""
            wall = evaluating = 0.0
            for m in models:
                for seed in seeds:
                    seconds, dirs = timed_run([*protocol, f"experiment={m}", f"trainer.seed={seed}", *extra], root)
                    wall += seconds
                    evaluating += sum(load_run(d).summary["eval_time_s"] for d in dirs)
            return wall, evaluating

        def line(name: str, wall: float, evaluating: float, reference: float) -> str:
            return (f"  {name}: {wall:6.0f} s, x{reference / wall:.2f}, evaluating {100 * evaluating / wall:4.1f}% "
                    "of it")

        alone = timed([], range(5))
        print(f"Figure 3's stackable step ({', '.join(models)} x 5 seeds x {args.protocol_steps} steps, "
              "the preset's geometric evaluation schedule):")
        print(line("one run at a time                       ", *alone, alone[0]))
        one_by_one = trainer.evaluate_together  # before one-pass evaluation: each replica on its own
        trainer.evaluate_together = lambda records, wide, replicas, step: [r.evaluate(step) for r in records.values()]
        print(line("stacked R=5, eager, replicas evaluated one by one", *timed(["trainer.replicas=5"], [0]), alone[0]))
        trainer.evaluate_together = one_by_one
        print(line("stacked R=5, eager, one evaluation pass  ", *timed(["trainer.replicas=5"], [0]), alone[0]))
        print(line("stacked R=5, compiled, one evaluation pass", *timed(["trainer.replicas=5", "trainer.compile=true"],
                                                                         [0]), alone[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", choices=("fig1", "inception"), default="fig1")
    parser.add_argument("--steps", type=int, default=2000, help="steps per rate measurement")
    parser.add_argument("--replicas", default="1,2,5,10,20")
    parser.add_argument("--protocol-steps", type=int, default=50000, help="0: skip the protocol")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--presets", default="bn_x5,bn_x5_lrn,inception",
                        help="--net inception: the presets whose rates are measured ('' for none)")
    parser.add_argument("--protocol-models", default="bn_x5,bn_x30,bn_x5_sigmoid",
                        help="--net inception: the stackable step's experiments")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_replicas_"))
    common = ["trainer.progress=false", f"trainer.threads={args.threads}", "trainer.checkpoint_every=0"]
    peak = matmul_rate(args.threads)
    print(f"device=cpu: {cpu_name()} | torch {torch.__version__} | {args.threads} threads | "
          f"float32 matmul {peak / 1e9:.0f} GFLOP/s (1024^3, best of 30)")
    if args.net == "inception":
        return inception(args, common, peak, root)
    common = ["experiment=fig1_mnist", *common]
    for norm in ("batch", "none"):
        net = [*common, f"norm={norm}", f"trainer.max_steps={args.steps}", f"trainer.eval_every={args.steps}"]
        rates(f"norm={norm:5s}", net, [int(x) for x in args.replicas.split(",")], peak, root)
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
