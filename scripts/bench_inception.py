"""Training and evaluation speed of the Inception-style network under each of bnexp's speed
settings: bf16 autocast, channels_last, torch.compile, alone and together, and 3 seeds trained
as replicas in one process.

Training: images/s of bnexp's trainer (its logged perf/steps_per_s, evaluation left out) and of
a bare PyTorch loop with the same settings, their ratio, and the speed-up over the plain bare loop
(with replicas, bnexp's images/s are all replicas' together, the bare loop's one network's). With
--lanes N, also N such runs trained at once in N processes, as a study's lanes share the machine:
each lane's training images/s and their total.
Evaluation: images/s of bnexp's own evaluation (the whole test set in inference mode, with the
probe, in batches of trainer.eval_batch_size), with BN folded into the convolutions (the default,
trainer.eval_fold_bn) and without. Evaluation runs the uncompiled module (where the probe's hooks
live), so compile changes training only.

Every figure is also a rate of arithmetic: the FLOPs of one training step (forward and backward)
and of one image's inference, counted by torch.utils.flop_counter, times the measured speed, as a
share of what the same threads do on a 1024 x 1024 fp32 matrix product, measured in the same run.

The scaled model of results/inception_mnist (BN-x5 recipe, width 1/8, MNIST) by default.

    python scripts/bench_inception.py                       # every setting (compile takes minutes on a CPU)
    python scripts/bench_inception.py --settings plain amp+channels_last
    python scripts/bench_inception.py --threads 1 --settings plain channels_last   # one lane of a study
    python scripts/bench_inception.py --threads 1 --lanes 2 --settings channels_last  # ... and two at once
    python scripts/bench_inception.py --steps 300 -- experiment=bn_x5 data=cifar10 model.width=1
    python scripts/bench_inception.py --threads 1 --no-eval --settings channels_last -- experiment=bn_x5 \
        scale=inception_mnist_cpu trainer.log_every=10 data=synthetic data.n_test=250 model.width=0.5  # wider
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import queue
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_trainer import bench_config, bnexp_trainer, compare
from torch.utils.flop_counter import FlopCounterMode

from bnexp import data as datasets
from bnexp import models
from bnexp.builders import in_layout, pick_device
from bnexp.config import compose
from bnexp.record import RunRecord
from bnexp.runlog import NullLog

SETTINGS = {
    "plain": [],
    "amp": ["trainer.amp=true"],
    "channels_last": ["trainer.channels_last=true"],
    "amp+channels_last": ["trainer.amp=true", "trainer.channels_last=true"],
    "compile": ["trainer.compile=true"],
    "amp+channels_last+compile": ["trainer.amp=true", "trainer.channels_last=true", "trainer.compile=true"],
    "replicas3": ["trainer.replicas=3"],  # vmap over 3 seeds' networks (channels_last is refused with it)
}
SCALED = ["experiment=bn_x5", "scale=inception_mnist_cpu", "trainer.log_every=25"]


def matmul_flops_per_s(repeats: int = 5, n: int = 1024) -> float:
    """The yardstick: fp32 FLOP/s of an n x n matrix product on this many threads, best of `repeats`."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: [a @ b for _ in range(10)]) for _ in range(repeats))
    return 10 * 2 * n**3 / best


def _timed(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def flops(overrides: list[str]) -> tuple[float, float]:
    """(FLOPs of one training step, forward and backward; FLOPs of one image's inference)."""
    cfg = compose(overrides)
    torch.manual_seed(cfg.trainer.seed)
    shape = datasets.build(cfg.data, cfg.trainer, torch.device("cpu")).input_shape
    model = models.build(cfg.model, cfg.norm, shape, 10)
    x, y = torch.randn(cfg.trainer.batch_size, *shape), torch.randint(0, 10, (cfg.trainer.batch_size,))
    with FlopCounterMode(display=False) as train:
        F.cross_entropy(model(x), y).backward()
    model.eval()
    with FlopCounterMode(display=False) as inference, torch.no_grad():
        model(x[:1])
    return train.get_total_flops(), inference.get_total_flops()


def lanes_images_per_s(overrides: list[str], steps: int, lanes: int) -> list[float]:
    """Training images/s of each of `lanes` runs of the same config trained at once, each in its own
    process (started together), as the lanes of a study share the machine."""
    context = multiprocessing.get_context("spawn")
    start, rates = context.Barrier(lanes), context.Queue()
    workers = [context.Process(target=_lane, args=(overrides, steps, start, rates)) for _ in range(lanes)]
    for worker in workers:
        worker.start()
    images = []
    while len(images) < lanes:
        try:
            images.append(rates.get(timeout=5))
        except queue.Empty:
            if failed := [w.exitcode for w in workers if w.exitcode not in (None, 0)]:
                for worker in workers:
                    worker.terminate()  # the others wait at the barrier or train on: stop them
                raise SystemExit(f"bench_inception: a lane failed (exit code {failed[0]}), its error above") from None
    for worker in workers:
        worker.join()
    return sorted(images)


def _lane(overrides: list[str], steps: int, start, rates) -> None:
    cfg = bench_config(overrides, steps)
    start.wait()
    rates.put(bnexp_trainer(cfg, steps, training_only=True) * cfg.trainer.batch_size * cfg.trainer.replicas)


def evaluation_images_per_s(overrides: list[str], repeats: int) -> float:
    """bnexp's evaluation of the whole test set (a run's RunRecord.evaluate: layout, autocast, the
    percentile probe), best of `repeats` after a warm-up."""
    cfg = compose(overrides)
    device = pick_device(cfg.trainer.device)
    torch.manual_seed(cfg.trainer.seed)
    data = datasets.build(cfg.data, cfg.trainer, device)
    model = models.build(cfg.model, cfg.norm, data.input_shape, data.num_classes).to(device)
    if cfg.trainer.channels_last:
        model.to(memory_format=torch.channels_last)  # as the run's stepper puts it
    record = RunRecord(cfg.trainer, Path("."), model, optimizer=None, data=data, runlog=NullLog(),
                       writes_checkpoints=False)
    record.evaluate(0)  # warm-up: allocator, kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        record.evaluate(0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sum(len(y) for _, y in data.eval_batches()) / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--profile", action="store_true",
                        help="instead: the operators' self time over 10 training steps and one evaluation")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); a study's lane uses 1")
    parser.add_argument("--lanes", type=int, default=1, help="also time this many runs trained at once")
    parser.add_argument("--no-eval", action="store_true",
                        help="time training only (evaluation of a wide network takes minutes per repeat)")
    parser.add_argument("overrides", nargs="*", default=SCALED)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # the yardstick's; bnexp's runs set theirs from the override
        args.overrides = [*args.overrides, f"trainer.threads={args.threads}"]
    if args.profile:
        return profile(args.overrides)
    matmul = matmul_flops_per_s()
    step_flops, image_flops = flops(args.overrides)
    print(f"yardstick: 1024x1024 fp32 matmul {matmul / 1e9:.1f} GFLOP/s; one training step "
          f"{step_flops / 1e9:.2f} GFLOP, one image's inference {image_flops / 1e6:.1f} MFLOP", flush=True)
    plain_bare = None  # images/s of the first setting's bare loop
    for name in args.settings:
        overrides = [*args.overrides, "trainer.eval_every=100000", *SETTINGS[name]]
        cfg, results = compare(overrides, args.steps, args.repeats, training_only=True)
        batch = cfg.trainer.batch_size
        # images/s, best of N (the least disturbed); with replicas each of bnexp's steps trains R batches
        bare, ours = max(results["bare loop"]) * batch, max(results["bnexp"]) * batch * cfg.trainer.replicas
        plain_bare = plain_bare or bare
        flops_per_image = step_flops / batch
        line = (f"{name:26s} train: bare {bare:7.1f} img/s  bnexp {ours:7.1f} img/s "
                f"({ours * flops_per_image / matmul:.0%} of matmul)  ratio {ours / bare:.3f}  "
                f"x{ours / plain_bare:.2f} over plain")
        if not args.no_eval:
            folded, unfolded = (evaluation_images_per_s([*overrides, f"trainer.eval_fold_bn={fold}"], args.repeats)
                                for fold in ("true", "false"))
            line += (f" | evaluation: BN folded {folded:7.1f} img/s ({folded * image_flops / matmul:.0%} of matmul), "
                     f"unfolded {unfolded:7.1f} img/s")
        print(line, flush=True)
        if args.lanes > 1:
            lanes = lanes_images_per_s(overrides, args.steps, args.lanes)
            share = sum(lanes) * flops_per_image / (args.lanes * matmul)
            print(f"{'':26s} {args.lanes} lanes at once: each {lanes[0]:7.1f} .. {lanes[-1]:7.1f} img/s, together "
                  f"{sum(lanes):7.1f} img/s ({share:.0%} of {args.lanes}x the matmul rate), "
                  f"x{sum(lanes) / ours:.2f} over one lane alone", flush=True)
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu: " + cpu_name()
    print(f"model={cfg.model.name} width={cfg.model.width} norm={cfg.norm.name} data={cfg.data.name} "
          f"batch={cfg.trainer.batch_size} eval_batch={cfg.trainer.eval_batch_size} steps={args.steps} "
          f"repeats={args.repeats} threads={torch.get_num_threads()} torch={torch.__version__}\ndevice={device}")


def profile(overrides: list[str]) -> None:
    """Where a training step's and an evaluation's time goes, by operator (torch.profiler), in the
    preset's own setting (channels_last fp32 for the study's presets)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    cfg = compose(overrides)
    torch.manual_seed(cfg.trainer.seed)
    data = datasets.build(cfg.data, cfg.trainer, torch.device("cpu"))
    model = models.build(cfg.model, cfg.norm, data.input_shape, data.num_classes)
    if cfg.trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(i: int) -> None:
        x, y = data.next_batch(i)
        loss = F.cross_entropy(model(in_layout(x, cfg.trainer.channels_last)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    record = RunRecord(cfg.trainer, Path("."), model, optimizer=None, data=data, runlog=NullLog(),
                       writes_checkpoints=False)
    for i in range(5):
        step(i)
    record.evaluate(0)
    for what, work in (("10 training steps", lambda: [step(i) for i in range(10)]),
                       ("one evaluation of the test set", lambda: record.evaluate(0))):
        with profiler(activities=[ProfilerActivity.CPU]) as p:
            work()
        print(f"{what} ({' '.join(overrides)}):")
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        bf16 = [flag for flag in ("amx_bf16", "avx512_bf16") if f" {flag}" in info]
        return f"{name} ({', '.join(bf16) or 'no bf16 instructions'})"
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
