"""Claims as code (bnexp/claims.py): rules that turn an interval into a verdict, claims files, and
verdicts computed by `bnexp report --claims` from runs, and again from runs.csv alone."""

import math

import pytest
from test_report import make_run

from bnexp import claims
from bnexp.errors import UserError

ABOVE = {"holds_above": 14, "partly_above": 1}
BELOW = {"holds_below": 0}


@pytest.mark.parametrize("rule, low, high, verdict", [
    (ABOVE, 15, 30, claims.HOLDS),  # the whole interval above 14
    (ABOVE, 2, 5, claims.PARTLY),  # faster, but not 14x
    (ABOVE, 0.5, 0.9, claims.NOT),
    (ABOVE, 10, 20, claims.INCONCLUSIVE),  # spans 14
    (ABOVE, 0.5, 3, claims.INCONCLUSIVE),  # spans 1
    (ABOVE, 20, math.inf, claims.HOLDS),  # a lower bound above 14 is enough
    ({"holds_above": 1}, 1.2, math.inf, claims.HOLDS),
    ({"holds_above": 1}, 0.8, 1.3, claims.INCONCLUSIVE),
    ({"holds_above": 1}, 0.2, 1.0, claims.NOT),  # at most 1: not above it
    (BELOW, -0.3, -0.1, claims.HOLDS),
    (BELOW, 0.1, 0.3, claims.NOT),
    (BELOW, -0.1, 0.1, claims.INCONCLUSIVE),
    ({"holds_below": -0.5, "partly_below": 0}, -0.3, -0.1, claims.PARTLY),
    ({"within": 0.01}, -0.005, 0.008, claims.HOLDS),  # as well as: the whole interval inside +-1 point
    ({"within": 0.01}, -0.0050, -0.0027, claims.HOLDS),
    ({"within": 0.01}, 0.0046, 0.0085, claims.HOLDS),
    ({"within": 0.01}, -0.0050, 0.012, claims.INCONCLUSIVE),
    ({"within": 0.01}, 0.02, 0.04, claims.NOT),  # wholly outside: better by more than the margin
    ({"within": 0.01}, -0.04, -0.02, claims.NOT),  # or worse
    (ABOVE, math.nan, 3, claims.INCONCLUSIVE),
])
def test_the_rule_is_the_region_the_whole_interval_lies_in(rule, low, high, verdict):
    assert claims.decide(rule, low, high) == verdict


def write(tmp_path, text):
    path = tmp_path / "claims.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, message", [
    ("claims: []", "declares no claims"),
    ("claims: [{measure: speed, rule: {holds_above: 1}}]", "measure must be one of"),
    ("claims: [{measure: speedup, rule: {}}]", "rule needs one of holds_above, holds_below"),
    ("claims: [{measure: speedup, rule: {holds_above: 2, partly_below: 1}}]", "the same way"),
    ("claims: [{measure: speedup, target: 98, rule: {holds_above: 1}}]", "target must be target"),
    ("claims: [{measure: speedup, target: best, rule: {holds_above: 1}}]", "or an accuracy in \\(0, 1\\], got .best."),
    ("claims: [unclosed", "cannot be read"),
    ("claims: [{measure: speedup, rule: {within: 1, holds_above: 0}}]", "a within rule stands alone"),
    ("claims: [{measure: speedup, rule: {within: 0}}]", "a margin > 0"),
    ("claims: [{measure: speedup, rule: {holds_above: one}}]", "with numbers"),
    ("claims: [{id: a, measure: speedup, rule: {within: 1}}, {id: a, measure: speedup, rule: {within: 1}}]",
     "claim ids repeat \\(a\\)"),
])
def test_a_bad_claims_file_is_one_line(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        claims.load(write(tmp_path, text))
    with pytest.raises(UserError, match="no claims file 'nowhere'"):
        claims.load("nowhere")


CLAIMS = """study: a hand-made study
claims:
  - id: faster
    claim: BN gets there sooner
    paper: 14x
    measure: speedup
    variant: norm=batch
    target: every_seed
    rule: {holds_above: 1}
  - id: sooner
    claim: a BN run is likely to get there first
    paper: "-"
    measure: p_sooner
    variant: norm=batch
    target: target
    rule: {holds_above: 0.5}
  - id: better
    claim: BN ends higher
    paper: "+0.2 points"
    measure: best_accuracy_gain
    variant: norm=batch
    rule: {holds_above: 0}
"""


def test_verdicts_from_runs_and_again_from_runs_csv_alone(bnexp, tmp_path):
    # Baseline bests 0.90 / 0.92 (lowest 0.90, reached at 6000 and 5000); BN at 1000 and 2000, bests 0.96, 0.97.
    make_run(tmp_path / "runs", "a0", "none", 0, {0: 0.1, 3000: 0.85, 6000: 0.90})
    make_run(tmp_path / "runs", "a1", "none", 1, {0: 0.1, 5000: 0.90, 6000: 0.92})
    make_run(tmp_path / "runs", "b0", "batch", 0, {0: 0.1, 1000: 0.95, 2000: 0.96})
    make_run(tmp_path / "runs", "b1", "batch", 1, {0: 0.1, 1000: 0.90, 2000: 0.97})
    done = bnexp("report", str(tmp_path / "runs"), "--claims", write(tmp_path, CLAIMS), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    verdict = (tmp_path / "out" / "verdict.md").read_text()
    assert "# Verdicts: a hand-made study" in verdict and "computed by bnexp/claims.py from runs.csv" in verdict.lower()
    # To 0.90: baseline 6000, 5000 (median 5500), BN 1000, 1000: 5.5x; resamples give 5000-6000 / 1000.
    assert ("| BN gets there sooner | 14x | 5.50x [5.00, 6.00] | percentile bootstrap | 2 | holds above 1 "
            "| **holds (rough)** | survives (stands to ≥ 99.99%) |") in verdict
    # 2 seeds each: 96.5 +- 0.7 against 91 +- 1.4, Welch's t with about 1.5 degrees of freedom: wide.
    assert ("| BN ends higher | +0.2 points | 5.50 [-1.42, 12.42] points | Welch t | 2 | holds above 0 "
            "| **inconclusive (rough)** | - |") in verdict
    assert "| a BN run is likely to get there first | - | 1.00 [0.18, 1.00] | Newcombe score |" in verdict
    assert "95% interval" in verdict and "Holm's correction over this study's 3 claims" in verdict
    rows = (tmp_path / "out" / "verdict.csv").read_text().splitlines()
    assert rows[0] == ("id,claim,paper,measure,variant,baseline,target,value,estimate,low,high,seeds,interval,level,"
                       "verdict,decided_to,family_wise") and len(rows) == 4
    again = bnexp("report", str(tmp_path / "out" / "runs.csv"), "--claims", write(tmp_path, CLAIMS))
    assert again.returncode == 0, again.stderr
    assert "5.50x [5.00, 6.00]" in again.stdout  # the same numbers from the committed file alone
    alone = bnexp("report", str(tmp_path / "out" / "runs.csv"))
    assert alone.returncode == 2 and "add --claims NAME" in alone.stderr


def test_claims_the_runs_cannot_decide_are_one_line_and_nothing_is_written(bnexp, tmp_path):
    make_run(tmp_path / "runs", "a0", "none", 0, {0: 0.1, 6000: 0.90})
    make_run(tmp_path / "runs", "b0", "batch", 0, {0: 0.1, 2000: 0.96})
    unknown = CLAIMS.replace("variant: norm=batch", "variant: norm=layer")
    for out in ([], ["--out", str(tmp_path / "out")]):
        done = bnexp("report", str(tmp_path / "runs"), "--claims", write(tmp_path, unknown), *out)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            "bnexp: error: claim faster: no variant 'norm=layer' among the finished runs (norm=none, norm=batch)"]
    assert not (tmp_path / "out").exists()  # no report.md or runs.csv that looks finished


def add_scalars(path, rows):
    """More (step, tag, value) rows in a run's metrics.csv (the probes' scalars)."""
    with open(path / "metrics.csv", "a") as f:
        f.writelines(f"{step},{tag},{value}\n" for step, tag, value in rows)


PROBE_CLAIMS = """study: the probes' measures
claims:
  - {id: gap, claim: BN overfits, paper: "-", measure: train_test_gap, variant: norm=batch, rule: {holds_above: 0}}
  - {id: less, claim: BN narrows the gap, paper: "-", measure: train_test_gap_gain, variant: norm=batch,
     baseline: norm=none, rule: {holds_below: 0}}
  - {id: shift, claim: dropout shifts the variance, paper: "-", measure: variance_shift, variant: norm=batch,
     rule: {holds_below: 0.9}}
  - {id: shifted, claim: BN's shift is the larger, paper: "-", measure: variance_shift_gain, variant: norm=batch,
     baseline: norm=none, rule: {holds_below: 0}}
  - {id: grads, claim: gradients explode at init, paper: "-", measure: init_grad_orders, variant: norm=batch,
     rule: {holds_above: 1}}
  - {id: fixed, claim: none gets to 90% sooner than BN, paper: "-", measure: speedup, variant: norm=none,
     baseline: norm=batch, target: 0.9, rule: {holds_above: 1}}
"""


def test_the_probes_measures_and_a_fixed_target(bnexp, tmp_path):
    """runs.csv's probe columns (the last train_set accuracy, the most shifted BN layer, the first
    layer's gradient over the last one's on the first step, layers in natural order) and the claims
    that read them; a fixed target compares any two variants' steps."""
    runs = tmp_path / "runs"
    for seed, (train, shift) in enumerate([(0.99, 0.80), (1.0, 0.70)]):
        path = make_run(runs, f"b{seed}", "batch", seed, {0: 0.1, 1000: 0.95, 2000: 0.96})
        add_scalars(path, [(1000, "train_set/accuracy", 0.5), (2000, "train_set/accuracy", train),
                           (2000, "varshift/hidden1", 1.0), (2000, "varshift/hidden2", shift),
                           (1000, "varshift/hidden2", 0.1),  # not the last evaluation
                           (1, "grad/hidden2/norm", 100.0), (1, "grad/hidden10/norm", 5.0),
                           (1, "grad/output/norm", 1.0), (50, "grad/hidden2/norm", 1.0)])
        path = make_run(runs, f"a{seed}", "none", seed, {0: 0.1, 3000: 0.90, 6000: 0.91})
        add_scalars(path, [(6000, "train_set/accuracy", 0.95), (6000, "varshift/hidden1", 0.9 + seed / 20)])
    done = bnexp("report", str(runs), "--targets", "0.9", "--claims", write(tmp_path, PROBE_CLAIMS),
                 "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    rows = {r["run"]: r for r in claims.read_runs_csv((tmp_path / "out" / "runs.csv").read_text())}
    assert rows["b1"]["final_train_accuracy"] == "1.0" and rows["b1"]["variance_shift"] == "0.7"
    assert rows["b0"]["init_grad_ratio"] == "100.0" and rows["a0"]["init_grad_ratio"] == ""
    verdict = (tmp_path / "out" / "verdict.md").read_text()
    assert "| BN overfits | - | 3.50 [-2.85, 9.85] points | Student t |" in verdict  # 0.99 - 0.96, 1.0 - 0.96
    assert "| BN narrows the gap | - | -0.50 [" in verdict  # 3.5 - 4.0 (0.95 - 0.91) points
    assert "| dropout shifts the variance | - | 0.750 [0.115, 1.385] |" in verdict  # 0.8, 0.7: t(1) is 12.7
    assert "| BN's shift is the larger | - | -0.175 [" in verdict  # 0.75 - 0.925
    # Both seeds' ratio is 100: zero spread, which decides nothing rather than proving anything.
    assert "| gradients explode at init | - | 2.00 [-∞, ∞] (log10) | Student t | 2 | holds above 1 | **inconclusive" \
        in verdict
    # Every seed of each at one step (3000 vs 1000): a speed-up with nothing to resample decides nothing.
    assert "| none gets to 90% sooner than BN | - | 0.33x [0.00, ∞] |" in verdict


def test_a_probe_measure_without_its_probe_is_one_line(bnexp, tmp_path):
    make_run(tmp_path / "runs", "a0", "none", 0, {0: 0.1, 6000: 0.90})
    make_run(tmp_path / "runs", "b0", "batch", 0, {0: 0.1, 2000: 0.96})
    done = bnexp("report", str(tmp_path / "runs"), "--claims", write(tmp_path, PROBE_CLAIMS))
    assert done.returncode == 2
    assert done.stderr.strip() == ("bnexp: error: claim gap: train_test_gap needs final_train_accuracy in every run "
                                   "of 'norm=batch': train them with trainer.eval_train=true")
    fixed = PROBE_CLAIMS.split("  - {id: gap")[0] + "  - {id: fixed" + PROBE_CLAIMS.split("  - {id: fixed")[1]
    done = bnexp("report", str(tmp_path / "runs"), "--claims", write(tmp_path, fixed))
    assert done.returncode == 2 and "runs.csv has no steps_to_0.9: add 0.9 to the report's --targets" in done.stderr


def test_verdict_table_sets_datasets_side_by_side(tmp_path):
    """scripts/verdict_table.py: a row per claim (the first file's order, then the others'), a column
    per verdict.csv, "-" where a file lacks the claim; a missing file is one line and exit 2."""
    import subprocess
    import sys
    from pathlib import Path

    fields = "id,claim,paper,measure,variant,baseline,target,value,low,high,seeds,verdict\n"
    (tmp_path / "a.csv").write_text(fields + "x14,BN is 14x faster,-,speedup,v,,target,\"3.0x [2.0, 4.0]\",2,4,3,"
                                    "does not hold (rough)\nhigher,BN ends higher,-,m,v,,t,\"+0.2 [0.1, 0.3]\",0.1,0.3,"
                                    "5,holds\n")
    (tmp_path / "b.csv").write_text(fields + "higher,BN ends higher,-,m,v,,t,\"-0.1 [-0.2, 0.0]\",-0.2,0,5,"
                                    "does not hold\nnew,another,-,m,v,,t,1,1,1,5,holds\n")
    script = Path(__file__).parent.parent / "scripts" / "verdict_table.py"
    done = subprocess.run([sys.executable, script, f"MNIST={tmp_path / 'a.csv'}", f"F={tmp_path / 'b.csv'}"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "| claim | MNIST | F |", "|---|---|---|",
        "| BN is 14x faster | 3.0x [2.0, 4.0]: **does not hold (rough)** (3 seeds) | - |",
        "| BN ends higher | +0.2 [0.1, 0.3]: **holds** (5 seeds) | -0.1 [-0.2, 0.0]: **does not hold** (5 seeds) |",
        "| another | - | 1: **holds** (5 seeds) |"]
    missing = subprocess.run([sys.executable, script, f"A={tmp_path / 'nope.csv'}"], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.startswith("verdict_table: error:")


def test_an_equivalence_claim_is_decided_on_both_sides(bnexp, tmp_path):
    """"BN ends as high as none" with a 1-point margin: 0.90-0.92 against 0.96-0.97 is 5.5 points
    better, wholly outside +-1: the claim that they are equivalent does not hold, where a one-sided
    'holds_above: -0.01' would have called it held."""
    for seed, (a, b) in enumerate([(0.90, 0.96), (0.92, 0.97), (0.91, 0.965)]):
        make_run(tmp_path / "runs", f"a{seed}", "none", seed, {0: 0.1, 6000: a})
        make_run(tmp_path / "runs", f"b{seed}", "batch", seed, {0: 0.1, 2000: b})
    text = ("claims:\n  - {id: same, claim: as high, measure: best_accuracy_gain, variant: norm=batch, "
            "rule: {within: 0.01}}\n")
    done = bnexp("report", str(tmp_path / "runs"), "--claims", write(tmp_path, text), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    [row] = claims.read_runs_csv((tmp_path / "out" / "verdict.csv").read_text())
    assert row["verdict"] == "does not hold (rough)" and float(row["low"]) > 0.01
    assert "| holds within ±0.01 | **does not hold (rough)** |" in (tmp_path / "out" / "verdict.md").read_text()


def test_unfinished_runs_are_left_out_and_said(bnexp, tmp_path):
    """An interrupted run would count as finished at whatever step it stopped: it is left out, and
    the verdicts list it; with no finished run at all the report refuses."""
    make_run(tmp_path / "runs", "a0", "none", 0, {0: 0.1, 3000: 0.85, 6000: 0.90})
    make_run(tmp_path / "runs", "a1", "none", 1, {0: 0.1, 5000: 0.90, 6000: 0.92})
    make_run(tmp_path / "runs", "b0", "batch", 0, {0: 0.1, 1000: 0.95, 2000: 0.96})
    make_run(tmp_path / "runs", "b1", "batch", 1, {0: 0.1, 1000: 0.90, 2000: 0.97})
    make_run(tmp_path / "runs", "b2", "batch", 2, {0: 0.1, 100: 0.20}, status="interrupted")
    done = bnexp("report", str(tmp_path / "runs"), "--claims", write(tmp_path, CLAIMS), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    verdict = (tmp_path / "out" / "verdict.md").read_text()
    assert "**Left out: 1 runs that did not finish** (b2 (interrupted))" in verdict
    assert "| BN gets there sooner | 14x | 5.50x [5.00, 6.00] | percentile bootstrap | 2 |" in verdict  # b0, b1
    rows = (tmp_path / "out" / "runs.csv").read_text()
    unfinished = rows.replace(",completed,", ",interrupted,")
    (tmp_path / "bad.csv").write_text(unfinished)
    refused = bnexp("report", str(tmp_path / "bad.csv"), "--claims", write(tmp_path, CLAIMS))
    assert refused.returncode == 2 and "no finished run (completed or diverged)" in refused.stderr


@pytest.mark.parametrize("decided, survives", [
    # Holm over 4 claims at 5%: the smallest p must be under 1.25%, the next under 1.67%, then 2.5%, 5%.
    ([0.999, 0.99, 0.98, 0.96], [True, True, True, True]),
    ([0.999, 0.97, 0.999, None], [True, False, True, False]),  # 3% > 1.67% stops the steps; None: undecided
    ([0.97, 0.974, 0.999, 0.999], [False, False, True, True]),  # 2.6% > 2.5%: neither it nor 3% survives
])
def test_holm_steps_down_over_the_studys_claims(decided, survives):
    claim = claims.Claim("c", "", "", "speedup", "v", None, "target", {"holds_above": 1})
    found = claims.holm([claims.Verdict(claim, "", 0, 0, 0, 5, "", claims.HOLDS if d else claims.INCONCLUSIVE, d)
                         for d in decided])
    assert [v.family_wise for v in found] == [
        ("survives" if s else "does not survive") if d else "" for d, s in zip(decided, survives, strict=True)]


def test_verdict_table_marks_verdicts_the_family_wise_check_does_not_keep(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "v.csv").write_text(
        "id,claim,value,seeds,verdict,family_wise\n"
        "a,kept,\"1 [0.5, 2]\",5,holds,survives\nb,lost,\"1 [0.1, 2]\",5,holds,does not survive\n"
        "c,open,\"1 [-1, 2]\",5,inconclusive,\n")
    script = Path(__file__).parent.parent / "scripts" / "verdict_table.py"
    done = subprocess.run([sys.executable, script, f"M={tmp_path / 'v.csv'}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2:] == ["| kept | 1 [0.5, 2]: **holds** (5 seeds) |",
                                            "| lost | 1 [0.1, 2]: **holds** (5 seeds; not after Holm) |",
                                            "| open | 1 [-1, 2]: **inconclusive** (5 seeds) |"]


def test_every_committed_verdict_is_what_its_claims_file_computes_from_its_runs_csv():
    """results/: each study's verdict.csv is what bnexp/claims.py decides from the study's runs.csv
    today (`python scripts/verdicts.py remake` re-makes them); a stale or hand-edited verdict fails."""
    import csv
    from pathlib import Path

    results = Path(__file__).parent.parent / "results"
    studies = sorted(p.parent for p in results.glob("**/verdict.csv") if (p.parent / "runs.csv").is_file())
    assert len(studies) >= 16
    for study in studies:
        rules = claims.load(str(claims.study_claims(study)))
        found = claims.evaluate(rules, claims.read_runs_csv((study / "runs.csv").read_text()))
        with open(study / "verdict.csv", newline="") as f:
            committed = [(r["id"], r["value"], r["verdict"], r["family_wise"]) for r in csv.DictReader(f)]
        assert committed == [(v.claim.id, v.value, v.verdict, v.family_wise) for v in found.verdicts], study


def test_a_study_folder_is_decided_by_the_nearest_claims_file_above_it(tmp_path):
    results = tmp_path / "results"
    (results / "study" / "mnist" / "ten_seeds").mkdir(parents=True)
    (results / "study" / "claims.yaml").write_text("study: s\nclaims: []\n")
    assert claims.study_claims(results / "study" / "mnist" / "ten_seeds") == results / "study" / "claims.yaml"
    (results / "study" / "mnist" / "ten_seeds" / "claims.yaml").write_text("study: t\nclaims: []\n")
    assert claims.study_claims(results / "study" / "mnist" / "ten_seeds") == (
        results / "study" / "mnist" / "ten_seeds" / "claims.yaml")
    (results / "other").mkdir()
    (tmp_path / "claims.yaml").write_text("study: outside results\nclaims: []\n")  # never looked at
    with pytest.raises(UserError, match="no claims.yaml"):
        claims.study_claims(results / "other")


PHASE_CLAIMS = """study: probes by phase
claims:
  - {id: steadier, claim: BN's gradient turns less early, paper: "-", measure: probe_gain, variant: norm=batch,
     baseline: norm=none, probe: "ics/hidden3/cos@1-200", rule: {holds_above: 0}}
  - {id: cos, claim: BN's cos late, paper: "-", measure: probe, variant: norm=batch,
     probe: "ics/hidden3/cos@201-400", rule: {holds_above: 0.5}}
"""


def test_probe_medians_by_phase_and_the_claims_that_read_them(bnexp, tmp_path):
    """--phases: runs.csv gains each step probe's median over a phase's probed steps (inclusive);
    probe and probe_gain claims read those columns (Student t, Welch t)."""
    runs = tmp_path / "runs"
    for seed in range(3):
        path = make_run(runs, f"b{seed}", "batch", seed, {0: 0.1, 400: 0.95})
        add_scalars(path, [(1, "ics/hidden3/cos", 0.8 + seed / 100), (100, "ics/hidden3/cos", 0.9),
                           (200, "ics/hidden3/cos", 1.0), (300, "ics/hidden3/cos", 0.7 + seed / 10),
                           (100, "landscape/loss_range", 2.0), (1, "ics/hidden3/l2", 0.1)])
        path = make_run(runs, f"a{seed}", "none", seed, {0: 0.1, 400: 0.9})
        add_scalars(path, [(1, "ics/hidden3/cos", 0.5), (200, "ics/hidden3/cos", 0.6 + seed / 10),
                           (201, "ics/hidden3/cos", 0.99), (300, "ics/hidden3/cos", 0.4), (1, "ics/hidden3/l2", 0.2)])
    done = bnexp("report", str(runs), "--phases", "1-200,201-400", "--claims", write(tmp_path, PHASE_CLAIMS),
                 "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    rows = {r["run"]: r for r in claims.read_runs_csv((tmp_path / "out" / "runs.csv").read_text())}
    assert float(rows["b2"]["ics/hidden3/cos@1-200"]) == pytest.approx(0.9)  # median of 0.82, 0.9, 1.0
    assert float(rows["a1"]["ics/hidden3/cos@1-200"]) == pytest.approx(0.6)  # median of 0.5, 0.7
    assert float(rows["a0"]["ics/hidden3/cos@201-400"]) == pytest.approx((0.99 + 0.4) / 2)
    assert rows["a0"]["landscape/loss_range@1-200"] == ""  # a probe the run did not take
    verdict = (tmp_path / "out" / "verdict.md").read_text()
    # BN 0.9 in every seed, none 0.55, 0.6, 0.65 (medians): +0.3, Welch t on 3 seeds each.
    assert "| BN's gradient turns less early | - | 0.3 [" in verdict and "| Welch t | 3 |" in verdict
    # 0.7, 0.8, 0.9: 0.8 ± t(2) 4.30 x 0.1 / sqrt(3)
    assert "| BN's cos late | - | 0.8 [0.552, 1.05] | Student t | 3 | holds above 0.5 | **holds (rough)**" in verdict
    # A phase the report was not asked for: one line, nothing written.
    done = bnexp("report", str(runs), "--phases", "1-100", "--claims", write(tmp_path, PHASE_CLAIMS),
                 "--out", str(tmp_path / "out2"))
    assert done.returncode == 2 and not (tmp_path / "out2").exists()
    assert "runs.csv has no ics/hidden3/cos@1-200: make the report with --phases 1-200" in done.stderr
    for bad in ("200-1", "1-x", ""):
        assert bnexp("report", str(runs), "--phases", bad).returncode == 2


def test_phases_without_step_probes_and_a_probe_without_its_measure_are_refused(bnexp, tmp_path):
    make_run(tmp_path / "runs", "a0", "none", 0, {0: 0.1, 100: 0.9})
    done = bnexp("report", str(tmp_path / "runs"), "--phases", "1-100")
    assert done.returncode == 2 and "no run took them" in done.stderr
    wrong = PHASE_CLAIMS.replace("measure: probe_gain", "measure: best_accuracy_gain")
    with pytest.raises(UserError, match="probe .* goes with measure probe or probe_gain"):
        claims.load(write(tmp_path, wrong))


EVALUATE_CLAIMS = """study: statistics under shift
claims:
  - {id: adapt, claim: re-estimating gains on noise, paper: "-", measure: probe, variant: norm=batch,
     probe: "evaluate/noise/target_n512_prior0 - evaluate/noise/running", rule: {holds_above: 0}}
  - {id: ln, claim: LN under shift against BN adapted, paper: "-", measure: probe_gain, variant: norm=layer,
     baseline: norm=batch, probe: evaluate/noise/running, baseline_probe: evaluate/noise/target_n512_prior0,
     rule: {holds_below: 0}}
"""


def write_evaluation(path, step, rows):
    """RUN_DIR/evaluate/step_<step>/evaluation.csv as bnexp evaluate writes it: (set, label, accuracy) rows."""
    out = path / "evaluate" / f"step_{step}"
    out.mkdir(parents=True)
    lines = ["set,severity,mode,label,accuracy,checkpoint_step"]
    lines += [f"{s},,{label.split('_')[0]},{label},{a},{step}" for s, label, a in rows]
    (out / "evaluation.csv").write_text("\n".join(lines) + "\n")


def test_claims_read_bnexp_evaluates_accuracies_run_by_run_and_across_columns(bnexp, tmp_path):
    """runs.csv gets an evaluate/<set>/<label> column per evaluated accuracy (the newest checkpoint's);
    a probe `a - b` is the per-run difference (Student t over seeds); baseline_probe reads the
    baseline's runs in another column (Welch t)."""
    runs = tmp_path / "runs"
    for seed, (running, adapted) in enumerate([(0.50, 0.80), (0.60, 0.85), (0.40, 0.78)]):
        path = make_run(runs, f"b{seed}", "batch", seed, {0: 0.1, 2000: 0.96})
        write_evaluation(path, 1000, [("noise", "running", 0.1), ("noise", "target_n512_prior0", 0.1)])
        write_evaluation(path, 2000, [("noise", "running", running), ("noise", "target_n512_prior0", adapted)])
        path = make_run(runs, f"a{seed}", "layer", seed, {0: 0.1, 2000: 0.95})
        write_evaluation(path, 2000, [("noise", "running", 0.6 + seed / 100)])
    done = bnexp("report", str(runs), "--claims", write(tmp_path, EVALUATE_CLAIMS), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    rows = {r["run"]: r for r in claims.read_runs_csv((tmp_path / "out" / "runs.csv").read_text())}
    assert rows["b1"]["evaluate/noise/running"] == "0.6" and rows["a0"]["evaluate/noise/target_n512_prior0"] == ""
    verdict = (tmp_path / "out" / "verdict.md").read_text()
    # Gains 0.30, 0.25, 0.38: mean 0.31, sd 0.0656, t(2) 4.303: +-0.163.
    assert "| re-estimating gains on noise | - | 0.31 [0.147, 0.473] | Student t | 3 |" in verdict
    # LN 0.60, 0.61, 0.62 against BN adapted 0.80, 0.85, 0.78: -0.20 (Welch).
    assert ("| LN under shift against BN adapted | - | -0.2 [-0.282, -0.118] | Welch t | 3 | holds below 0 "
            "| **holds") in verdict
    missing = EVALUATE_CLAIMS.replace("evaluate/noise/running, baseline_probe", "evaluate/blur/running, baseline_probe")
    done = bnexp("report", str(runs), "--claims", write(tmp_path, missing))
    assert done.returncode == 2 and "runs.csv has no evaluate/blur/running: run `bnexp evaluate` on its runs" \
        in done.stderr
    wrong = EVALUATE_CLAIMS.replace("measure: probe_gain", "measure: probe")
    with pytest.raises(UserError, match="baseline_probe .* goes with measure probe_gain only"):
        claims.load(write(tmp_path, wrong))
