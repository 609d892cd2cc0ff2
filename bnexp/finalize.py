"""`bnexp finalize RUN_DIR`: the paper's inference statistics for a trained run, re-evaluated.

The paper's BN network for inference (Algorithm 2) normalizes with population statistics: the
mean of the batch means and m/(m-1) times the mean of the batch variances over many training
batches, computed after training. Runs track moving averages instead. This command loads a run's
newest checkpoint, evaluates the test set with the moving averages the run ended with, replaces
them by the population statistics over `--batches` training batches (the batches that would have
followed the last step) and evaluates again: the same weights, the two kinds of statistics. It
writes RUN_DIR/finalized.json and leaves the run itself as it was.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnexp.config import load_run_config
from bnexp.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bnexp finalize", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--batches", type=int, default=100, help="training batches to average over (default 100)")
    args = parser.parse_args(argv)
    try:
        result = finalize(args.run_dir, args.batches)
    except UserError as e:
        print(e, file=sys.stderr)
        return 2
    for kind in ("moving_average", "population"):
        print(f"{kind:>14}: test error {100 * (1 - result[kind]['accuracy']):.2f}%, loss {result[kind]['loss']:.4f}")
    print(f"wrote {args.run_dir / 'finalized.json'}")
    return 0


def finalize(run_dir: Path, batches: int) -> dict:
    from bnexp import checkpoint, models, rundir
    from bnexp import data as datasets
    from bnexp.builders import pick_device
    from bnexp.evaluation import test_metrics
    from bnexp.norm import finalize_population, population_layers
    from bnexp.summary import write_json_atomic

    if batches < 1:
        raise UserError(f"--batches must be >= 1, got {batches}")
    cfg = load_run_config(run_dir)
    with rundir.owned(run_dir):  # not while a run trains into it
        state = checkpoint.load_latest(run_dir)
        if state is None:
            raise UserError(f"{run_dir} has no checkpoint to finalize")
        device = pick_device(cfg.trainer.device)
        data = datasets.build(cfg.data, cfg.trainer, device)
        model = models.build(cfg.model, cfg.norm, data.input_shape, data.num_classes).to(device)
        model.load_state_dict(state["model"])
        if not population_layers(model):
            raise UserError(f"norm={cfg.norm.name} has no BN population statistics to finalize "
                            "(batch, batch_paper and ghost have)")
        moving = test_metrics(model, data)
        step = state["step"]
        used = finalize_population(model, (data.next_batch(step + i)[0] for i in range(batches)))
        population = test_metrics(model, data)
        result = {
            "checkpoint_step": step,
            "batches": used,
            "examples": used * cfg.trainer.batch_size,
            "moving_average": {"accuracy": moving[0], "loss": moving[1]},
            "population": {"accuracy": population[0], "loss": population[1]},
        }
        write_json_atomic(run_dir / "finalized.json", result)
    return result
