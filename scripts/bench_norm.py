"""Forward + backward time of bnexp's normalization layers against torch's native BatchNorm.

Prints, per shape, microseconds per step of each layer and the ratio to native BN (target for
batch_paper: <= 1.5x; `--compile` also times it under torch.compile), then the same for a whole
training step of the paper's MNIST network (where a small layer's per-call overhead is shared).

    python scripts/bench_norm.py
    python scripts/bench_norm.py --compile --repeats 200
"""

from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf

from bnexp import models, norm

SHAPES = {"mlp 64x100": ((64, 100), "fc"), "conv 32x64x28x28": ((32, 64, 28, 28), "conv"),
          "conv 32x256x14x14": ((32, 256, 14, 14), "conv")}
VARIANTS = {
    "batch (native)": {"name": "batch", "eps": 1e-5, "momentum": 0.1},
    "batch_paper": {"name": "batch_paper", "eps": 1e-5, "momentum": 0.1},
    "batch_renorm": {"name": "batch_renorm", "eps": 1e-5, "rate": 0.01, "warmup_steps": 0, "rmax": 3.0,
                     "rmax_steps": 1, "dmax": 5.0, "dmax_steps": 1},
    "ghost (16)": {"name": "ghost", "eps": 1e-5, "momentum": 0.1, "virtual_batch": 16},
}


def time_layer(layer, x, repeats: int, device, loss=None) -> float:
    """Median microseconds of one forward + backward pass (of `loss(output)`, else of output . random)."""
    grad = torch.randn_like(x) if loss is None else None
    times = []
    for i in range(repeats + 10):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        x.grad = None
        out = layer(x)
        if loss is None:
            out.backward(grad)
        else:
            loss(out).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 10:  # warm-up (and compilation) first
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--compile", action="store_true", help="also time batch_paper under torch.compile")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} repeats={args.repeats}")
    for shape_name, (shape, kind) in SHAPES.items():
        x = torch.randn(shape, device=device, requires_grad=True)
        results = {}
        for name, cfg in VARIANTS.items():
            layer = norm.make(OmegaConf.create(cfg))(shape[1], kind).to(device)
            results[name] = time_layer(layer, x, args.repeats, device)
            if name == "batch_paper" and args.compile:
                results["batch_paper (compiled)"] = time_layer(torch.compile(layer), x, args.repeats, device)
        native = results["batch (native)"]
        print(f"{shape_name}: " + ", ".join(f"{n} {t:.0f} us ({t / native:.2f}x)" for n, t in results.items()))
    print(model_step(args.repeats, args.compile, device))


def model_step(repeats: int, compile: bool, device) -> str:
    """One training step (forward, loss, backward) of the 3 x 100 sigmoid MLP on a batch of 60."""
    x = torch.randn(60, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (60,), device=device)
    mlp = OmegaConf.create({"name": "mlp", "hidden": [100, 100, 100], "activation": "sigmoid", "init_std": 0.1})
    results = {}
    for name in ("batch (native)", "batch_paper"):
        model = models.build(mlp, OmegaConf.create(VARIANTS[name]), (1, 28, 28), 10).to(device)
        def loss(logits):
            return torch.nn.functional.cross_entropy(logits, y)

        results[name] = time_layer(model, x, repeats, device, loss)
        if compile:
            results[f"{name} (compiled)"] = time_layer(torch.compile(model), x, repeats, device, loss)
    native = results["batch (native)"]
    return "mlp model step, batch 60: " + ", ".join(f"{n} {t:.0f} us ({t / native:.2f}x)" for n, t in results.items())


if __name__ == "__main__":
    main()
