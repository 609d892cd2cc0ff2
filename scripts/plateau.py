"""Has a baseline stopped improving? The pilot's test for a run length (scripts/reproduce_inception.sh).

For each candidate length N it reads the runs' test accuracy up to step N (a run of N steps is the
first N steps of a longer one: batches, learning rate and evaluation steps are functions of the
step alone) and reports how much the best accuracy so far, mean over seeds, gains over the last
quarter, (3N/4, N]. A baseline has plateaued at N when that gain is under --threshold points.

    python scripts/plateau.py SWEEP_DIR --lengths 4000,6000,8000,12000 --out results/inception_mnist/pilot.md
    python scripts/plateau.py SWEEP_DIR --name inception --lengths 4000,8000   # one model of a sweep
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from bnexp.runs import find_run_dirs, load_run


def best_until(accuracy: list[tuple[int, float]], step: int) -> float:
    return max(a for s, a in accuracy if s <= step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--lengths", required=True, help="candidate run lengths in steps, e.g. 4000,8000")
    parser.add_argument("--threshold", type=float, default=0.1, help="points of accuracy (default 0.1)")
    parser.add_argument("--name", help="only the runs of this name (the config's `name`, e.g. inception)")
    parser.add_argument("--out", type=Path, help="also write the table here (markdown)")
    args = parser.parse_args(argv)
    runs = [run for run in map(load_run, find_run_dirs([args.sweep]))
            if args.name is None or run.config.get("name") == args.name]
    if not runs:
        print(f"plateau: error: no runs{f' named {args.name}' if args.name else ''} under {args.sweep}",
              file=sys.stderr)
        return 2
    lengths = [int(n) for n in args.lengths.split(",")]
    longest = min(r.accuracy[-1][0] for r in runs)
    what = f"{args.name} runs" if args.name else "runs"
    lines = [f"{len(runs)} {what} (seeds {', '.join(str(r.seed) for r in runs)}) under {args.sweep}; "
             f"plateau: best accuracy gains < {args.threshold} points over the last quarter.", "",
             "| length N | best accuracy by 3N/4 | best accuracy by N | gain (points) | plateau |",
             "|---:|---:|---:|---:|---|"]
    for n in lengths:
        if n > longest:
            lines.append(f"| {n:,} | - | - | - | runs end at {longest:,} |")
            continue
        before = statistics.fmean(best_until(r.accuracy, 3 * n // 4) for r in runs)
        by_n = statistics.fmean(best_until(r.accuracy, n) for r in runs)
        gain = 100 * (by_n - before)
        lines.append(f"| {n:,} | {100 * before:.2f}% | {100 * by_n:.2f}% | {gain:.2f} | "
                     f"{'yes' if gain < args.threshold else 'no'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
