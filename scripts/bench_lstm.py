"""How fast does bnexp's written-out LSTM train, against torch's fused nn.LSTM?

One training step (forward, backward, Adam) of results/bn_rnn's classifier: MNIST rows (28 steps
of 28 pixels), one layer of --hidden units, batch --batch. Steps/s of nn.LSTM (no norm: it has
none), of bnexp's cell with norm=none, batch (per-step BN on both gate terms and the cell) and
layer, eager and under torch.compile, at 1 and 2 threads; then R seeds stacked as replicas
(trainer.replicas), in replica-steps/s. Ratios are to nn.LSTM at the same thread count.

    python scripts/bench_lstm.py
    python scripts/bench_lstm.py --steps 50 --no-compile    # a quick look
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from bench_inception import cpu_name
from torch import nn

from bnexp import models
from bnexp.config import compose
from bnexp.stepper import StackedModels


class FusedLSTM(nn.Module):
    """torch's nn.LSTM over the rows, the classifier on its last hidden state: bnexp's norm=none network."""

    def __init__(self, hidden: int):
        super().__init__()
        self.lstm, self.classifier = nn.LSTM(28, hidden), nn.Linear(hidden, 10)

    def forward(self, x):
        out, _ = self.lstm(x.squeeze(1).transpose(0, 1))
        return self.classifier(out[-1])


def bnexp_lstm(norm: str, hidden: int) -> nn.Module:
    cfg = compose(["model=lstm", f"model.hidden={hidden}", f"norm={norm}"])
    return models.build(cfg.model, cfg.norm, (1, 28, 28), 10)


def steps_per_s(model: nn.Module, batch: int, steps: int, compiled: bool) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if compiled else model
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

    def step():
        loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(5):  # warm-up (and compilation)
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def replica_steps_per_s(norm: str, hidden: int, batch: int, steps: int, replicas: int) -> float:
    nets = [bnexp_lstm(norm, hidden) for _ in range(replicas)]
    stepper = StackedModels(nets, lambda params: torch.optim.Adam(params, lr=1e-3),
                            compose(["model=lstm"]).trainer)
    x, y = torch.randn(replicas, batch, 1, 28, 28), torch.randint(0, 10, (replicas, batch))
    for _ in range(3):
        stepper.step(x, y, 1e-3)
    start = time.perf_counter()
    for _ in range(steps):
        stepper.step(x, y, 1e-3)
    return replicas * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--replicas", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    print(f"torch={torch.__version__} cpu: {cpu_name()} | hidden {args.hidden}, batch {args.batch}, 28 steps of 28, "
          f"{args.steps} timed training steps (Adam)")
    print("\n| threads | network | steps/s | vs nn.LSTM |\n|---|---|---|---|")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        fused = steps_per_s(FusedLSTM(args.hidden), args.batch, args.steps, compiled=False)
        print(f"| {threads} | nn.LSTM (fused) | {fused:.1f} | 1.00 |")
        for norm in ("none", "batch", "layer"):
            for compiled in (False,) if args.no_compile else (False, True):
                rate = steps_per_s(bnexp_lstm(norm, args.hidden), args.batch, args.steps, compiled)
                how = "compiled" if compiled else "eager"
                print(f"| {threads} | bnexp norm={norm}, {how} | {rate:.1f} | {rate / fused:.2f} |", flush=True)
        for norm in ("none", "batch"):
            rate = replica_steps_per_s(norm, args.hidden, args.batch, args.steps // 2, args.replicas)
            print(f"| {threads} | bnexp norm={norm}, {args.replicas} replicas (per replica) | {rate:.1f} | "
                  f"{rate / fused:.2f} |", flush=True)


if __name__ == "__main__":
    main()
