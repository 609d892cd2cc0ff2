"""Why the recurrent-BN protocol puts noise in h_0 (configs/experiment/lstm.yaml, model.h0_noise):
how many images have ink in each of their first and last rows, and the first training step's
gradient norm of each preset, with h_0 = 0 and with h_0 noise, on each dataset.

    python scripts/bn_rnn_blank_rows.py --out results/bn_rnn/blank_rows.md

MNIST's first row is 0 in every image: with h_0 = 0 the first step's terms are zero vectors
(the biases start at 0), and a norm of a zero vector multiplies the gradient by gain / sqrt(eps).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from bnexp import data as datasets
from bnexp import models
from bnexp.config import compose, validate

PRESETS = ("lstm", "bn_lstm", "bn_lstm_gain1", "bn_lstm_input", "ln_lstm")
ROWS = (0, 1, 2, 3, 24, 25, 26, 27)


def ink_shares(data) -> list[float]:
    """The share of training images with ink (a pixel above the blank value) in each row of ROWS."""
    cfg = compose([f"data={data}"])
    blank, source = datasets.blank(cfg.data), datasets.build(cfg.data, cfg.trainer, torch.device("cpu"))
    ink = (source.train_x[:, 0] > blank[0] + 1e-6).any(2).float().mean(0)  # [rows]
    return [ink[r].item() for r in ROWS]


def first_gradient_norm(overrides: list[str]) -> float:
    """The global gradient norm of the preset's first training step (seed 0's weights and batch)."""
    cfg = compose(overrides)
    validate(cfg)
    source = datasets.build(cfg.data, cfg.trainer, torch.device("cpu"))
    torch.manual_seed(0)
    model = models.build(cfg.model, cfg.norm, source.input_shape, source.num_classes).train()
    x, y = source.next_batch(0)
    F.cross_entropy(model(x), y).backward()
    return torch.stack([p.grad.norm() for p in model.parameters()]).norm().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = [f"# Blank rows and the first gradient (`python scripts/bn_rnn_blank_rows.py --out {args.out}`)", "",
             f"torch {torch.__version__}, {platform.machine()}.", "",
             "Share of the 60,000 training images with ink in a row:", "",
             "| data | " + " | ".join(f"row {r}" for r in ROWS) + " |", "|---|" + "---:|" * len(ROWS)]
    for data in ("mnist", "fashion_mnist"):
        lines.append(f"| {data} | " + " | ".join(f"{s:.2%}" for s in ink_shares(data)) + " |")
    lines += ["", "The first training step's gradient norm (seed 0's weights and batch), before clipping:", "",
              "| preset | MNIST, h_0 = 0 | MNIST, h_0 noise 0.1 | Fashion-MNIST, h_0 = 0 | Fashion-MNIST, noise 0.1 |",
              "|---|---:|---:|---:|---:|"]
    for preset in PRESETS:
        norms = [first_gradient_norm([f"experiment={preset}", f"data={data}", f"model.h0_noise={noise}"])
                 for data in ("mnist", "fashion_mnist") for noise in (0.0, 0.1)]
        lines.append(f"| {preset} | " + " | ".join(f"{n:.3g}" for n in norms) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
