"""Gradient flow through time at initialization (Cooijmans et al. 2016, Figure 1): one batch, no
training. An LSTM (model=lstm) reads each image pixel by pixel (784 steps); the loss is the
classifier's on the last hidden state; for each step t, ||dL/dh_t|| over the batch. Variants: BN
with gain 1 and 0.1 (norm.gain_init), LN, no norm; each seed draws its own weights and batch.

    python scripts/bn_rnn_gradient_flow.py --data mnist --seeds 10 --out results/bn_rnn/gradient_flow/mnist
    python scripts/bn_rnn_gradient_flow.py ... model.h0_noise=0.1   # overrides for every variant

Writes to --out: runs.csv, one row per seed and variant, with grad_orders = log10(||dL/dh_1|| /
||dL/dh_T||), the orders of magnitude the gradient gains (or, negative, loses) from the last step
back to the first, computed in float64, where a vanished gradient still has a size; curves.csv,
every step's norm; gradient_flow.png; then decides the claims file (default
results/bn_rnn/gradient_flow/claims.yaml) with `bnexp report runs.csv --claims`, unless a run's
gradient is not finite (its status: failed): then it says which, and writes no verdict.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from bnexp import data as datasets
from bnexp import models
from bnexp.config import compose, validate
from bnexp.models.lstm import as_sequence
from bnexp.report import main as report
from bnexp.summary import provenance

VARIANTS = ("norm=batch,norm.gain_init=1.0", "norm=batch,norm.gain_init=0.1", "norm=layer", "norm=none")
BASELINE = VARIANTS[0]


def config(overrides: list[str]):
    """The model of `overrides` reading pixels, its settings checked."""
    cfg = compose(["model=lstm", "model.sequence=pixels", *overrides])
    validate(cfg)
    return cfg


def gradient_norms(cfg, seed: int, data) -> list[float]:
    """||dL/dh_t|| for t = 1..T, for the model of `cfg` at seed's initial weights on seed's first
    batch of `data` (the dataset of `cfg`, built once)."""
    data = data.reseeded(seed)
    torch.manual_seed(seed)  # as a training run of this seed draws its weights
    model = models.build(cfg.model, cfg.norm, data.input_shape, data.num_classes).train().double()
    x, y = data.next_batch(0)
    x = x.double()  # a gradient that vanishes through 784 steps underflows float32 (below 1e-38) to 0
    [layer] = model.layers
    xs = layer.input_terms(as_sequence(x, cfg.model.sequence))
    h, c = layer.initial_state(xs)
    hs = []
    for t, x_term in enumerate(xs):
        h, c = layer.step(x_term, h, c, t)
        h.retain_grad()  # the tensor the next step reads: its gradient is all that flows back through h_t
        hs.append(h)
    F.cross_entropy(model.classifier(h), y).backward()
    return [h.grad.norm().item() for h in hs]


def figure(curves: dict[str, list[list[float]]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, runs in curves.items():
        logs = torch.tensor(runs, dtype=torch.float64).log10()  # [seeds, T]; float64: sizes down to 1e-308
        steps = range(1, logs.shape[1] + 1)
        line, = ax.plot(steps, logs.median(0).values, label=f"{name} (median of {len(runs)} seeds)")
        ax.fill_between(steps, logs.min(0).values, logs.max(0).values, color=line.get_color(), alpha=0.2)
    ax.set(xlabel="time step t (pixel)", ylabel="log10 ||dL/dh_t||")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mnist", choices=("mnist", "fashion_mnist"))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--claims", type=Path, default=Path("results/bn_rnn/gradient_flow/claims.yaml"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every variant (model.h0_noise=0.1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    commit = provenance()["git_commit"] or ""
    rows, curves = [], {}
    data = datasets.build(compose([f"data={args.data}"]).data, compose([]).trainer, torch.device("cpu"))
    for name in VARIANTS:
        curves[name] = []
        cfg = config([f"data={args.data}", *args.overrides, *name.split(",")])
        for seed in range(args.seeds):
            norms = gradient_norms(cfg, seed, data)
            curves[name].append(norms)
            orders = math.log10(norms[0] / norms[-1]) if norms[0] > 0 and norms[-1] > 0 else float("nan")
            rows.append({"variant": name, "baseline": name == BASELINE, "run": f"{name}/seed={seed}", "seed": seed,
                         "status": "completed" if math.isfinite(orders) else "failed", "grad_orders": orders,
                         "first_step_norm": norms[0], "last_step_norm": norms[-1], "git_commit": commit})
            print(f"{name} seed {seed}: log10 ||dL/dh_1|| / ||dL/dh_T|| = {orders:.2f}", flush=True)
    with open(args.out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(args.out / "curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "seed", "step", "grad_norm"])
        for name, runs in curves.items():
            w.writerows((name, seed, t + 1, v) for seed, norms in enumerate(runs) for t, v in enumerate(norms))
    setting = " ".join(args.overrides) or "h_0 = 0"
    figure(curves, f"{args.data}, pixel by pixel, at initialization, {setting}\n(torch {torch.__version__}, "
           f"{platform.machine()})", args.out / "gradient_flow.png")
    broken = [r["run"] for r in rows if r["status"] != "completed"]
    if broken:  # a gradient beyond float64's range: nothing to compare, and no verdict that looks like one
        for stale in ("verdict.md", "verdict.csv"):
            (args.out / stale).unlink(missing_ok=True)
        print(f"no verdicts: {len(broken)} of {len(rows)} runs' gradients are not finite ({', '.join(broken)})")
        return 0
    return report([str(args.out / "runs.csv"), "--claims", str(args.claims), "--out", str(args.out)])


if __name__ == "__main__":
    sys.exit(main())
