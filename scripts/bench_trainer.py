"""bnexp's trainer against a bare PyTorch loop: steps/s of each and their ratio.

Both train the same model on the same device-resident data with the same batch size, in one
process, alternating so that machine noise hits both alike. bnexp runs as configured (evaluation
every eval_every steps with the percentile probe on, TensorBoard and CSV logging); the bare loop
does nothing but train. Target: ratio >= 0.9 at eval_every=500.

    python scripts/bench_trainer.py                      # the Figure 1 MLP on MNIST with BN
    python scripts/bench_trainer.py --steps 2000 norm=none data=synthetic
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bnexp import data as datasets
from bnexp import models
from bnexp.builders import pick_device
from bnexp.config import compose
from bnexp.train import run


def bare_loop(cfg, steps: int) -> float:
    """The loop a researcher would write by hand: steps/s, no evaluation, no logging."""
    device = pick_device(cfg.trainer.device)
    torch.manual_seed(cfg.trainer.seed)
    source = datasets.build(cfg.data, cfg.trainer, device)
    x_all, y_all, batch = source.train_x, source.train_y, cfg.trainer.batch_size
    model = models.build(cfg.model, cfg.norm, source.input_shape, source.num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr * cfg.optim.lr_mult, momentum=cfg.optim.momentum)
    t = cfg.trainer  # the same speed flags as the trainer, written the usual way
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x_all = x_all.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if t.compile else model
    per_epoch = len(x_all) // batch
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for step in range(steps):
        if step % per_epoch == 0:
            perm = torch.randperm(len(x_all), device=device)
        idx = perm[(step % per_epoch) * batch : (step % per_epoch + 1) * batch]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(t.amp)):
            loss = F.cross_entropy(forward(x_all[idx]).float(), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def bnexp_trainer(cfg, steps: int, training_only: bool = False) -> float:
    """Steps/s of a whole bnexp run (evaluations included), or of its training steps alone, from
    the perf/steps_per_s it logs for every log window (which excludes evaluation). With
    trainer.replicas, the replicated step's (each of its steps trains every replica)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, summary = next(iter(run(cfg, Path(tmp)).items()))
        if not training_only:
            return summary["steps_per_s"]
        rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
        rates = sorted((int(step), float(value)) for step, tag, value in rows if tag == "perf/steps_per_s")
        ends = [step for step, _ in rates]
        windows = [end - start for start, end in zip([0, *ends[:-1]], ends, strict=True)]
        return sum(windows) / sum(n / rate for n, (_, rate) in zip(windows, rates, strict=True))


def bench_config(overrides: list[str], steps: int):
    """The config a benchmark trains: `overrides` for `steps` steps, without a progress bar."""
    return compose([f"trainer.max_steps={steps}", "trainer.progress=false", *overrides])


def compare(overrides: list[str], steps: int, repeats: int, training_only: bool = False):
    """steps/s of the bare loop and of bnexp, alternating, `repeats` times each."""
    cfg = bench_config(overrides, steps)
    results = {"bare loop": [], "bnexp": []}
    for _ in range(repeats):
        results["bare loop"].append(bare_loop(cfg, steps))
        results["bnexp"].append(bnexp_trainer(cfg, steps, training_only))
    return cfg, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for bnexp train")
    args = parser.parse_args()
    cfg, results = compare(args.overrides, args.steps, args.repeats)
    print(f"model={cfg.model.name} norm={cfg.norm.name} data={cfg.data.name} batch={cfg.trainer.batch_size} "
          f"steps={args.steps} eval_every={cfg.trainer.eval_every} device={pick_device(cfg.trainer.device)} "
          f"threads={torch.get_num_threads()} repeats={args.repeats}")
    for name, values in results.items():
        print(f"  {name:9s} best {max(values):8.1f} steps/s, median {statistics.median(values):8.1f}   "
              f"runs: {', '.join(f'{v:.1f}' for v in values)}")
    # On a noisy machine the best of N runs is the least disturbed one (as timeit reports).
    pairs = [ours / bare for bare, ours in zip(results["bare loop"], results["bnexp"], strict=True)]
    print(f"  ratio bnexp / bare loop: {max(results['bnexp']) / max(results['bare loop']):.3f} (best of each), "
          f"{statistics.median(pairs):.3f} (median of back-to-back pairs)  target >= 0.9")


if __name__ == "__main__":
    main()
