"""The BN-under-shift figures (results/bn_shift/<data>): from a report's runs.csv, the columns
`bnexp evaluate` wrote (evaluate/<set>/<label>), each point a mean over the variant's finished runs
with a 95% Student t interval.

  corruptions.png  test accuracy on the clean set and each corruption, for BN (the baseline
                   variant) with each way of getting its statistics, and the controls (LN, no norm)
  adapt.png        accuracy against n, the test images BN's statistics are re-estimated on, with
                   and without a prior, on the clean set and over all corruptions; the moving
                   averages as a line
  over_training.png  (with --over-training SWEEP_DIR) precise minus moving-average accuracy on the
                   clean set at each kept checkpoint, per BN momentum (bnexp evaluate --step all)

    python scripts/bn_shift_figures.py results/bn_shift/mnist/runs.csv --out results/bn_shift/mnist
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

from bnexp import shift, stats
from bnexp.claims import finished_by_variant, read_runs_csv

BN = "norm=batch,norm.momentum=0.1"  # PyTorch's default momentum: the study's BN
MODES = {"running": "moving averages", "precise": "precise (10,000 train images)",
         "target_n512_prior0": "re-estimated on 512 test images",
         "batch_shuffled_60": "batch statistics (60, shuffled)"}
CONTROLS = {"norm=layer,norm.momentum=-": "LN", "norm=none,norm.momentum=-": "no norm"}
TARGET = re.compile(r"evaluate/(clean|shifted)/target_n(\d+)_prior(\d+)")


def estimate(runs: list[dict], column: str) -> stats.Estimate | None:
    values = [float(r[column]) for r in runs if r.get(column)]
    return stats.mean(values, **stats.ACCURACY) if values else None


def corruptions(variants: dict[str, list[dict]]) -> tuple[list[str], dict[str, list[stats.Estimate | None]]]:
    """The sets (clean, then each corruption) and, per series (a BN mode or a control), an estimate per set."""
    sets = ["clean", *shift.CORRUPTIONS]
    series = {label: [estimate(variants[BN], f"evaluate/{s}/{mode}") for s in sets] for mode, label in MODES.items()}
    for variant, label in CONTROLS.items():
        if variant in variants:
            series[f"{label} (nothing to re-estimate)"] = [estimate(variants[variant], f"evaluate/{s}/running")
                                                          for s in sets]
    return sets, series


def adaptation(runs: list[dict]) -> dict[tuple[str, int], list[tuple[int, stats.Estimate]]]:
    """{(set, prior): [(n, estimate)]} of the target mode."""
    out = defaultdict(list)
    for column in sorted(runs[0], key=lambda c: [int(d) for d in re.findall(r"\d+", c)]):
        if (m := TARGET.fullmatch(column)) and (e := estimate(runs, column)):
            out[(m[1], int(m[3]))].append((int(m[2]), e))
    return dict(out)


def over_training(sweep: Path) -> dict[str, list[tuple[int, stats.Estimate]]]:
    """{momentum: [(step, precise - running estimate)]} over the runs of an over-training sweep."""
    from bnexp.runs import load_run

    gaps: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for summary in sorted(sweep.glob("*/seed_*/summary.json")):
        run = load_run(summary.parent)
        precise, running = run.curves.get("evaluate/clean/precise", {}), run.curves.get("evaluate/clean/running", {})
        momentum = str(run.config.get("norm.momentum"))
        for step in sorted(set(precise) & set(running)):
            gaps[momentum][step].append(precise[step] - running[step])
    if not gaps:
        raise SystemExit(f"bn_shift_figures: no run under {sweep} was evaluated with running and precise "
                         "statistics at its kept steps (bnexp evaluate --step all)")
    # A difference of accuracies: signed, so floored at their resolution but not cut to [0, 1].
    return {m: [(step, stats.mean(v, resolution=stats.ACCURACY_RESOLUTION)) for step, v in sorted(by_step.items())]
            for m, by_step in sorted(gaps.items(), key=lambda kv: float(kv[0]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_csv", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder for the figures")
    parser.add_argument("--over-training", type=Path, default=None, help="the over-training sweep dir")
    args = parser.parse_args(argv)
    variants = finished_by_variant(read_runs_csv(args.runs_csv.read_text()))
    if BN not in variants or not any(c.startswith("evaluate/") for c in variants[BN][0]):
        raise SystemExit(f"bn_shift_figures: {args.runs_csv} has no evaluated runs of {BN}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    sets, series = corruptions(variants)
    fig, ax = plt.subplots(figsize=(13, 5.5))
    width = 0.8 / len(series)
    for i, (label, points) in enumerate(series.items()):
        xs = [k + (i - (len(series) - 1) / 2) * width for k, e in enumerate(points) if e]
        es = [e for e in points if e]
        ax.errorbar(xs, [100 * e.value for e in es],
                    yerr=[[100 * (e.value - e.low) for e in es], [100 * (e.high - e.value) for e in es]],
                    fmt="o", ms=4, capsize=2, label=f"{label} ({es[0].n})")
    ax.set_xticks(range(len(sets)), [s.replace("_", " ") for s in sets], rotation=35, ha="right")
    ax.set(ylabel="test accuracy (%), 95% t interval",
           title="BN's statistics under each corruption (seeds in brackets)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.3))  # below: no point hidden
    fig.tight_layout()
    fig.savefig(args.out / "corruptions.png", dpi=120)
    print(f"wrote {args.out / 'corruptions.png'}")

    curves = adaptation(variants[BN])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, test_set in zip(axes, ("clean", "shifted"), strict=True):
        for (name, prior), points in curves.items():
            if name != test_set:
                continue
            x = [n for n, _ in points]
            line, = ax.plot(x, [100 * e.value for _, e in points], marker="o", label=f"prior of {prior} images")
            ax.fill_between(x, [100 * e.low for _, e in points], [100 * e.high for _, e in points],
                            color=line.get_color(), alpha=0.15)
        if running := estimate(variants[BN], f"evaluate/{test_set}/running"):
            ax.axhline(100 * running.value, color="k", ls="--", lw=1, label="moving averages")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="test images the statistics are re-estimated on (n)",
               title="clean test set" if test_set == "clean" else "mean over all corruptions")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"test accuracy (%), 95% t interval, {len(variants[BN])} seeds")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "adapt.png", dpi=120)
    print(f"wrote {args.out / 'adapt.png'}")

    if args.over_training:
        gaps = over_training(args.over_training)
        fig, ax = plt.subplots(figsize=(6, 4))
        for momentum, points in gaps.items():
            x = [s for s, _ in points]
            line, = ax.plot(x, [100 * e.value for _, e in points], marker="o",
                            label=f"momentum {momentum} ({points[-1][1].n})")
            ax.fill_between(x, [100 * e.low for _, e in points], [100 * e.high for _, e in points],
                            color=line.get_color(), alpha=0.15)
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xlabel="training step", ylabel="precise - moving averages (points), 95% t",
               title="the moving averages' gap over training (clean test set)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="BN (seeds)")
        fig.tight_layout()
        fig.savefig(args.out / "over_training.png", dpi=120)
        print(f"wrote {args.out / 'over_training.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
