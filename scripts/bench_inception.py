"""Training and evaluation speed of the Inception-style network under each of bnexp's speed
settings: bf16 autocast, channels_last, torch.compile, alone and together.

Training: images/s of bnexp's trainer (its logged perf/steps_per_s, evaluation left out) and of
a bare PyTorch loop with the same settings, their ratio, and the speed-up over the plain bare loop.
Evaluation: images/s of bnexp's own evaluation (the whole test set in inference mode, with the
probe, in batches of trainer.eval_batch_size). Evaluation runs the uncompiled module (where the
probe's hooks live), so compile changes training only.

The scaled model of results/inception_mnist (BN-x5 recipe, width 1/8, MNIST) by default.

    python scripts/bench_inception.py                       # every setting (compile takes minutes on a CPU)
    python scripts/bench_inception.py --settings plain amp+channels_last
    python scripts/bench_inception.py --steps 300 -- experiment=bn_x5 data=cifar10 model.width=1
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from bench_trainer import compare

from bnexp import data as datasets
from bnexp import models
from bnexp.builders import pick_device
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
}
SCALED = ["experiment=bn_x5", "scale=inception_mnist_cpu", "trainer.log_every=25"]


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
    parser.add_argument("overrides", nargs="*", default=SCALED)
    args = parser.parse_args()
    plain_bare = None
    for name in args.settings:
        overrides = [*args.overrides, "trainer.eval_every=100000", *SETTINGS[name]]
        cfg, results = compare(overrides, args.steps, args.repeats, training_only=True)
        bare, ours = max(results["bare loop"]), max(results["bnexp"])  # best of N: least disturbed
        plain_bare = plain_bare or bare
        images = cfg.trainer.batch_size
        evaluation = evaluation_images_per_s(overrides, args.repeats)
        print(f"{name:26s} train: bare {bare * images:7.1f} img/s  bnexp {ours * images:7.1f} img/s  "
              f"ratio {ours / bare:.3f}  x{ours / plain_bare:.2f} over plain | "
              f"evaluation {evaluation:7.1f} img/s", flush=True)
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu: " + cpu_name()
    print(f"model={cfg.model.name} width={cfg.model.width} norm={cfg.norm.name} data={cfg.data.name} "
          f"batch={cfg.trainer.batch_size} eval_batch={cfg.trainer.eval_batch_size} steps={args.steps} "
          f"repeats={args.repeats} threads={torch.get_num_threads()} torch={torch.__version__}\ndevice={device}")


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
