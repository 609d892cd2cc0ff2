"""Statistics over seeds: bootstrap confidence intervals, censored steps-to-target, probability of
improvement. Plain numbers in, plain numbers out (numpy, no torch), so that any of them can be
recomputed from a study's runs.csv.

Censoring. A run that never reaches a target within its steps is not dropped: its steps-to-target
is "never" (math.inf) for medians and comparisons, and, where a bound is wanted, its last evaluated
step (it would have needed more than that). Means of steps are not used: a mean over runs some of
which never arrive is undefined. A speed-up is the ratio of two medians, baseline over variant;
when censored runs decide a median, the speed-up is known only as a bound, and its interval runs
from the lower bound's 2.5th percentile (baseline's censored runs at their last step, the variant's
at never) to the upper bound's 97.5th (the other way round).

Intervals are percentile bootstraps: seeds are resampled with replacement within each variant
(each variant on its own), RESAMPLES times, from a generator with a fixed seed, so a report is
reproducible to the digit. Fewer than ROUGH seeds make an interval rough, and the report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
SEED = 20150211  # the paper's arXiv date: any fixed number would do
ROUGH = 5  # intervals from fewer seeds than this are marked rough
NEVER = math.inf


@dataclass(frozen=True)
class Estimate:
    """A statistic over n seeds with its 95% interval; low/high may be inf (never, unbounded)."""

    value: float
    low: float
    high: float
    n: int

    @property
    def rough(self) -> bool:
        return self.n < ROUGH


@dataclass(frozen=True)
class Censored:
    """Each run's steps to a target: `steps` (NEVER where it never got there) and, for those, the
    last step it was evaluated at (a lower bound on the steps it would have needed)."""

    steps: tuple[float, ...]
    bounds: tuple[float, ...]  # steps, with NEVER replaced by the run's last evaluated step

    @classmethod
    def of(cls, crossings: list[int | None], last_steps: list[int]) -> Censored:
        steps = tuple(NEVER if c is None else float(c) for c in crossings)
        bounds = tuple(float(last) if c is None else float(c) for c, last in zip(crossings, last_steps, strict=True))
        return cls(steps, bounds)

    @property
    def reached(self) -> int:
        return sum(math.isfinite(s) for s in self.steps)

    def __len__(self) -> int:
        return len(self.steps)


def resample(values, rng: np.random.Generator) -> np.ndarray:
    """RESAMPLES bootstrap samples of `values` (one per row)."""
    values = np.asarray(values, dtype=float)
    return values[rng.integers(0, len(values), (RESAMPLES, len(values)))]


def interval(samples: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap statistics (inf allowed)."""
    ordered = np.sort(samples)
    return float(ordered[int(0.025 * (len(ordered) - 1))]), float(ordered[int(math.ceil(0.975 * (len(ordered) - 1)))])


def mean(values: list[float], seed: int = SEED) -> Estimate | None:
    """The mean over seeds, with its bootstrap interval."""
    if not values:
        return None
    low, high = interval(resample(values, np.random.default_rng(seed)).mean(axis=1))
    return Estimate(float(np.mean(values)), low, high, len(values))


def difference(values: list[float], reference: list[float], seed: int = SEED) -> Estimate | None:
    """mean(values) - mean(reference), two variants' seeds resampled each on its own."""
    if not values or not reference:
        return None
    rng = np.random.default_rng(seed)
    samples = resample(values, rng).mean(axis=1) - resample(reference, rng).mean(axis=1)
    low, high = interval(samples)
    return Estimate(float(np.mean(values) - np.mean(reference)), low, high, min(len(values), len(reference)))


def median_steps(steps: Censored, seed: int = SEED) -> Estimate | None:
    """The median steps to a target over seeds (never counted as never), with its bootstrap interval."""
    if not len(steps):
        return None
    low, high = interval(np.median(resample(steps.steps, np.random.default_rng(seed)), axis=1))
    return Estimate(float(np.median(steps.steps)), low, high, len(steps))


@dataclass(frozen=True)
class Speedup:
    """median(baseline steps) / median(variant steps), as bounds: `low` counts the baseline's censored
    runs at their last step and the variant's as never, `high` the other way round; the two are
    equal where no censored run decides a median. Its 95% interval runs from the 2.5th percentile
    of `low` to the 97.5th of `high`. inf: the variant gets there and the baseline does not (within
    its steps); 0: the other way round."""

    low: float
    high: float
    interval_low: float
    interval_high: float
    n: int  # the seeds of the smaller of the two variants

    @property
    def exact(self) -> bool:
        return self.low == self.high

    @property
    def rough(self) -> bool:
        return self.n < ROUGH


def speedup(baseline: Censored, variant: Censored, seed: int = SEED) -> Speedup | None:
    if not len(baseline) or not len(variant):
        return None
    rng = np.random.default_rng(seed)
    pick_b = rng.integers(0, len(baseline), (RESAMPLES, len(baseline)))  # the same resamples for both bounds
    pick_v = rng.integers(0, len(variant), (RESAMPLES, len(variant)))

    def ratio(b, v, pick=False) -> np.ndarray:
        b, v = np.asarray(b, dtype=float), np.asarray(v, dtype=float)
        with np.errstate(divide="ignore"):  # a variant at the target at step 0: an infinite speed-up
            return np.median(b[pick_b] if pick else b, axis=-1) / np.median(v[pick_v] if pick else v, axis=-1)

    # The bounds are finite where they stand in for "never", so no ratio is never/never.
    low, high = (baseline.bounds, variant.steps), (baseline.steps, variant.bounds)
    return Speedup(float(ratio(*low)), float(ratio(*high)), interval(ratio(*low, pick=True))[0],
                   interval(ratio(*high, pick=True))[1], min(len(baseline), len(variant)))


def probability_of_improvement(baseline: Censored, variant: Censored, seed: int = SEED) -> Estimate | None:
    """P(a run of the variant reaches the target in fewer steps than a run of the baseline), over all
    pairs of their runs, ties (never and never included) counting one half (Agarwal et al. 2021)."""
    if not len(baseline) or not len(variant):
        return None
    b, v = np.asarray(baseline.steps, dtype=float), np.asarray(variant.steps, dtype=float)

    def p(bs: np.ndarray, vs: np.ndarray) -> np.ndarray:
        wins = (vs[..., :, None] < bs[..., None, :]).mean(axis=(-1, -2))
        ties = (vs[..., :, None] == bs[..., None, :]).mean(axis=(-1, -2))
        return wins + ties / 2

    rng = np.random.default_rng(seed)
    samples = p(b[rng.integers(0, len(b), (RESAMPLES, len(b)))], v[rng.integers(0, len(v), (RESAMPLES, len(v)))])
    low, high = interval(samples)
    return Estimate(float(p(b, v)), low, high, min(len(b), len(v)))


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
    return f"{value} [{low}, {high}]"
