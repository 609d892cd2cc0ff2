"""Evaluation of the 10,000 test images by the Inception-style network, in each way it could be
computed: unfolded (the eval-mode network), BN folded with out-of-place ReLUs (bnexp before),
BN folded with in-place ReLUs (bnexp's, trainer.eval_fold_bn), the latter with denormal floats
flushed to zero (torch.set_flush_denormal, on this thread), compiled by torch.compile (inductor;
its compilation timed apart), and in bf16 autocast (not fp32).

The variants take turns, round after round, so that the machine's drift hits them alike; each
figure is the best round, in images/s and as a share of the fp32 matmul rate measured in the same
run (bench_inception.py's yardstick). Accuracy and loss are printed beside them: the fp32 ways
compute the same function, so they must agree to float rounding. The network is the config's at
its initialization, or a trained one from a run's checkpoint (--checkpoint), as a study's
evaluations see it; the percentile probe is left out (it is the same for all).

    python scripts/bench_evaluation.py --threads 1
    python scripts/bench_evaluation.py --threads 1 --checkpoint RUN_DIR/checkpoints/step_000024000.pt -- \\
        experiment=bn_baseline scale=inception_fashion_mnist_plateau
"""

from __future__ import annotations

import argparse
import pickle
import time

import torch
from bench_inception import SCALED, cpu_name, flops, matmul_flops_per_s
from torch import nn

from bnexp import data as datasets
from bnexp import models
from bnexp.builders import in_layout
from bnexp.config import compose
from bnexp.evaluation import fold_batch_norms, test_metrics


def out_of_place(folded: nn.Module) -> nn.Module:
    """The folded network as bnexp evaluated it before: its ReLUs out of place."""
    for module in folded.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return folded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); a study's lane uses 1")
    parser.add_argument("--checkpoint", help="a run's checkpoint (.pt) whose model to evaluate")
    parser.add_argument("overrides", nargs="*", default=SCALED)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose([*args.overrides, "trainer.channels_last=true"])
    matmul, (_, image_flops) = matmul_flops_per_s(), flops(args.overrides)
    torch.manual_seed(cfg.trainer.seed)
    data = datasets.build(cfg.data, cfg.trainer, torch.device("cpu"))
    model = models.build(cfg.model, cfg.norm, data.input_shape, data.num_classes)
    if args.checkpoint:
        try:
            model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=False)["model"])
        except (OSError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as e:
            raise SystemExit(f"bench_evaluation: {args.checkpoint} is not a checkpoint of this config's model "
                             f"({str(e).splitlines()[0]})") from None
    model.to(memory_format=torch.channels_last).eval()

    def prepare(x):
        return in_layout(x, True)

    folded, out_of_place_relu = fold_batch_norms(model), out_of_place(fold_batch_norms(model))
    started = time.perf_counter()
    compiled = torch.compile(fold_batch_norms(model))
    with torch.inference_mode():
        compiled(prepare(next(iter(data.eval_batches()))[0]))
    compile_s = time.perf_counter() - started

    def bf16(net):
        def evaluate():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return test_metrics(net, data, prepare)
        return evaluate

    def denormals_flushed(net):
        def evaluate():
            torch.set_flush_denormal(True)
            try:
                return test_metrics(net, data, prepare)
            finally:
                torch.set_flush_denormal(False)
        return evaluate

    variants = {
        "unfolded (eval mode)": lambda: test_metrics(model, data, prepare),
        "folded, ReLU out of place": lambda: test_metrics(out_of_place_relu, data, prepare),
        "folded (bnexp's)": lambda: test_metrics(folded, data, prepare),
        "folded, denormals flushed": denormals_flushed(folded),
        "folded, compiled": lambda: test_metrics(compiled, data, prepare),
        "folded, bf16 autocast": bf16(folded),
    }
    best, found = dict.fromkeys(variants, float("inf")), {}
    for round_ in range(args.rounds + 1):  # round 0 warms up and is not counted
        for name, evaluate in variants.items():
            started = time.perf_counter()
            found[name] = evaluate()
            if round_:
                best[name] = min(best[name], time.perf_counter() - started)
    images = sum(len(y) for _, y in data.eval_batches())
    reference = best["folded, ReLU out of place"]
    print(f"yardstick: 1024x1024 fp32 matmul {matmul / 1e9:.1f} GFLOP/s; one image's inference "
          f"{image_flops / 1e6:.1f} MFLOP; torch.compile of the folded network {compile_s:.1f} s")
    for name, seconds in best.items():
        accuracy, loss = found[name]
        rate = images / seconds
        print(f"{name:28s} {rate:7.1f} img/s ({rate * image_flops / matmul:4.0%} of matmul)  "
              f"x{reference / seconds:.2f} over folded out of place | accuracy {accuracy:.4f} loss {loss:.6f}")
    print(f"model={cfg.model.name} width={cfg.model.width} norm={cfg.norm.name} data={cfg.data.name} "
          f"eval_batch={cfg.trainer.eval_batch_size} checkpoint={args.checkpoint or 'none (initialization)'} "
          f"rounds={args.rounds} threads={torch.get_num_threads()} torch={torch.__version__}\n"
          f"device=cpu: {cpu_name()}")


if __name__ == "__main__":
    main()
