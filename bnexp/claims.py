"""Claims as code: a study's claims file declares each claim, the quantity that decides it and the
rule that turns its measured interval into a verdict; `bnexp report --claims NAME` computes them
from runs.csv (one row per run) into verdict.md and verdict.csv. No verdict is typed by hand.

A claims file (results/<study>/claims.yaml, or any path):

    study: Figure 1 on MNIST
    claims:
      - id: faster
        claim: BN reaches the baseline's accuracy in fewer steps     # the claim, in words
        paper: "..."                                                  # the paper's number or words
        measure: speedup          # speedup | p_sooner | best_accuracy | final_accuracy
                                  # | best_accuracy_gain | final_accuracy_gain | diverged_share
                                  # | train_test_gap | train_test_gap_gain | variance_shift
                                  # | variance_shift_gain | init_grad_orders
        variant: norm=batch       # as the report names variants
        baseline: norm=none       # for speedup, p_sooner and the gains (default: the report's)
        target: every_seed        # speedup, p_sooner: target (the baseline's mean best), every_seed (its
                                  # lowest best), or a fixed accuracy among the report's --targets (0.9)
        rule: {holds_above: 1.0}  # or holds_below; with partly_above / partly_below

The probes' measures read runs.csv's probe columns (bnexp/report.py probe_columns): train_test_gap
is the final train_set accuracy minus the final test accuracy, in points (trainer.eval_train);
variance_shift the most shifted BN layer's ratio (probes.variance_shift), and variance_shift_gain
the variant's ratio minus the baseline's (what dropout adds to a net's own shift); init_grad_orders
the log10 of the first weight layer's gradient norm over the last one's at the initial weights
(probes.grad_every): 2 means the first layer's gradient is 100x the last layer's.

The rule splits the line into regions: above `holds_above` the claim holds, between it and
`partly_above` it holds in part, below that it does not hold (mirrored for `holds_below`). The
verdict is the region the whole 95% interval lies in, or "inconclusive" when the interval spans
two; "rough" is added where the interval rests on fewer than stats.ROUGH seeds.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from bnexp import stats
from bnexp.config import config_dir
from bnexp.errors import UserError

MEASURES = ("speedup", "p_sooner", "best_accuracy", "final_accuracy", "best_accuracy_gain", "final_accuracy_gain",
            "diverged_share", "train_test_gap", "train_test_gap_gain", "variance_shift", "variance_shift_gain",
            "init_grad_orders")
BASELINE_TARGETS = ("target", "every_seed")  # steps to these are counted to the report's baseline's bests
HOLDS, PARTLY, NOT, INCONCLUSIVE = "holds", "partly", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    paper: str
    measure: str
    variant: str
    baseline: str | None
    target: str  # one of BASELINE_TARGETS, or a fixed accuracy as runs.csv names its column ("0.9")
    rule: dict


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    value: str  # the measured quantity and its interval, as shown
    low: float
    high: float
    n: int
    verdict: str


def load(name: str) -> tuple[str, list[Claim]]:
    """A claims file by path, or a study's by its name (results/<name>/claims.yaml in a source
    checkout); (its study, its claims)."""
    path, results = Path(name), config_dir().parent / "results"
    if not path.is_file():
        path = results / name / "claims.yaml"
    if not path.is_file():
        known = sorted(p.parent.name for p in results.glob("*/claims.yaml"))
        raise UserError(f"no claims file {name!r}: a path, or a study's name ({', '.join(known) or 'none found'})")
    try:
        spec = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as e:
        raise UserError(f"{path} cannot be read ({type(e).__name__}: {e})") from None
    claims = []
    for i, c in enumerate(spec.get("claims", []) if isinstance(spec, dict) else []):
        where = f"{path}: claim {i + 1}"
        if not isinstance(c, dict) or c.get("measure") not in MEASURES:
            raise UserError(f"{where}: measure must be one of {', '.join(MEASURES)}")
        rule = c.get("rule") or {}
        if len({"holds_above", "holds_below"} & set(rule)) != 1 or set(rule) - {
                "holds_above", "holds_below", "partly_above", "partly_below"}:
            raise UserError(f"{where}: rule needs one of holds_above, holds_below (with partly_above / partly_below)")
        if ("holds_above" in rule and "partly_below" in rule) or ("holds_below" in rule and "partly_above" in rule):
            raise UserError(f"{where}: a rule's partly threshold goes the same way as its holds threshold")
        target = c.get("target", "every_seed")
        if target not in BASELINE_TARGETS and not (_is_number(target) and 0 < float(target) <= 1):
            raise UserError(f"{where}: target must be target (the baseline's mean best), every_seed (its lowest "
                            f"best) or an accuracy in (0, 1], got {target!r}")
        claims.append(Claim(str(c.get("id", i + 1)), str(c.get("claim", "")), str(c.get("paper", "")), c["measure"],
                            str(c.get("variant", "")), c.get("baseline"),
                            target if target in BASELINE_TARGETS else f"{float(target):g}", rule))
    if not claims:
        raise UserError(f"{path} declares no claims")
    return str(spec.get("study", path.stem)), claims


def _is_number(value) -> bool:
    try:
        float(value)
        return not isinstance(value, bool)
    except (TypeError, ValueError):
        return False


def read_runs_csv(text: str) -> list[dict]:
    """runs.csv's rows (its text), as the verdicts read them."""
    return list(csv.DictReader(io.StringIO(text)))


def decide(rule: dict, low: float, high: float) -> str:
    """The region of the rule's line that the interval [low, high] lies in."""
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    above = "holds_above" in rule
    sign = 1 if above else -1
    holds = sign * rule["holds_above" if above else "holds_below"]
    partly = rule.get("partly_above" if above else "partly_below")
    partly = holds if partly is None else sign * partly
    lo, hi = sorted((sign * low, sign * high))

    def region(x: float) -> str:
        return HOLDS if x > holds else PARTLY if x > partly else NOT

    return region(lo) if region(lo) == region(hi) else INCONCLUSIVE


def evaluate(claims: list[Claim], rows: list[dict]) -> list[Verdict]:
    """Each claim's measure, from runs.csv rows, with its interval and verdict. Steps are compared
    with the report's baseline (its rows are marked in runs.csv); accuracies with any variant."""
    by_variant: dict[str, list[dict]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    default = next(row["variant"] for row in rows if row["baseline"] == "True")
    verdicts = []
    for claim in claims:
        baseline = claim.baseline or default
        steps = claim.measure in ("speedup", "p_sooner")
        if steps and claim.target in BASELINE_TARGETS and baseline != default:
            raise UserError(f"claim {claim.id}: steps to the baseline's best are counted to the report's baseline "
                            f"({default}); run the report with --baseline {baseline}, or give a fixed target")
        for name in (claim.variant, baseline):
            if name not in by_variant:
                raise UserError(f"claim {claim.id}: no variant {name!r} among the runs ({', '.join(by_variant)})")
        column = f"steps_to_{claim.target}"
        if steps and column not in rows[0]:
            raise UserError(f"claim {claim.id}: runs.csv has no {column}: add {claim.target} to the report's --targets")
        needed = PROBE_COLUMN.get(claim.measure)
        read = [claim.variant, *([baseline] if claim.measure.endswith("_gain") else [])]
        if needed and not all(r.get(needed) for name in read for r in by_variant[name]):
            raise UserError(f"claim {claim.id}: {claim.measure} needs {needed} in every run of "
                            f"{' and '.join(map(repr, read))}: train them with {PROBE_SETTING[needed]}")
        value, low, high, n = measure(claim.measure, by_variant[claim.variant], by_variant[baseline], column)
        verdict = decide(claim.rule, low, high)
        verdicts.append(Verdict(claim, value, low, high, n, verdict + (" (rough)" if n < stats.ROUGH else "")))
    return verdicts


# The probe column each probe measure reads, and the setting that takes the probe.
PROBE_COLUMN = {"train_test_gap": "final_train_accuracy", "train_test_gap_gain": "final_train_accuracy",
                "variance_shift": "variance_shift", "variance_shift_gain": "variance_shift",
                "init_grad_orders": "init_grad_ratio"}
PROBE_SETTING = {"final_train_accuracy": "trainer.eval_train=true", "variance_shift": "probes.variance_shift=true",
                 "init_grad_ratio": "probes.grad_every > 0"}


def gaps(rows: list[dict]) -> list[float]:
    return [float(r["final_train_accuracy"]) - float(r["final_accuracy"]) for r in rows]


def censored(rows: list[dict], column: str) -> stats.Censored:
    return stats.Censored.of([int(r[column]) if r[column] else None for r in rows],
                             [int(r["last_evaluated_step"]) for r in rows])


def measure(name: str, runs: list[dict], base: list[dict], column: str) -> tuple[str, float, float, int]:
    """(shown value with interval, interval low, interval high, seeds it rests on)."""
    if name == "speedup":
        sp = stats.speedup(censored(base, column), censored(runs, column))
        return stats.fmt_speedup(sp, interval=True), sp.interval_low, sp.interval_high, sp.n
    if name == "p_sooner":
        e = stats.probability_of_improvement(censored(base, column), censored(runs, column))
        return stats.fmt_estimate(e, 1, 2), e.low, e.high, e.n
    if name in ("best_accuracy", "final_accuracy"):
        e = stats.mean([float(r[name]) for r in runs])
        return stats.fmt_estimate(e, 100, 2) + "%", e.low, e.high, e.n
    if name in ("best_accuracy_gain", "final_accuracy_gain"):
        key = name.removesuffix("_gain")
        e = stats.difference([float(r[key]) for r in runs], [float(r[key]) for r in base])
        return stats.fmt_estimate(e, 100, 2) + " points", e.low, e.high, e.n
    if name == "train_test_gap":
        e = stats.mean(gaps(runs))
        return stats.fmt_estimate(e, 100, 2) + " points", e.low, e.high, e.n
    if name == "train_test_gap_gain":
        e = stats.difference(gaps(runs), gaps(base))
        return stats.fmt_estimate(e, 100, 2) + " points", e.low, e.high, e.n
    if name == "variance_shift":
        e = stats.mean([float(r["variance_shift"]) for r in runs])
        return stats.fmt_estimate(e, 1, 3), e.low, e.high, e.n
    if name == "variance_shift_gain":
        e = stats.difference([float(r["variance_shift"]) for r in runs], [float(r["variance_shift"]) for r in base])
        return stats.fmt_estimate(e, 1, 3), e.low, e.high, e.n
    if name == "init_grad_orders":
        e = stats.mean([math.log10(float(r["init_grad_ratio"])) for r in runs])
        return stats.fmt_estimate(e, 1, 2) + " (log10)", e.low, e.high, e.n
    e = stats.mean([float(r["status"] == "diverged") for r in runs])
    return stats.fmt_estimate(e, 100, 0) + "%", e.low, e.high, e.n


def verdict_markdown(study: str, verdicts: list[Verdict], source: str) -> str:
    lines = [f"# Verdicts: {study}", "", f"Computed by bnexp/claims.py from {source}: each claim's measure with its "
             f"95% interval (percentile bootstrap over seeds, {stats.RESAMPLES:,} resamples) and the claims "
             "file's rule; `rough`: fewer than 5 seeds.", "",
             "| claim | the paper | measured [95% interval] | seeds | rule | verdict |", "|---|---|---|---|---|---|"]
    for v in verdicts:
        rule = ", ".join(f"{k.replace('_', ' ')} {x:g}" for k, x in v.claim.rule.items())
        lines.append(f"| {v.claim.claim} | {v.claim.paper} | {v.value} | {v.n} | {rule} | **{v.verdict}** |")
    return "\n".join(lines) + "\n"


def write_verdicts(study: str, verdicts: list[Verdict], out: Path, source: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "verdict.md").write_text(verdict_markdown(study, verdicts, source))
    with open(out / "verdict.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "claim", "paper", "measure", "variant", "baseline", "target", "value", "low", "high", "seeds",
                    "verdict"])
        for v in verdicts:
            c = v.claim
            w.writerow([c.id, c.claim, c.paper, c.measure, c.variant, c.baseline or "", c.target, v.value, v.low,
                        v.high, v.n, v.verdict])
    return [out / "verdict.md", out / "verdict.csv"]
