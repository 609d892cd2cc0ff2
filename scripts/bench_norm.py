"""Forward + backward time of bnexp's normalization layers against torch's native BatchNorm.

Prints, per shape, microseconds per step of each layer and the ratio to native BN (target for
batch_paper: <= 1.5x; `--compile` also times it under torch.compile), then the same for a whole
training step of the paper's MNIST network (where a small layer's per-call overhead is shared),
then bnexp's local response normalization against torch's (the Inception baseline's stem at the CPU
scale of results/inception_mnist: training step of 32, evaluation batch of 250, channels_last).

    python scripts/bench_norm.py
    python scripts/bench_norm.py --compile --repeats 200
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_inception import cpu_name
from omegaconf import OmegaConf

from bnexp import models, norm
from bnexp.config import compose
from bnexp.models.inception import LocalResponseNorm

SHAPES = {"mlp 64x100": ((64, 100), "fc"), "conv 32x64x28x28": ((32, 64, 28, 28), "conv"),
          "conv 32x256x14x14": ((32, 256, 14, 14), "conv")}
VARIANTS = {
    "batch (native)": {"name": "batch", "eps": 1e-5, "momentum": 0.1},
    "batch_paper": {"name": "batch_paper", "eps": 1e-5, "momentum": 0.1},
    "batch_renorm": {"name": "batch_renorm", "eps": 1e-5, "rate": 0.01, "warmup_steps": 0, "rmax": 3.0,
                     "rmax_steps": 1, "dmax": 5.0, "dmax_steps": 1},
    "ghost (16)": {"name": "ghost", "eps": 1e-5, "momentum": 0.1, "virtual_batch": 16},
}


def time_layer(layer, x, repeats: int, device, loss=None, backward=True) -> float:
    """Median microseconds of one forward + backward pass (of `loss(output)`, else of output . random),
    or of the forward pass alone."""
    grad = torch.randn_like(x) if loss is None else None
    times = []
    for i in range(repeats + 10):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        x.grad = None
        out = layer(x)
        if backward and loss is None:
            out.backward(grad)
        elif backward:
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
    name = torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
    print(f"device={device} ({name}) threads={torch.get_num_threads()} torch={torch.__version__} "
          f"repeats={args.repeats}")
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
    print(local_response_norm(args.repeats, device))


def model_step(repeats: int, compile: bool, device) -> str:
    """One training step (forward, loss, backward) of the 3 x 100 sigmoid MLP on a batch of 60."""
    x = torch.randn(60, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (60,), device=device)
    mlp = compose(["model.hidden=[100,100,100]", "model.init_std=0.1"]).model
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


def local_response_norm(repeats: int, device) -> str:
    """bnexp's LocalResponseNorm against torch's, as the Inception baseline's small stem uses it."""
    results = {}
    for name, layer in (("torch", torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)),
                        ("bnexp", LocalResponseNorm(5, 1e-4, 0.75, 1.0))):
        x = torch.randn(32, 24, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
        train = time_layer(layer, x.requires_grad_(), repeats, device)
        batch = torch.randn(250, 24, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            evaluation = time_layer(layer, batch, repeats // 5 + 1, device, backward=False)
        results[name] = (train, evaluation)
    (t_train, t_eval), (b_train, b_eval) = results["torch"], results["bnexp"]
    return (f"local response norm, 32x24x28x28 forward+backward: torch {t_train:.0f} us, bnexp {b_train:.0f} us "
            f"({t_train / b_train:.1f}x faster); 250x24x28x28 inference: torch {t_eval:.0f} us, "
            f"bnexp {b_eval:.0f} us ({t_eval / b_eval:.1f}x faster)")


if __name__ == "__main__":
    main()
