"""The learning rate a baseline gets: of a sweep's runs, the lr whose runs have the highest best test
accuracy, mean over their seeds (ties: the smaller lr). Prints the lr alone, so a script can use it;
--out writes the table it was chosen from.

    python scripts/best_lr.py SWEEP_DIR [--out results/fig1_fmnist/lr_sweep/choice.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from bnexp.runs import find_run_dirs, load_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path, help="write the table here (markdown)")
    args = parser.parse_args(argv)
    by_lr: dict[float, list[float]] = defaultdict(list)
    for run in map(load_run, find_run_dirs([args.sweep])):
        lr = float(run.config["optim.lr"]) * float(run.config.get("optim.lr_mult", 1.0))
        by_lr[lr].append(max(a for _, a in run.accuracy))
    if not by_lr:
        print(f"best_lr: error: no runs under {args.sweep}", file=sys.stderr)
        return 2
    means = {lr: statistics.fmean(bests) for lr, bests in sorted(by_lr.items())}
    best = max(means, key=lambda lr: (means[lr], -lr))
    lines = [f"Runs under {args.sweep}: best test accuracy per learning rate, mean (min, max) over seeds; "
             f"chosen: the highest mean, lr {best:g}.", "", "| lr | seeds | best accuracy | min | max |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {lr:g}{' (chosen)' if lr == best else ''} | {len(by_lr[lr])} | {100 * means[lr]:.2f}% | "
              f"{100 * min(by_lr[lr]):.2f}% | {100 * max(by_lr[lr]):.2f}% |" for lr in means]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    print(f"{best:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
