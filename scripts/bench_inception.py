"""Training images/s of the Inception-style network: bnexp's trainer vs a bare PyTorch loop.

Training throughput only: bnexp's figure comes from the perf/steps_per_s it logs per log window,
which leaves out its evaluations (bench_trainer.py measures whole runs, evaluation included).

The scaled model of results/inception_mnist (BN-x5 recipe, width 1/8, MNIST) by default. On a CPU
it compares the plain setting; with a GPU also bf16 autocast, channels_last and torch.compile,
alone and together, each as the ratio bnexp / bare loop and as a speed-up over the plain bare loop.

    python scripts/bench_inception.py
    python scripts/bench_inception.py --steps 300 experiment=bn_x5 data=cifar10 model.width=1
"""

from __future__ import annotations

import argparse

import torch
from bench_trainer import compare

FLAGS = {
    "plain": [],
    "amp (bf16)": ["trainer.amp=true"],
    "channels_last": ["trainer.channels_last=true"],
    "compile": ["trainer.compile=true"],
    "all three": ["trainer.amp=true", "trainer.channels_last=true", "trainer.compile=true"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--all-flags", action="store_true", help="on a CPU too (slow: compile takes minutes)")
    parser.add_argument("overrides", nargs="*", default=["experiment=bn_x5", "scale=inception_mnist_cpu",
                                                          "trainer.eval_every=100000", "trainer.log_every=25"])
    args = parser.parse_args()
    settings = FLAGS if torch.cuda.is_available() or args.all_flags else {"plain": []}
    plain_bare = None
    for name, flags in settings.items():
        cfg, results = compare([*args.overrides, *flags], args.steps, args.repeats, training_only=True)
        bare, ours = max(results["bare loop"]), max(results["bnexp"])  # best of N: least disturbed
        plain_bare = plain_bare or bare
        images = cfg.trainer.batch_size
        print(f"{name:14s} bare {bare * images:8.1f} img/s  bnexp {ours * images:8.1f} img/s  "
              f"ratio {ours / bare:.3f}  speed-up over plain {ours / plain_bare:.2f}x", flush=True)
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"model={cfg.model.name} width={cfg.model.width} norm={cfg.norm.name} data={cfg.data.name} "
          f"batch={cfg.trainer.batch_size} steps={args.steps} repeats={args.repeats} device={device} "
          f"threads={torch.get_num_threads()}")


if __name__ == "__main__":
    main()
