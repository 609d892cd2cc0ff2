"""Every probe of the ICS study at a glance: for each learning rate, phase of training and net, each
probe's median over a run's probed steps in that phase (bnexp.report.phase_median, as runs.csv's
`<tag>@<first>-<last>` columns that the claims read), then mean ± std over seeds.

    python scripts/ics_medians.py SWEEP_DIR... --out results/ics_mnist/medians.md [--phases 1-2500,25001-50000]

Phases, because the nets differ most early: late in training a net that fits its batches has
small gradients and a flat loss along them, whatever made it so.

Reads the runs that scripts/reproduce_ics_mnist.sh made (through bnexp.runs); ICS l2 and cos per
weight layer, the one-step shift of each nonlinearity's input mean and std, the three landscape
quantities, the training loss (for context: a net that fits its batches has small gradients), and
the best test accuracy. Lower ICS l2, higher cos, smaller shifts: more stable; smaller
landscape quantities: a smoother landscape along the gradient.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from bnexp.report import phase_median
from bnexp.runs import find_run_dirs, load_run
from bnexp.summary import ENDED

NETS = ("none", "batch", "noisy_batch")


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3g} ± {std:.2g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--phases", default="1-2500,25001-50000",
                        help="step ranges (inclusive) to summarize besides the whole run, e.g. 1-2500,25001-50000")
    args = parser.parse_args()
    phases = [("whole run", 0, 10**12)]
    for text in filter(None, args.phases.split(",")):
        first, last = (int(v) for v in text.split("-"))
        phases.append((f"steps {first:,}-{last:,}", first, last))
    # (lr, phase, net) -> tag -> per-run medians
    cells: dict[tuple[float, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in find_run_dirs(args.sweeps):
        run = load_run(path)
        if run.status not in ENDED:
            print(f"left out {path}: {run.status}", file=sys.stderr)
            continue
        lr, net = float(run.config["optim.lr"]), run.config["norm.name"]
        for phase, first, last in phases:
            cell = cells[lr, phase, net]
            cell["best accuracy (%)"].append(100 * run.summary["best_accuracy"])
            for tag in run.curves:
                if tag.startswith(("ics/", "shift/", "landscape/", "train/loss")):
                    if (median := phase_median(run, tag, (first, last))) is not None:
                        cell[tag].append(median)
    command = " ".join(["python scripts/ics_medians.py", *map(str, args.sweeps), "--out", str(args.out),
                        "--phases", args.phases])
    lines = [f"Each probe's median over a run's probed steps in a phase, mean ± std over seeds; made by `{command}`.",
             ""]
    for lr in sorted({lr for lr, _, _ in cells}, reverse=True):
        for phase, _, _ in phases:
            nets = [n for n in NETS if (lr, phase, n) in cells]
            tags = sorted({t for n in nets for t in cells[lr, phase, n]}, key=lambda t: (not t.startswith("best"), t))
            # a first layer has nothing before it: its G' is G (l2 0, cos 1) by definition
            trivial = {t.rsplit("/", 1)[0] for t in tags if t.endswith("/l2") and not any(
                any(cells[lr, phase, n].get(t, [])) for n in nets)}
            tags = [t for t in tags if t.rsplit("/", 1)[0] not in trivial]
            runs = ", ".join(f"{n}: {len(cells[lr, phase, n]['best accuracy (%)'])}" for n in nets)
            lines += [f"## lr {lr:g}, {phase} (runs: {runs})", "", "| probe | " + " | ".join(nets) + " |",
                      "|---|" + "---:|" * len(nets)]
            lines += [f"| {tag} | " + " | ".join(fmt(cells[lr, phase, n].get(tag, [])) for n in nets) + " |"
                      for tag in tags]
            lines.append("")
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
