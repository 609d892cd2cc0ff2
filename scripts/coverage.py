"""The coverage of every interval type bnexp prints, by simulation: for each kind of statistic,
studies with a known truth at 3, 5 and 10 seeds, and the share whose interval contains it. What
tests/test_coverage.py asserts at 5 and 10 seeds, here as one table (results/coverage.md), with the
cells the test leaves out: 3 seeds, a strongly skewed distribution, and the percentile bootstrap
the reports used before.

    python scripts/coverage.py --out results/coverage.md
"""

from __future__ import annotations

import argparse
import math
import platform
import sys

import numpy as np
import torch
from scipy.stats import norm

from bnexp import stats

SEEDS = (3, 5, 10)


def old_bootstrap_mean(x: list[float]) -> tuple[float, float]:
    """The percentile bootstrap of a mean (bnexp/stats.py before the t intervals)."""
    a = np.asarray(x)
    return tuple(np.quantile(a[np.random.default_rng(stats.SEED).integers(0, len(a), (2000, len(a)))].mean(1),
                             [0.025, 0.975]))


def censored(steps: np.ndarray, cap: float) -> stats.Censored:
    return stats.Censored.of([int(s) if s <= cap else None for s in steps], [int(cap)] * len(steps))


def speedup_bounds(b, v) -> tuple[float, float]:
    sp = stats.speedup(b, v)
    return sp.interval_low, sp.interval_high


def cells():
    """(row label, interval method, truth, draw(rng, n) -> args, interval(*args) -> (low, high), studies)."""
    est = lambda e: (e.low, e.high)  # noqa: E731
    yield "mean, normal", stats.T, 0.0, lambda r, n: (list(r.normal(0, 1, n)),), lambda x: est(stats.mean(x)), 2000
    for sigma in (0.5, 1.0):
        yield (f"mean, lognormal sigma {sigma}", stats.T, math.exp(sigma ** 2 / 2),
               lambda r, n, s=sigma: (list(r.lognormal(0, s, n)),), lambda x: est(stats.mean(x)), 2000)
    yield ("difference, normal, sd 3 vs 1", stats.WELCH, 1.0,
           lambda r, n: (list(r.normal(1, 3, n)), list(r.normal(0, 1, n))), lambda a, b: est(stats.difference(a, b)),
           2000)
    yield ("difference, lognormal sigma 0.5", stats.WELCH, 0.0,
           lambda r, n: (list(r.lognormal(0, .5, n)), list(r.lognormal(0, .5, n))),
           lambda a, b: est(stats.difference(a, b)), 2000)
    for p in (0.05, 0.5, 0.95):
        yield (f"share, p = {p}", stats.EXACT, p, lambda r, n, p=p: (int(r.binomial(n, p)), n),
               lambda k, n: est(stats.share(k, n)), 2000)
    for shift in (0.0, 2.0, 4.0):
        yield (f"P(sooner) = {norm.cdf(shift / math.sqrt(2)):.3f}", stats.SCORE, norm.cdf(shift / math.sqrt(2)),
               lambda r, n, s=shift: (stats.Censored.of(list(r.normal(s, 1, n)), [0] * n),
                                      stats.Censored.of(list(r.normal(0, 1, n)), [0] * n)),
               lambda b, v: est(stats.probability_of_improvement(b, v)), 1000)
    for cap, what in ((4500, "30% of baseline runs censored"), (1e9, "none censored")):
        yield (f"speed-up 4x, {what}", stats.BOOTSTRAP, 4.0,
               lambda r, n, c=cap: (censored(r.lognormal(math.log(4000), .3, n), c),
                                    censored(r.lognormal(math.log(1000), .3, n), c)), speedup_bounds, 500)
    yield ("mean, normal (before: percentile bootstrap)", "percentile bootstrap", 0.0,
           lambda r, n: (list(r.normal(0, 1, n)),), old_bootstrap_mean, 1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the table here (markdown) as well as to stdout")
    args = parser.parse_args(argv)
    lines = [f"# Coverage of bnexp's {stats.percent()} intervals", "",
             f"`python scripts/coverage.py --out results/coverage.md` (Python {platform.python_version()}, torch "
             f"{torch.__version__}, numpy {np.__version__}; a fixed seed, so the table is the same on any machine). "
             "Each cell: the share of simulated studies whose interval contains the true value; with 2,000 studies "
             "a cell's standard error is about 0.5 points, with 500 about 1.", "",
             "| statistic | interval | studies | " + " | ".join(f"{n} seeds" for n in SEEDS) + " |",
             "|---|---|---|" + "---|" * len(SEEDS)]
    for label, method, truth, draw, interval, studies in cells():
        shares = []
        for n in SEEDS:
            rng = np.random.default_rng(7)
            hits = sum(low <= truth <= high for low, high in (interval(*draw(rng, n)) for _ in range(studies)))
            shares.append(f"{hits / studies:.3f}")
        lines.append(f"| {label} | {method} | {studies:,} | " + " | ".join(shares) + " |")
        print(lines[-1], file=sys.stderr)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
