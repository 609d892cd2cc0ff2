"""Does a speed setting change results? The same seed run both ways, set beside seed-to-seed noise.

For every run in TRIAL_DIR it finds the run in REFERENCE_DIR with the same name and seed (they
differ only in execution settings, e.g. trainer.channels_last) and prints both runs' best and final
test accuracy and the largest gap between their test-accuracy curves, beside the spread (max - min)
of the reference dir's seeds of that name: a setting is within seed noise when its gap is well
below that spread.

    python scripts/same_seed.py $BNEXP_RUNS/inception_mnist/main_fast $BNEXP_RUNS/inception_mnist/speed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnexp.runs import Run, find_run_dirs, load_run


def spread(values: list[float]) -> float:
    return 100 * (max(values) - min(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("trial", type=Path)
    parser.add_argument("--out", type=Path, help="also write the table here (markdown)")
    args = parser.parse_args(argv)
    reference = [load_run(p) for p in find_run_dirs([args.reference])]
    lines = ["| run | setting | best accuracy | final accuracy | largest curve gap (points) "
             "| seed spread of best, final |",
             "|---|---|---:|---:|---:|---:|"]
    for trial in (load_run(p) for p in find_run_dirs([args.trial])):
        name = trial.config.get("name")
        seeds = [r for r in reference if r.config.get("name") == name and r.summary]
        same: list[Run] = [r for r in seeds if r.seed == trial.seed]
        if not same or not trial.summary:
            print(f"same_seed: error: no finished run {name} seed {trial.seed} in both dirs", file=sys.stderr)
            return 2
        ref = same[0]
        differing = sorted(k for k in ref.config.keys() | trial.config.keys()
                           if ref.config.get(k) != trial.config.get(k) and k.startswith("trainer."))
        common = ref.curves["test/accuracy"].keys() & trial.curves["test/accuracy"].keys()
        gap = max(abs(ref.curves["test/accuracy"][s] - trial.curves["test/accuracy"][s]) for s in common)
        noise = (f"{spread([r.summary['best_accuracy'] for r in seeds]):.2f}, "
                 f"{spread([r.summary['final_accuracy'] for r in seeds]):.2f} ({len(seeds)} seeds)")
        for run, setting in ((ref, "reference"), (trial, ", ".join(f"{k}={trial.config.get(k)}" for k in differing))):
            lines.append(f"| {name} seed {trial.seed} | {setting} | {100 * run.summary['best_accuracy']:.2f}% | "
                         f"{100 * run.summary['final_accuracy']:.2f}% | "
                         f"{'' if run is ref else f'{100 * gap:.2f} over {len(common)} evaluations'} | "
                         f"{noise if run is ref else ''} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
