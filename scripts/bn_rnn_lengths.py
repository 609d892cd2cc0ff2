"""Accuracy against test sequence length (results/bn_rnn): from a report's runs.csv, each variant's
final test accuracy on the images as trained (28 rows) and with k blank rows before (prepend) or
after (append) them (probes.longer_rows: the runs.csv columns longer/<side><k>/drop), mean over
its finished runs with a 95% Student t interval.

    python scripts/bn_rnn_lengths.py results/bn_rnn/mnist/runs.csv --out results/bn_rnn/mnist/lengths.png
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from bnexp import stats
from bnexp.claims import finished_by_variant, read_runs_csv

DROP = re.compile(r"longer/(prepend|append)(\d+)/drop")


def lengths(rows: list[dict], steps: int = 28) -> dict[str, dict[str, list[tuple[int, stats.Estimate]]]]:
    """{side: {variant: [(sequence length, accuracy estimate)]}}, the trained length first."""
    columns = [(m[1], int(m[2]), c) for c in rows[0] if (m := DROP.fullmatch(c))]
    if not columns:
        raise SystemExit("bn_rnn_lengths: runs.csv has no longer/<side><k>/drop column: train with probes.longer_rows")
    by_variant = {variant: probed for variant, runs in finished_by_variant(rows).items()
                  if (probed := [r for r in runs if all(r[c] for _, _, c in columns)])}
    out: dict[str, dict[str, list]] = {"prepend": {}, "append": {}}
    for variant, runs in by_variant.items():
        trained = [float(r["final_accuracy"]) for r in runs]
        for side in out:
            points = [(steps, stats.mean(trained, **stats.ACCURACY))]
            for k, column in sorted((k, c) for s, k, c in columns if s == side):
                accuracy = [a - float(r[column]) for a, r in zip(trained, runs, strict=True)]
                points.append((steps + k, stats.mean(accuracy, **stats.ACCURACY)))
            out[side][variant] = points
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_csv", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    found = lengths(read_runs_csv(args.runs_csv.read_text()))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (side, variants) in zip(axes, found.items(), strict=True):
        for variant, points in variants.items():
            x = [length for length, _ in points]
            line, = ax.plot(x, [100 * e.value for _, e in points], marker="o", label=f"{variant} ({points[0][1].n})")
            ax.fill_between(x, [100 * e.low for _, e in points], [100 * e.high for _, e in points],
                            color=line.get_color(), alpha=0.15)
        ax.set(xlabel=f"test sequence length (rows; blank rows {side}ed)", title=f"blank rows {side}ed")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("final test accuracy (%), 95% t interval")
    axes[1].legend(fontsize=8, title="variant (seeds)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
