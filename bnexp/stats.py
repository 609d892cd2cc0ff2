"""Statistics over seeds: confidence intervals, censored steps-to-target, probability of
improvement. Plain numbers in, plain numbers out (numpy and scipy, no torch), so that any of them
can be recomputed from a study's runs.csv.

One confidence level, CONFIDENCE, for every interval a report or verdict prints. Each kind of
statistic has the interval that keeps that coverage at the 3-10 seeds the studies use (measured by
tests/test_coverage.py; a percentile bootstrap of a mean covers about 83% at 5 seeds):

- a mean: Student's t; a difference of two means: Welch's t (unequal variances).
- a share of runs (diverged, say): Clopper-Pearson, exact, so 5 of 5 is [0.48, 1], never [1, 1].
- P(sooner), a probability estimated from all n x m pairs of runs: Newcombe's (2006) score interval
  for the Mann-Whitney probability, which stays wide when every pair agrees.
- a median of steps, and the speed-up (a ratio of medians, with censored runs): percentile
  bootstrap, seeds resampled within each variant RESAMPLES times from a fixed generator, so a report
  is reproducible to the digit. The speed-up's bound construction makes it conservative.

All seeds equal (zero spread): a t interval would have zero width and print as certainty. The
spread is instead floored at the data's resolution (e.g. 0.0001 for accuracies rounded to 4
digits); where none is given, or there is one seed, the interval is unbounded (-inf, inf), which
decides nothing. So is a speed-up's where every seed of both variants reaches the target at one
and the same step each ([0, inf]): the bootstrap would print [r, r].

Censoring. A run that never reaches a target within its steps is not dropped: its steps-to-target
is "never" (math.inf) for medians and comparisons, and, where a bound is wanted, its last evaluated
step (it would have needed more than that) -- unless it diverged, which it never recovers from, so
its bound is never too. Means of steps are not used: a mean over runs some of which never arrive
is undefined. A speed-up is the ratio of two medians, baseline over variant; when censored runs
decide a median, the speed-up is known only as a bound, and its interval runs from the lower
bound's lower percentile (baseline's censored runs at their last step, the variant's at never) to
the upper bound's upper percentile (the other way round).

Fewer than ROUGH seeds make an interval rough, and reports say so: at 3 seeds the bootstrap rows
(medians, speed-ups) cover far less than they print, and t intervals on skewed data fall short.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95  # every interval's level, printed with every table and verdict
RESAMPLES = 10_000
SEED = 20150211  # the paper's arXiv date: any fixed number would do
ROUGH = 5  # intervals from fewer seeds than this are marked rough
NEVER = math.inf
ACCURACY_RESOLUTION = 1e-4  # runs.csv keeps 4 digits of an accuracy: the least spread seeds can have
ACCURACY = {"resolution": ACCURACY_RESOLUTION, "limits": (0.0, 1.0)}  # how a mean of accuracies is taken

# The method each kind of interval uses, as reports name it.
T, WELCH, EXACT, SCORE, BOOTSTRAP = ("Student t", "Welch t", "Clopper-Pearson", "Newcombe score",
                                     "percentile bootstrap")


def percent(level: float = CONFIDENCE) -> str:
    """95%, 99.5%, 98.92%: a level as the tables print it (4 significant digits)."""
    return f"{100 * level:.4g}%"


@dataclass(frozen=True)
class Estimate:
    """A statistic over n seeds with its interval at `level`; low/high may be inf (never, unbounded)."""

    value: float
    low: float
    high: float
    n: int
    method: str = T
    level: float = CONFIDENCE

    @property
    def rough(self) -> bool:
        return self.n < ROUGH


@dataclass(frozen=True)
class Censored:
    """Each run's steps to a target: `steps` (NEVER where it never got there) and `bounds`, the
    least steps it would have needed: for a run that never got there its last evaluated step, or
    NEVER where it diverged."""

    steps: tuple[float, ...]
    bounds: tuple[float, ...]

    @classmethod
    def of(cls, crossings: list[int | None], last_steps: list[int], diverged: list[bool] | None = None) -> Censored:
        diverged = diverged or [False] * len(crossings)
        steps = tuple(NEVER if c is None else float(c) for c in crossings)
        bounds = tuple(float(c) if c is not None else NEVER if gone else float(last)
                       for c, last, gone in zip(crossings, last_steps, diverged, strict=True))
        return cls(steps, bounds)

    @property
    def reached(self) -> int:
        return sum(math.isfinite(s) for s in self.steps)

    def __len__(self) -> int:
        return len(self.steps)


def tails(level: float) -> tuple[float, float]:
    return (1 - level) / 2, 1 - (1 - level) / 2


def resample(values, rng: np.random.Generator) -> np.ndarray:
    """RESAMPLES bootstrap samples of `values` (one per row)."""
    values = np.asarray(values, dtype=float)
    return values[rng.integers(0, len(values), (RESAMPLES, len(values)))]


def interval(samples: np.ndarray, level: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile interval of bootstrap statistics (inf allowed)."""
    ordered, (lo, hi) = np.sort(samples), tails(level)
    return float(ordered[int(lo * (len(ordered) - 1))]), float(ordered[int(math.ceil(hi * (len(ordered) - 1)))])


def _t_interval(centre: float, se: float, df: float, level: float) -> tuple[float, float]:
    if not se > 0 or not df > 0:
        return -math.inf, math.inf
    half = float(scipy_stats.t.ppf(tails(level)[1], df)) * se
    return centre - half, centre + half


def mean(values: list[float], level: float = CONFIDENCE, resolution: float = 0.0,
         limits: tuple[float, float] = (-math.inf, math.inf)) -> Estimate | None:
    """The mean over seeds, with its Student t interval (the spread floored at `resolution`), cut to
    the values the quantity can take (`limits`: an accuracy's mean lies in [0, 1])."""
    if not values:
        return None
    x = np.asarray(values, dtype=float)
    n = len(x)
    sd = max(float(x.std(ddof=1)), resolution) if n > 1 else 0.0
    low, high = _t_interval(float(x.mean()), sd / math.sqrt(n), n - 1, level)
    return Estimate(float(x.mean()), max(low, limits[0]), min(high, limits[1]), n, T, level)


def difference(values: list[float], reference: list[float], level: float = CONFIDENCE,
               resolution: float = 0.0) -> Estimate | None:
    """mean(values) - mean(reference), with Welch's t interval (each spread floored at `resolution`)."""
    if not values or not reference:
        return None
    a, b = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    value, n = float(a.mean() - b.mean()), min(len(a), len(b))
    if len(a) < 2 or len(b) < 2:  # a variant's spread is unknown from one seed
        return Estimate(value, -math.inf, math.inf, n, WELCH, level)
    va, vb = (max(float(x.std(ddof=1)), resolution) ** 2 / len(x) for x in (a, b))
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else 0.0
    low, high = _t_interval(value, math.sqrt(va + vb), df, level)
    return Estimate(value, low, high, n, WELCH, level)


def share(hits: int, n: int, level: float = CONFIDENCE) -> Estimate | None:
    """hits / n, with its exact (Clopper-Pearson) interval: 0 of 5 is [0, 0.52], not [0, 0]."""
    if n <= 0:
        return None
    lo, hi = tails(level)
    low = 0.0 if hits == 0 else float(scipy_stats.beta.ppf(lo, hits, n - hits + 1))
    high = 1.0 if hits == n else float(scipy_stats.beta.ppf(hi, hits + 1, n - hits))
    return Estimate(hits / n, low, high, n, EXACT, level)


def median_steps(steps: Censored, level: float = CONFIDENCE) -> Estimate | None:
    """The median steps to a target over seeds (never counted as never), with its bootstrap interval."""
    if not len(steps):
        return None
    low, high = interval(np.median(resample(steps.steps, np.random.default_rng(SEED)), axis=1), level)
    return Estimate(float(np.median(steps.steps)), low, high, len(steps), BOOTSTRAP, level)


@dataclass(frozen=True)
class Speedup:
    """median(baseline steps) / median(variant steps), as bounds: `low` counts the baseline's censored
    runs at their bounds and the variant's as never, `high` the other way round; the two are equal
    where no censored run decides a median. Its interval runs from the lower percentile of `low` to
    the upper percentile of `high`. inf: the variant gets there and the baseline does not (within
    its steps); 0: the other way round."""

    low: float
    high: float
    interval_low: float
    interval_high: float
    n: int  # the seeds of the smaller of the two variants
    method: str = BOOTSTRAP
    level: float = CONFIDENCE

    @property
    def exact(self) -> bool:
        return self.low == self.high

    @property
    def rough(self) -> bool:
        return self.n < ROUGH


def speedup(baseline: Censored, variant: Censored, level: float = CONFIDENCE) -> Speedup | None:
    if not len(baseline) or not len(variant):
        return None
    rng = np.random.default_rng(SEED)
    pick_b = rng.integers(0, len(baseline), (RESAMPLES, len(baseline)))  # the same resamples for both bounds
    pick_v = rng.integers(0, len(variant), (RESAMPLES, len(variant)))

    def ratio(b, v, unknown: float, pick=False) -> np.ndarray:
        """Medians' ratio; never over never (both medians diverged or censored past any bound) is
        unknown: the lower bound takes 0 for it, the upper one inf."""
        b, v = np.asarray(b, dtype=float), np.asarray(v, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):  # a variant at the target at step 0: inf
            r = np.median(b[pick_b] if pick else b, axis=-1) / np.median(v[pick_v] if pick else v, axis=-1)
        return np.where(np.isnan(r), unknown, r)

    low, high = (baseline.bounds, variant.steps, 0.0), (baseline.steps, variant.bounds, math.inf)
    interval_low = interval(ratio(*low, pick=True), level)[0]
    interval_high = interval(ratio(*high, pick=True), level)[1]
    if interval_low == interval_high:
        # Every seed of each variant at one step: resampling has nothing to vary, and the spread
        # below the evaluation grid is unknown, so the interval decides nothing (as a t interval
        # of equal seeds does) rather than print [r, r] as certainty.
        interval_low, interval_high = 0.0, math.inf
    return Speedup(float(ratio(*low)), float(ratio(*high)), interval_low, interval_high,
                   min(len(baseline), len(variant)), BOOTSTRAP, level)


def probability_of_improvement(baseline: Censored, variant: Censored, level: float = CONFIDENCE) -> Estimate | None:
    """P(a run of the variant reaches the target in fewer steps than a run of the baseline), over all
    pairs of their runs, ties (never and never included) counting one half (Agarwal et al. 2021),
    with Newcombe's (2006, method 5) score interval: the theta whose variance
    theta (1 - theta) / (m n) [1 + (N - 1)((1 - theta) / (2 - theta) + theta / (1 + theta))],
    N = (m + n) / 2 - 1, puts the estimate within q standard errors. Pairs share runs, so their
    count is not the sample size; this variance accounts for that, and is not zero at 0 or 1. q is
    Student's t quantile with m + n - 2 degrees of freedom rather than the normal one: with z the
    interval covers about 90% at 5 seeds when the two variants do not differ, with t 95-97% at 3-10
    seeds (tests/test_coverage.py)."""
    if not len(baseline) or not len(variant):
        return None
    b, v = np.asarray(baseline.steps, dtype=float), np.asarray(variant.steps, dtype=float)
    wins = (v[:, None] < b[None, :]).mean() + (v[:, None] == b[None, :]).mean() / 2
    m, n = len(v), len(b)
    if m + n < 3:  # one run each: nothing to say about the probability
        return Estimate(float(wins), 0.0, 1.0, 1, SCORE, level)
    theta = np.linspace(0, 1, 20_001)
    big_n = (m + n) / 2 - 1
    var = theta * (1 - theta) / (m * n) * (1 + (big_n - 1) * ((1 - theta) / (2 - theta) + theta / (1 + theta)))
    q = scipy_stats.t.ppf(tails(level)[1], m + n - 2)
    inside = theta[(wins - theta) ** 2 <= q ** 2 * var]  # an interval: the score function is unimodal
    return Estimate(float(wins), min(float(inside.min()), wins), max(float(inside.max()), wins), min(m, n), SCORE,
                    level)


# --- as the report and the verdicts show them ---------------------------------------------------

def fmt_count(x: float, digits: int = 0) -> str:
    return "never" if x == math.inf else "∞" if x == -math.inf else f"{x:,.{digits}f}"


def fmt_ratio(x: float) -> str:
    return "∞" if x == math.inf else f"{x:.2f}" if x < 10 else f"{x:.1f}"


def fmt_speedup(sp: Speedup | None, baseline: bool = False, interval: bool = False) -> str:
    """4.00x; >= 2.31x when the baseline's censored runs leave it a lower bound; <= ... an upper one."""
    if baseline:
        return "1.0x"
    if sp is None:
        return "-"
    if sp.exact:
        text = f"{fmt_ratio(sp.low)}x"
    elif sp.high == math.inf and sp.low > 0:
        text = f"≥ {fmt_ratio(sp.low)}x"
    elif sp.low == 0 and sp.high < math.inf:
        text = f"≤ {fmt_ratio(sp.high)}x"
    else:
        text = f"{fmt_ratio(sp.low)}-{fmt_ratio(sp.high)}x"
    return text + (f" [{fmt_ratio(sp.interval_low)}, {fmt_ratio(sp.interval_high)}]" if interval else "")


def fmt_estimate(e: Estimate | None, scale: float = 1.0, digits: int = 0) -> str:
    if e is None:
        return "-"
    value, low, high = (fmt_count(x * scale if math.isfinite(x) else x, digits) for x in (e.value, e.low, e.high))
    low = "-∞" if e.low == -math.inf else low
    high = "∞" if e.high == math.inf and e.method != BOOTSTRAP else high  # a bootstrap's inf is "never"
    return f"{value} [{low}, {high}]"
