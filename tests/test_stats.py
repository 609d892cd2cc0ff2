"""Statistics over seeds (bnexp/stats.py) against cases computed by hand, censored runs included."""

import csv
import math

import pytest
from test_report import make_run

from bnexp import report, stats
from bnexp.runs import find_run_dirs, load_run

NEVER = math.inf


def censored(*steps, last=10_000):
    return stats.Censored.of([None if s is None else s for s in steps], [last] * len(steps))


def test_at_least_ten_thousand_resamples_from_a_fixed_generator():
    assert stats.RESAMPLES >= 10_000
    a, b = stats.mean([0.1, 0.5, 0.7, 0.2]), stats.mean([0.1, 0.5, 0.7, 0.2])
    assert a == b  # reproducible to the digit


def test_the_mean_interval_is_the_bootstrap_percentile_interval():
    e = stats.mean([1, 2, 3, 4, 5])
    assert e.value == 3 and e.n == 5 and not e.rough
    # The bootstrap distribution of the mean of 5 values has sd sqrt(2 / 5) = 0.632: about 3 -+ 1.24.
    assert e.low == pytest.approx(1.8, abs=0.2) and e.high == pytest.approx(4.2, abs=0.2)
    same = stats.mean([0.9] * 3)
    assert (same.low, same.high, same.rough) == (0.9, 0.9, True)


def test_a_censored_run_that_does_not_decide_the_median_leaves_an_exact_speedup():
    """Baseline 1000, 3000, never (last step 4000); variant 500, 1000, 1500. Medians 3000 and 1000
    either way: 3.0x exactly. P(sooner): 500 beats all 3, 1000 ties 1000 and beats 2, 1500 beats 2:
    7.5 of 9 pairs."""
    base = stats.Censored.of([1000, 3000, None], [4000] * 3)
    variant = stats.Censored.of([500, 1000, 1500], [4000] * 3)
    assert stats.median_steps(base).value == 3000 and base.reached == 2
    sp = stats.speedup(base, variant)
    assert (sp.low, sp.high, sp.exact) == (3.0, 3.0, True)
    assert sp.interval_low <= 3.0 <= sp.interval_high
    p = stats.probability_of_improvement(base, variant)
    assert p.value == pytest.approx(7.5 / 9)
    assert 0 <= p.low <= p.value <= p.high <= 1


def test_when_never_decides_the_baselines_median_the_speedup_is_a_lower_bound():
    """Baseline never, never (last step 5000), 1000: its median is never; counted at 5000 it is 5000.
    Variant 100, 200, 1500: at least 5000 / 200 = 25x, unbounded above."""
    base = stats.Censored.of([None, None, 1000], [5000] * 3)
    variant = stats.Censored.of([100, 200, 1500], [5000] * 3)
    assert stats.median_steps(base).value == NEVER
    sp = stats.speedup(base, variant)
    assert (sp.low, sp.high) == (25.0, NEVER)
    assert sp.interval_high == NEVER
    assert stats.fmt_speedup(sp) == "≥ 25.0x"
    assert stats.probability_of_improvement(base, variant).value == pytest.approx(8 / 9)  # loses only 1500 vs 1000


def test_a_variant_that_never_gets_there_has_an_upper_bound():
    base = stats.Censored.of([1000, 1200, 1400], [2000] * 3)
    variant = stats.Censored.of([None, None, None], [2000] * 3)
    sp = stats.speedup(base, variant)
    assert (sp.low, sp.high) == (0.0, 0.6)  # 1200 / never; 1200 / 2000
    assert stats.fmt_speedup(sp) == "≤ 0.60x"
    assert stats.probability_of_improvement(base, variant).value == 0.0
    assert stats.median_steps(variant).value == NEVER


def test_never_against_never_is_a_tie():
    both = stats.Censored.of([None, None], [100, 100])
    assert stats.probability_of_improvement(both, both).value == 0.5


def test_runs_csv_holds_one_row_per_run_and_the_intervals_can_be_recomputed_from_it(tmp_path, bnexp):
    make_run(tmp_path / "runs", "a0", "none", 0, {0: 0.1, 3000: 0.85, 6000: 0.90})
    make_run(tmp_path / "runs", "a1", "none", 1, {0: 0.1, 3000: 0.88, 6000: 0.92})
    make_run(tmp_path / "runs", "b0", "batch", 0, {0: 0.1, 1000: 0.95, 2000: 0.96})
    make_run(tmp_path / "runs", "b1", "batch", 1, {0: 0.1, 1000: 0.90, 2000: 0.97})
    done = bnexp("report", str(tmp_path / "runs"), "--targets", "0.95", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "out" / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], r["run"], r["seed"]) for r in rows] == [
        ("norm=none", "a0", "0"), ("norm=none", "a1", "1"), ("norm=batch", "b0", "0"), ("norm=batch", "b1", "1")]
    assert [r["steps_to_target"] for r in rows] == ["", "6000", "1000", "2000"]  # 0.91; a0 never: censored, empty
    assert [r["steps_to_every_seed"] for r in rows] == ["6000", "6000", "1000", "1000"]  # 0.90, the lowest best
    assert [r["steps_to_0.95"] for r in rows] == ["", "", "1000", "2000"]
    assert rows[0]["last_evaluated_step"] == "6000" and rows[0]["best_accuracy"] == "0.9"
    # From runs.csv alone, the report's speed-up to 0.91 again:
    base = [r for r in rows if r["variant"] == "norm=none"]
    bn = [r for r in rows if r["variant"] == "norm=batch"]

    def steps(rs):
        return stats.Censored.of([int(r["steps_to_target"]) if r["steps_to_target"] else None for r in rs],
                                 [int(r["last_evaluated_step"]) for r in rs])

    again = stats.speedup(steps(base), steps(bn))
    variants = report.group_variants([load_run(p) for p in find_run_dirs([tmp_path / "runs"])])
    [row] = [r for r in report.summarize(variants, "norm=none", None, []) if r["variant"] == "norm=batch"]
    assert again == row["speedup"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "95% intervals: percentile bootstrap over seeds (10,000 resamples" in text
    assert "Intervals from fewer than 5 seeds are rough" in text and "| 2 (rough) |" in text
