"""What BN costs: training steps/s and inference images/s of a network without a norm, with BN, and
with BN folded into the layer before it (bnexp/evaluation.py fold_batch_norms, the deployment step).

Each figure is the median of --repeats timings, the three settings measured in turn within each
repeat (so that a drift of the machine's speed hits all alike), and is printed as a ratio to the
network without a norm. Models: the paper's MNIST MLP (3 x 100 sigmoid, batch 60) and the
Inception-style net at the CPU scale of results/inception_mnist (width 1/8, pooled small stem,
batch 32, channels_last), on inputs of MNIST's shape.

    python scripts/bench_bn_cost.py
    python scripts/bench_bn_cost.py --threads 1 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from bench_inception import cpu_name

from bnexp import models
from bnexp.config import compose
from bnexp.evaluation import fold_batch_norms

NETS = {  # name: (overrides, training batch, channels_last)
    "mlp (3 x 100 sigmoid)": (["experiment=fig1_mnist"], 60, False),
    "inception (width 1/8)": (["experiment=bn_x5", "scale=inception_mnist_plateau"], 32, True),
}


def build(overrides: list[str], norm: str, channels_last: bool) -> torch.nn.Module:
    cfg = compose([*overrides, f"norm={norm}"])
    torch.manual_seed(0)
    model = models.build(cfg.model, cfg.norm, (1, 28, 28), 10)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def seconds(work, at_least: float = 0.3) -> float:
    """Seconds per call of work(), over as many calls as take `at_least` seconds, after a warm-up."""
    work()  # allocator, kernels
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < at_least:
        work()
        n += 1
    return elapsed / n


def images(n: int, channels_last: bool) -> torch.Tensor:
    x = torch.rand(n, 1, 28, 28)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def training_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def inference(model: torch.nn.Module, x: torch.Tensor):
    model.eval()

    @torch.inference_mode()
    def forward():
        model(x)

    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eval-batch", type=int, default=250)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for net, (overrides, batch, channels_last) in NETS.items():
        x, x_eval = images(batch, channels_last), images(args.eval_batch, channels_last)
        y = torch.randint(0, 10, (batch,))
        plain, bn = build(overrides, "none", channels_last), build(overrides, "batch", channels_last)
        train = {"no norm": training_step(plain, x, y), "BN": training_step(bn, x, y)}
        for _ in range(3):
            train["BN"]()  # moving statistics away from their initial values before folding
        folded = fold_batch_norms(bn)
        infer = {"no norm": inference(plain, x_eval), "BN": inference(bn, x_eval),
                 "BN folded": inference(folded, x_eval)}
        steps = {k: [] for k in train}
        throughput = {k: [] for k in infer}
        for _ in range(args.repeats):
            for k, work in train.items():
                steps[k].append(1 / seconds(work))
            for k, work in infer.items():
                throughput[k].append(args.eval_batch / seconds(work))
        base_steps, base_images = statistics.median(steps["no norm"]), statistics.median(throughput["no norm"])
        training = ", ".join(f"{k} {statistics.median(v):.1f} steps/s ({statistics.median(v) / base_steps:.2f}x)"
                             for k, v in steps.items())
        inferring = ", ".join(f"{k} {statistics.median(v):.0f} img/s ({statistics.median(v) / base_images:.2f}x)"
                              for k, v in throughput.items())
        print(f"{net}: training {training} | inference {inferring}", flush=True)
    print(f"repeats={args.repeats} eval_batch={args.eval_batch} threads={torch.get_num_threads()} "
          f"torch={torch.__version__} cpu: {cpu_name()}")


if __name__ == "__main__":
    main()
