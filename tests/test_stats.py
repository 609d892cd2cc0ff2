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
    base, variant = censored(1000, 3000, 2000, 2500), censored(500, 700, 900)
    assert stats.speedup(base, variant) == stats.speedup(base, variant)  # reproducible to the digit
    assert stats.median_steps(base) == stats.median_steps(base)


def test_the_mean_interval_is_students_t():
    """1..5: mean 3, sd 1.581, standard error 0.707, t(4) 97.5% quantile 2.776: 3 -+ 1.963."""
    e = stats.mean([1, 2, 3, 4, 5])
    assert (e.value, e.n, e.method, e.level, e.rough) == (3, 5, stats.T, stats.CONFIDENCE, False)
    assert e.low == pytest.approx(3 - 1.9632, abs=1e-3) and e.high == pytest.approx(3 + 1.9632, abs=1e-3)
    wider = stats.mean([1, 2, 3, 4, 5], level=0.99)
    assert wider.low < e.low and wider.high > e.high


def test_seeds_that_all_agree_are_never_certainty():
    """Zero spread: floored at the data's resolution (here 0.0001: 0.9 -+ t(2) 4.303 x 0.0001 / sqrt 3),
    or, with none given or with one seed, unbounded: an interval that decides nothing."""
    floored = stats.mean([0.9] * 3, resolution=1e-4)
    assert floored.low == pytest.approx(0.9 - 4.3027e-4 / math.sqrt(3), abs=1e-7) and floored.high > 0.9
    free = stats.mean([0.9] * 3)
    assert (free.low, free.high) == (
        -math.inf, math.inf)
    one = stats.mean([0.9])
    assert (one.low, one.high, one.rough) == (-math.inf, math.inf, True)
    assert stats.fmt_estimate(one, 100, 2) == "90.00 [-∞, ∞]"
    same = stats.difference([0.5] * 4, [0.5] * 4)
    assert (same.low, same.high) == (-math.inf, math.inf)
    assert stats.difference([0.5], [0.4, 0.6]).high == math.inf


def test_a_difference_is_welchs_t():
    """a = 1, 2, 3 (var 1), b = 0, 0, 0, 4 (var 4): se sqrt(1/3 + 4/4) = 1.155; Welch's df
    (1.333)^2 / ((1/3)^2 / 2 + 1 / 3) = 4.57; t 97.5% = 2.645."""
    e = stats.difference([1, 2, 3], [0, 0, 0, 4])
    assert e.value == pytest.approx(1.0) and e.method == stats.WELCH and e.n == 3
    half = e.high - e.value
    assert half == pytest.approx(2.6448 * 1.1547, rel=1e-4) and e.value - e.low == pytest.approx(half)


@pytest.mark.parametrize("hits, n, low, high", [
    (0, 5, 0.0, 0.5218), (5, 5, 0.4782, 1.0), (1, 10, 0.0025, 0.4450), (5, 10, 0.1871, 0.8129)])
def test_a_share_has_the_exact_clopper_pearson_interval(hits, n, low, high):
    e = stats.share(hits, n)
    assert e.value == hits / n and e.method == stats.EXACT
    assert e.low == pytest.approx(low, abs=1e-4) and e.high == pytest.approx(high, abs=1e-4)


def test_p_sooner_keeps_its_width_when_every_pair_agrees():
    """5 variant runs all sooner than 5 baseline runs: P = 1, but 25 pairs of 10 runs are no proof
    that every future pair agrees; Newcombe's score interval (t quantile) leaves [0.61, 1]."""
    p = stats.probability_of_improvement(censored(900, 950, 1000, 1100, 1200), censored(100, 200, 300, 400, 500))
    assert p.value == 1.0 and p.high == 1.0 and p.low == pytest.approx(0.612, abs=2e-3) and p.method == stats.SCORE
    lost = stats.probability_of_improvement(censored(100, 200, 300, 400, 500), censored(900, 950, 1000, 1100, 1200))
    assert lost.value == 0.0 and lost.low == 0.0 and lost.high == pytest.approx(1 - 0.612, abs=2e-3)
    assert (stats.probability_of_improvement(censored(5), censored(3)).low,
            stats.probability_of_improvement(censored(5), censored(3)).high) == (0.0, 1.0)  # one run each


def test_a_diverged_run_never_gets_there_even_as_a_bound():
    """The variant's first run diverged at step 400: it never reaches the target, rather than
    'needed at least 400 steps'. Baseline 1000 x 3; variant bounds 400, 5000, 100 would make the
    optimistic speed-up 1000 / 400 = 2.5x; with the diverged run at never it is 1000 / 5000 = 0.2x."""
    base = censored(1000, 1000, 1000)
    alive = stats.Censored.of([None, None, 100], [400, 5000, 5000])
    gone = stats.Censored.of([None, None, 100], [400, 5000, 5000], diverged=[True, False, False])
    assert alive.bounds == (400.0, 5000.0, 100.0) and gone.bounds == (NEVER, 5000.0, 100.0)
    assert (stats.speedup(base, alive).low, stats.speedup(base, alive).high) == (0.0, 2.5)
    assert (stats.speedup(base, gone).low, stats.speedup(base, gone).high) == (0.0, 0.2)
    both_gone = stats.Censored.of([None, None, None], [400] * 3, diverged=[True] * 3)
    sp = stats.speedup(both_gone, both_gone)  # never over never: unknown, not nan
    assert (sp.low, sp.high, sp.interval_low, sp.interval_high) == (0.0, NEVER, 0.0, NEVER)


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
    assert "95% intervals: accuracies Student t over seeds; median steps and speed-ups percentile bootstrap (10,000" \
        in text
    assert "Intervals from fewer than 5 seeds are rough" in text and "| 2 (rough) |" in text


def test_a_speedup_whose_seeds_all_tie_decides_nothing():
    # Every seed of each variant crosses at one evaluation: the bootstrap would print [3, 3].
    base, variant = stats.Censored.of([3000] * 5, [6000] * 5), stats.Censored.of([1000] * 5, [6000] * 5)
    sp = stats.speedup(base, variant)
    assert (sp.low, sp.high) == (3.0, 3.0)
    assert (sp.interval_low, sp.interval_high) == (0.0, math.inf)
    assert stats.fmt_speedup(sp, interval=True) == "3.00x [0.00, ∞]"
    # One seed off the step is spread enough to resample: a finite, nonzero-width interval.
    moved = stats.speedup(stats.Censored.of([3000] * 4 + [4000], [6000] * 5), variant)
    assert 0 < moved.interval_low < moved.interval_high < math.inf
