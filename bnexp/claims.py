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
                                  # | variance_shift_gain | init_grad_orders | probe | probe_gain
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
(probes.grad_every): 2 means the first layer's gradient is 100x the last layer's. probe and
probe_gain read the runs.csv column a claim names as `probe: ics/hidden3/cos@1-2500`: a step probe's
median over a phase of training (bnexp report --phases 1-2500), or `probe: longer/append16/drop`: the
test accuracy lost on sequences 16 rows longer, at the last evaluation (probes.longer_rows), or
`probe: evaluate/noise/target_n512_prior0`: an accuracy of `bnexp evaluate` (a set or family, and a
mode); the mean over seeds (Student t), or the variant's minus the baseline's (Welch t). A probe may
be one column minus another, run by run (`probe: evaluate/noise/target_n512_prior0 - evaluate/noise/running`:
what re-estimating gains in each run), and probe_gain may read the baseline's runs in another column
(`baseline_probe:`, e.g. an LN net's running accuracy against a BN net's adapted one).

The rule splits the line into regions: above `holds_above` the claim holds, between it and
`partly_above` it holds in part, below that it does not hold (mirrored for `holds_below`). An
equivalence claim ("as well as", "within 1 point", "no advantage") is two-sided: `within: m` holds
where the whole interval lies inside [-m, m] and does not hold where it lies wholly outside. The
verdict is the region the whole interval (at stats.CONFIDENCE) lies in, or "inconclusive" when it
spans two; "rough" is added where the interval rests on fewer than stats.ROUGH seeds.

Only finished runs (completed or diverged) count; interrupted or failed ones are left out and the
verdicts say so. Across a study's claims, a few decided verdicts would be wrong by chance at 95%
each; each decided verdict says whether it survives Holm's family-wise correction over the study's
claims: its interval is widened until the verdict no longer stands (the highest level it is decided
at, `decided_to`, whose complement acts as its p-value) and Holm's step-down rule is applied at
1 - stats.CONFIDENCE.
"""

from __future__ import annotations

import csv
import io
import math
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from omegaconf import OmegaConf

from bnexp import stats
from bnexp.config import config_dir
from bnexp.errors import UserError

MEASURES = ("speedup", "p_sooner", "best_accuracy", "final_accuracy", "best_accuracy_gain", "final_accuracy_gain",
            "diverged_share", "train_test_gap", "train_test_gap_gain", "variance_shift", "variance_shift_gain",
            "init_grad_orders", "probe", "probe_gain")
BASELINE_TARGETS = ("target", "every_seed")  # steps to these are counted to the report's baseline's bests
HOLDS, PARTLY, NOT, INCONCLUSIVE = "holds", "partly", "does not hold", "inconclusive"
FINISHED = ("completed", "diverged")  # the runs a verdict counts
RULE_KEYS = {"holds_above", "holds_below", "partly_above", "partly_below", "within"}


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
    probe: str | None = None  # probe, probe_gain: the runs.csv column they read ("ics/hidden3/cos@1-2500"),
    # or one column minus another of the same run ("evaluate/noise/target_n512_prior0 - evaluate/noise/running")
    baseline_probe: str | None = None  # probe_gain: the baseline's column, where it is not `probe`


@dataclass(frozen=True)
class ClaimsFile:
    study: str
    claims: list[Claim]
    path: Path


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    value: str  # the measured quantity and its interval, as shown
    estimate: float  # the measured quantity itself (nan for a speed-up known only as a bound)
    low: float
    high: float
    n: int
    method: str  # the interval's (stats.T, stats.WELCH, ...)
    verdict: str
    decided_to: float | None = None  # the highest level at which a decided verdict still stands
    family_wise: str = ""  # survives / does not survive (Holm over the study's claims); "" if undecided


@dataclass(frozen=True)
class Verdicts:
    study: str
    verdicts: list[Verdict]
    excluded: list[str]  # runs left out because they did not finish: "run (status)"
    provenance: list[str]  # where the rules and the runs come from (git commits), for verdict.md


def study_claims(folder: Path) -> Path:
    """The claims file that decides a study folder of results/: its own claims.yaml, or the nearest
    one above it (bn_lr/claims.yaml decides bn_lr/mnist and bn_lr/mnist/ten_seeds)."""
    for parent in (folder, *folder.parents):
        if (parent / "claims.yaml").is_file():
            return parent / "claims.yaml"
        if parent.name == "results":
            break
    raise UserError(f"{folder}: no claims.yaml in it or in a folder above it")


def load(name: str) -> ClaimsFile:
    """A claims file by path, or a study's by its name (results/<name>/claims.yaml in a source
    checkout, e.g. bn_lr or schedule/mnist)."""
    path, results = Path(name), config_dir().parent / "results"
    if not path.is_file():
        path = results / name / "claims.yaml"
    if not path.is_file():
        known = sorted(str(p.parent.relative_to(results)) for p in results.glob("**/claims.yaml"))
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
        rule = check_rule(c.get("rule"), where)
        target = c.get("target", "every_seed")
        if target not in BASELINE_TARGETS and not (_is_number(target) and 0 < float(target) <= 1):
            raise UserError(f"{where}: target must be target (the baseline's mean best), every_seed (its lowest "
                            f"best) or an accuracy in (0, 1], got {target!r}")
        probe, baseline_probe = c.get("probe"), c.get("baseline_probe")
        if (c["measure"] in ("probe", "probe_gain")) != (probe is not None):
            raise UserError(f"{where}: probe (a runs.csv column: <tag>@<first>-<last>, longer/<side><k>/drop) goes "
                            "with measure probe or probe_gain, and only with them")
        if baseline_probe is not None and c["measure"] != "probe_gain":
            raise UserError(f"{where}: baseline_probe (the baseline's runs.csv column) goes with measure "
                            "probe_gain only")
        claims.append(Claim(str(c.get("id", i + 1)), str(c.get("claim", "")), str(c.get("paper", "")), c["measure"],
                            str(c.get("variant", "")), c.get("baseline"),
                            target if target in BASELINE_TARGETS else f"{float(target):g}", rule,
                            None if probe is None else str(probe),
                            None if baseline_probe is None else str(baseline_probe)))
    if not claims:
        raise UserError(f"{path} declares no claims")
    ids = [c.id for c in claims]
    if len(set(ids)) < len(ids):
        raise UserError(f"{path}: claim ids repeat ({', '.join(sorted({i for i in ids if ids.count(i) > 1}))})")
    return ClaimsFile(str(spec.get("study", path.stem)), claims, path)


def check_rule(rule, where: str) -> dict:
    rule = rule if isinstance(rule, dict) else {}
    if set(rule) - RULE_KEYS or not all(_is_number(x) for x in rule.values()):
        raise UserError(f"{where}: a rule's keys are {', '.join(sorted(RULE_KEYS))}, with numbers")
    if "within" in rule:
        if len(rule) != 1 or not float(rule["within"]) > 0:
            raise UserError(f"{where}: a within rule stands alone, with a margin > 0 (holds inside [-m, m])")
        return rule
    if len({"holds_above", "holds_below"} & set(rule)) != 1:
        raise UserError(f"{where}: rule needs one of holds_above, holds_below (with partly_above / partly_below), "
                        "or within")
    if ("holds_above" in rule and "partly_below" in rule) or ("holds_below" in rule and "partly_above" in rule):
        raise UserError(f"{where}: a rule's partly threshold goes the same way as its holds threshold")
    return rule


def _is_number(value) -> bool:
    try:
        float(value)
        return not isinstance(value, bool)
    except (TypeError, ValueError):
        return False


def read_runs_csv(text: str) -> list[dict]:
    """runs.csv's rows (its text), as the verdicts read them."""
    return list(csv.DictReader(io.StringIO(text)))


def finished_by_variant(rows: list[dict]) -> dict[str, list[dict]]:
    """runs.csv's finished rows (completed or diverged) by variant, in the file's order."""
    by_variant: dict[str, list[dict]] = {}
    for row in rows:
        if row["status"] in FINISHED:
            by_variant.setdefault(row["variant"], []).append(row)
    return by_variant


def decide(rule: dict, low: float, high: float) -> str:
    """The region of the rule's line that the interval [low, high] lies in."""
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    if "within" in rule:
        margin = rule["within"]
        if -margin < low and high < margin:
            return HOLDS
        return NOT if high < -margin or low > margin else INCONCLUSIVE
    above = "holds_above" in rule
    sign = 1 if above else -1
    holds = sign * rule["holds_above" if above else "holds_below"]
    partly = rule.get("partly_above" if above else "partly_below")
    partly = holds if partly is None else sign * partly
    lo, hi = sorted((sign * low, sign * high))

    def region(x: float) -> str:
        return HOLDS if x > holds else PARTLY if x > partly else NOT

    return region(lo) if region(lo) == region(hi) else INCONCLUSIVE


def evaluate(claims: ClaimsFile, rows: list[dict], runs_csv: Path | None = None) -> Verdicts:
    """Each claim's measure, from runs.csv rows (finished runs only), with its interval, verdict and
    family-wise check. Steps are compared with the report's baseline (its rows are marked in
    runs.csv); accuracies with any variant. `runs_csv`: the file the rows were read from, if any."""
    excluded = [f"{r['run']} ({r['status']})" for r in rows if r["status"] not in FINISHED]
    finished = [r for r in rows if r["status"] in FINISHED]
    if not finished:
        raise UserError("no finished run (completed or diverged) to decide the claims: "
                        f"{', '.join(excluded) or 'runs.csv is empty'}")
    by_variant = finished_by_variant(finished)
    default = next((row["variant"] for row in rows if row["baseline"] == "True"), None)
    found = []
    for claim in claims.claims:
        baseline = claim.baseline or default
        steps = claim.measure in ("speedup", "p_sooner")
        if steps and claim.target in BASELINE_TARGETS and baseline != default:
            raise UserError(f"claim {claim.id}: steps to the baseline's best are counted to the report's baseline "
                            f"({default}); run the report with --baseline {baseline}, or give a fixed target")
        for name in (claim.variant, baseline):
            if name not in by_variant:
                raise UserError(f"claim {claim.id}: no variant {name!r} among the finished runs "
                                f"({', '.join(by_variant)})")
        column = f"steps_to_{claim.target}"
        if steps and column not in rows[0]:
            raise UserError(f"claim {claim.id}: runs.csv has no {column}: add {claim.target} to the report's --targets")
        needed = PROBE_COLUMN.get(claim.measure)
        read = [claim.variant, *([baseline] if claim.measure.endswith("_gain") else [])]
        for probe, names in (((claim.probe, [claim.variant]), (claim.baseline_probe or claim.probe, read[1:]))
                             if claim.probe else ()):
            for key in columns_of(probe):
                if key not in rows[0]:
                    how = (f"make the report with --phases {key.rpartition('@')[2]} from runs that took the ICS and "
                           "landscape probes" if "@" in key else "run `bnexp evaluate` on its runs"
                           if key.startswith("evaluate/") else "train its runs with probes.longer_rows")
                    raise UserError(f"claim {claim.id}: runs.csv has no {key}: {how}")
                if not all(r.get(key) for name in names for r in by_variant[name]):
                    raise UserError(f"claim {claim.id}: {key} is empty in some runs of {' and '.join(map(repr, names))}"
                                    " (no probed step in that phase, or not evaluated)")
        if needed and not all(r.get(needed) for name in read for r in by_variant[name]):
            raise UserError(f"claim {claim.id}: {claim.measure} needs {needed} in every run of "
                            f"{' and '.join(map(repr, read))}: train them with {PROBE_SETTING[needed]}")

        def at(level: float, claim=claim, baseline=baseline, column=column):
            return measure(claim.measure, by_variant[claim.variant], by_variant[baseline], claim.probe or column,
                           level, base_column=claim.baseline_probe)

        value, estimate, low, high, n, method = at(stats.CONFIDENCE)
        verdict = decide(claim.rule, low, high)
        decided_to = None if verdict == INCONCLUSIVE else highest_level(claim.rule, verdict, at)
        found.append(Verdict(claim, value, estimate, low, high, n, method,
                             verdict + (" (rough)" if n < stats.ROUGH else ""), decided_to))
    return Verdicts(claims.study, holm(found), excluded, provenance(claims.path, runs_csv, finished))


TOP_LEVEL = 0.9999  # the widest interval a verdict is checked at (bootstraps have 10,000 resamples)


def highest_level(rule: dict, verdict: str, at) -> float:
    """The highest confidence level (to 0.0001) at which the measure's interval still gives `verdict`."""
    low, high = stats.CONFIDENCE, TOP_LEVEL
    if decide(rule, *at(high)[2:4]) == verdict:
        return high
    while high - low > 1e-4:
        mid = (low + high) / 2
        low, high = (mid, high) if decide(rule, *at(mid)[2:4]) == verdict else (low, mid)
    return low


def holm(verdicts: list[Verdict]) -> list[Verdict]:
    """Holm's step-down over all the study's claims (undecided ones count in the family, as p = 1):
    the k-th smallest 1 - decided_to must be under alpha / (K - k + 1), and every smaller one too."""
    alpha, family = 1 - stats.CONFIDENCE, len(verdicts)
    order = sorted(range(family), key=lambda i: 1 - (verdicts[i].decided_to or 0))
    survives, standing = set(), True
    for rank, i in enumerate(order):
        standing = standing and verdicts[i].decided_to is not None and 1 - verdicts[i].decided_to < alpha / (
            family - rank) - 1e-12
        if standing:
            survives.add(i)
    return [replace(v, family_wise="" if v.decided_to is None else "survives" if i in survives else "does not survive")
            for i, v in enumerate(verdicts)]


def git_log(path: Path) -> list[str]:
    """`<short commit> <date>` of each commit that touched path, newest first; [] outside git."""
    try:
        done = subprocess.run(["git", "log", "--follow", "--format=%h %cs", "--", path.name], cwd=path.parent,
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return done.stdout.split("\n")[:-1] if done.returncode == 0 else []


def provenance(claims_path: Path, runs_csv: Path | None, rows: list[dict]) -> list[str]:
    """Where the rules and the runs come from, so a reader sees whether a rule predates the runs."""
    history = git_log(claims_path.resolve())
    rules = (f"the claims file {claims_path.name} first committed at {history[-1]}, last changed at {history[0]}"
             if history else f"the claims file {claims_path} (not committed)")
    trained = sorted({r.get("git_commit", "")[:7] for r in rows} - {""})
    made = git_log(runs_csv.resolve()) if runs_csv else []
    runs = ("runs.csv written beside it by the same report" if runs_csv is None else
            f"runs.csv committed at {made[0]}" if made else "runs.csv not committed") + (
        f"; the runs trained at {', '.join(trained)}" if trained else "")
    return [rules, runs]


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
                             [int(r["last_evaluated_step"]) for r in rows], [r["status"] == "diverged" for r in rows])


def measure(name: str, runs: list[dict], base: list[dict], column: str, level: float = stats.CONFIDENCE,
            base_column: str | None = None) -> tuple[str, float, float, float, int, str]:
    """(shown value with interval, the value, interval low, interval high, seeds it rests on, interval
    method). base_column: probe_gain's column for the baseline's runs, where it is not `column`."""
    if name == "speedup":
        sp = stats.speedup(censored(base, column), censored(runs, column), level)
        return (stats.fmt_speedup(sp, interval=True), sp.low if sp.exact else math.nan, sp.interval_low,
                sp.interval_high, sp.n, sp.method)
    if name == "diverged_share":
        e = stats.share(sum(r["status"] == "diverged" for r in runs), len(runs), level)
        shown = stats.fmt_estimate(e, 100, 0) + "%"
    elif name == "p_sooner":
        e = stats.probability_of_improvement(censored(base, column), censored(runs, column), level)
        shown = stats.fmt_estimate(e, 1, 2)
    elif name in ("probe", "probe_gain"):  # column: the probe's runs.csv column
        values = column_values(column)
        e = (stats.difference(values(runs), column_values(base_column or column)(base), level)
             if name == "probe_gain" else stats.mean(values(runs), level))
        shown = f"{significant(e.value)} [{significant(e.low)}, {significant(e.high)}]"
    else:
        values, unit, scale, digits, how = VALUES[name]
        if name.endswith("_gain"):
            e = stats.difference(values(runs), values(base), level, **how)
        else:
            e = stats.mean(values(runs), level, **how)
        shown = stats.fmt_estimate(e, scale, digits) + unit
    return shown, e.value, e.low, e.high, e.n, e.method


def significant(x: float) -> str:  # probes span orders of magnitude: three significant digits
    return {math.inf: "∞", -math.inf: "-∞"}.get(x, f"{x:.3g}")


def column_values(key: str):
    """Each row's value of a runs.csv column, or of `a - b`: one column minus another, run by run."""
    if " - " in key:
        first, second = columns_of(key)
        return lambda rows: [float(r[first]) - float(r[second]) for r in rows]
    return lambda rows: [float(r[key]) for r in rows]


def columns_of(probe: str) -> list[str]:
    """The runs.csv columns a probe reads: one, or two in `a - b`."""
    return [part.strip() for part in probe.split(" - ")]


# A mean or difference measure: (its per-run values, unit shown, scale, digits, how the interval is
# taken: the least spread seeds can have and, for a mean of accuracies, the range it lies in).
POINTS = {"resolution": stats.ACCURACY_RESOLUTION}
VALUES = {
    "best_accuracy": (column_values("best_accuracy"), "%", 100, 2, stats.ACCURACY),
    "final_accuracy": (column_values("final_accuracy"), "%", 100, 2, stats.ACCURACY),
    "best_accuracy_gain": (column_values("best_accuracy"), " points", 100, 2, POINTS),
    "final_accuracy_gain": (column_values("final_accuracy"), " points", 100, 2, POINTS),
    "train_test_gap": (gaps, " points", 100, 2, POINTS),
    "train_test_gap_gain": (gaps, " points", 100, 2, POINTS),
    "variance_shift": (column_values("variance_shift"), "", 1, 3, {}),
    "variance_shift_gain": (column_values("variance_shift"), "", 1, 3, {}),
    "init_grad_orders": (lambda rows: [math.log10(float(r["init_grad_ratio"])) for r in rows], " (log10)", 1, 2, {}),
}


def rule_text(rule: dict) -> str:
    if "within" in rule:
        return f"holds within ±{rule['within']:g}"
    return ", ".join(f"{k.replace('_', ' ')} {x:g}" for k, x in rule.items())


def verdict_markdown(found: Verdicts, source: str) -> str:
    level = stats.percent()
    methods = sorted({v.method for v in found.verdicts})
    lines = [f"# Verdicts: {found.study}", "",
             f"Computed by bnexp/claims.py from {source}: each claim's measure with its {level} interval and the "
             f"claims file's rule; the interval's method is named in each row ({', '.join(methods)}; bootstraps: "
             f"{stats.RESAMPLES:,} resamples, fixed seed). `rough`: fewer than {stats.ROUGH} seeds. Family-wise: "
             f"whether a decided verdict survives Holm's correction over this study's {len(found.verdicts)} claims "
             f"at {stats.percent(1 - stats.CONFIDENCE)}, with the highest level it stands at.", "",
             *(f"- Rules: {found.provenance[0]}." if found.provenance else "",
               f"- Runs: {found.provenance[1]}." if found.provenance else ""), ""]
    if found.excluded:
        lines += [f"**Left out: {len(found.excluded)} runs that did not finish** ({', '.join(found.excluded)}); "
                  "resume them and report again.", ""]
    lines += [f"| claim | the paper | measured [{level} interval] | interval | seeds | rule | verdict | family-wise |",
              "|---|---|---|---|---|---|---|---|"]
    for v in found.verdicts:
        top = "≥ " if v.decided_to is not None and v.decided_to >= TOP_LEVEL else ""
        family = f"{v.family_wise} (stands to {top}{stats.percent(v.decided_to)})" if v.family_wise else "-"
        lines.append(f"| {v.claim.claim} | {v.claim.paper} | {v.value} | {v.method} | {v.n} "
                     f"| {rule_text(v.claim.rule)} | **{v.verdict}** | {family} |")
    return "\n".join(lines) + "\n"


def write_verdicts(found: Verdicts, out: Path, source: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "verdict.md").write_text(verdict_markdown(found, source))
    with open(out / "verdict.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "claim", "paper", "measure", "variant", "baseline", "target", "value", "estimate", "low",
                    "high", "seeds", "interval", "level", "verdict", "decided_to", "family_wise"])
        for v in found.verdicts:
            c = v.claim
            w.writerow([c.id, c.claim, c.paper, c.measure, c.variant, c.baseline or "", c.target, v.value, v.estimate,
                        v.low, v.high, v.n, v.method, stats.CONFIDENCE, v.verdict,
                        "" if v.decided_to is None else f"{v.decided_to:.4f}", v.family_wise])
    return [out / "verdict.md", out / "verdict.csv"]
