"""Every study's verdicts at once: re-decide them from the committed runs.csv files, and write
results/README.md, the index of all studies with their verdict counts, the family-wise check, and
the claims whose verdict changed since a given commit.

    python scripts/verdicts.py remake                                   # every study, from its runs.csv
    python scripts/verdicts.py index --before 70268e4 --out results/README.md

A study is a folder of results/ holding runs.csv and verdict.csv, decided by the nearest claims.yaml
at or above it (one claims file for a study's two datasets). A study's `ten_seeds` folder is its
follow-up: the settings its open claims read, at 10 seeds; the index sets those verdicts beside the
5-seed ones rather than counting them as a study of their own. `index --before REV`
compares each verdict with the one committed at REV in two steps: REV's claims file decided by
today's intervals (what the intervals alone changed), then today's claims file (what a reworded
rule changed).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from scipy.stats import t as t_dist

from bnexp import claims, stats
from bnexp.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
VERDICTS = (claims.HOLDS, claims.PARTLY, claims.NOT, claims.INCONCLUSIVE)


FOLLOW_UP = "ten_seeds"  # a study's follow-up folder: its open claims at 10 seeds


def studies() -> list[Path]:
    return sorted(p.parent for p in RESULTS.glob("**/verdict.csv") if (p.parent / "runs.csv").is_file())


def follow_up(study: Path) -> dict[str, dict]:
    path = study / FOLLOW_UP / "verdict.csv"
    return verdict_rows(path.read_text()) if path.is_file() else {}


def name(study: Path) -> str:
    return str(study.relative_to(RESULTS))


def git_show(rev: str, path: Path) -> str | None:
    done = subprocess.run(["git", "show", f"{rev}:{path.relative_to(ROOT)}"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def remake() -> int:
    from bnexp.report import main as report

    for study in studies():  # paths relative to the checkout, as verdict.md shows them
        runs_csv, rules, out = (p.relative_to(ROOT) for p in (study / "runs.csv", claims.study_claims(study), study))
        if report([str(runs_csv), "--claims", str(rules), "--out", str(out)]) != 0:
            return 2
    return 0


def verdict_rows(text: str) -> dict[str, dict]:
    return {row["id"]: row for row in csv.DictReader(io.StringIO(text))}


def old_rules(study: Path, rev: str) -> str | None:
    """The claims file a study was decided by at rev (the schedule study's were claims_<data>.yaml)."""
    for path in (study / "claims.yaml", study.parent / "claims.yaml", study.parent / f"claims_{study.name}.yaml"):
        if (text := git_show(rev, path)) is not None:
            return text
    return None


def at_rev_rules(study: Path, rev: str) -> dict[str, claims.Verdict]:
    """Today's intervals under the rules of rev's claims file."""
    text = old_rules(study, rev)
    if text is None:
        return {}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text)
        f.flush()
        found = claims.evaluate(claims.load(f.name), claims.read_runs_csv((study / "runs.csv").read_text()))
    return {v.claim.id: v for v in found.verdicts}


def thresholds(rule: dict) -> list[float]:
    if "within" in rule:
        return [-rule["within"], rule["within"]]
    return [x for k, x in rule.items()]


def seeds_needed(row: dict, rule: dict) -> str:
    """The seeds per variant at which the measured effect, with its measured spread, would put the
    interval clear of the nearest threshold (the effect and spread kept as they are: about even odds
    of a decided verdict then; about twice as many for 80%). Shares: every run agreeing as now."""
    value, low, high, n = float(row["estimate"]), float(row["low"]), float(row["high"]), int(row["seeds"])
    distance = min(abs(value - x) for x in thresholds(rule))
    if row["measure"] == "diverged_share":
        hits = round(value * n)
        for m in range(n, 201):
            e = stats.share(round(hits / n * m), m)
            if all(not (e.low <= x <= e.high) for x in thresholds(rule)):
                return str(m)
        return "> 200"
    if row["interval"] not in (stats.T, stats.WELCH) or not math.isfinite(high - low) or distance == 0:
        return "-"
    df = (lambda m: m - 1) if row["interval"] == stats.T else (lambda m: 2 * m - 2)
    spread = (high - low) / 2 / t_dist.ppf(1 - (1 - stats.CONFIDENCE) / 2, df(n)) * math.sqrt(n)
    for m in range(2, 1001):
        if t_dist.ppf(1 - (1 - stats.CONFIDENCE) / 2, df(m)) * spread / math.sqrt(m) < distance:
            return str(m)
    return "> 1000"


def base(verdict: str) -> str:
    return verdict.removesuffix(" (rough)")


def close_call(row: dict, rule: dict) -> bool:
    """Decided, but with a threshold within one interval width of the interval's nearer end."""
    low, high = float(row["low"]), float(row["high"])
    if base(row["verdict"]) == claims.INCONCLUSIVE or not math.isfinite(high - low):
        return False
    return any(min(abs(low - x), abs(high - x)) < high - low for x in thresholds(rule))


def index(rev: str) -> str:
    counts, changes, open_rows, later, new_studies = [], [], [], [], []
    decided = surviving = total = decided_later = 0
    for study in (s for s in studies() if s.name != FOLLOW_UP):
        now, ten = verdict_rows((study / "verdict.csv").read_text()), follow_up(study)
        rules = {c.id: c.rule for c in claims.load(str(claims.study_claims(study))).claims}
        for key, v in now.items():
            if base(v["verdict"]) == claims.INCONCLUSIVE or close_call(v, rules[key]):
                at_ten = f"{ten[key]['value']}: {ten[key]['verdict']}" if key in ten else "-"
                open_rows.append(f"| {name(study)} | {v['claim']} | {v['value']} | {v['verdict']} | {v['seeds']} | "
                                 f"{seeds_needed(v, rules[key])} | {at_ten} |")
                if key in ten:
                    still = base(ten[key]["verdict"]) == claims.INCONCLUSIVE
                    holm = " (not after Holm)" if ten[key].get("family_wise") == "does not survive" else ""
                    later.append(f"| {name(study)} | {v['claim']} | {v['value']}: **{v['verdict']}** | "
                                 f"{ten[key]['value']}: **{ten[key]['verdict']}**{holm} | "
                                 f"{seeds_needed(ten[key], rules[key]) if still else '-'} |")
        latest = {key: ten.get(key, v) for key, v in now.items()}
        decided_later += sum(base(v["verdict"]) != claims.INCONCLUSIVE for v in latest.values())
        tally = Counter(base(v["verdict"]) for v in now.values())
        survive = sum(v.get("family_wise") == "survives" for v in now.values())
        rough = sum(v["verdict"].endswith("(rough)") for v in now.values())
        seeds = sorted({int(v["seeds"]) for v in now.values()})
        total += len(now)
        decided += len(now) - tally[claims.INCONCLUSIVE]
        surviving += survive
        counts.append(f"| [{name(study)}]({name(study)}/verdict.md) | {len(now)} | "
                      + " | ".join(str(tally[v]) for v in VERDICTS) + f" | {survive} | {rough} | "
                      + "-".join(map(str, (seeds[0], seeds[-1]) if len(seeds) > 1 else seeds))
                      + (f" ([10]({name(study)}/{FOLLOW_UP}/verdict.md))" if ten else "") + " |")
        before_text = git_show(rev, study / "verdict.csv")
        if before_text is None:
            new_studies.append(f"{name(study)} ({len(now)} claims)")
            continue
        before, middle = verdict_rows(before_text), at_rev_rules(study, rev)
        for key, v in now.items():
            was, mid = before.get(key), middle.get(key)
            if was is None:
                changes.append(f"| {name(study)} | {v['claim']} | (new claim) | - | {v['value']}: **{v['verdict']}** |")
                continue
            mid_text = f"{mid.value}: **{mid.verdict}**" if mid else "-"
            if base(was["verdict"]) != base(v["verdict"]) or (mid and base(mid.verdict) != base(was["verdict"])):
                changes.append(f"| {name(study)} | {v['claim']} | {was['value']}: **{was['verdict']}** | {mid_text} | "
                               f"{v['value']}: **{v['verdict']}** |")
    level = stats.percent()
    lines = [
        "# Results: every study and its verdicts", "",
        "Made by `python scripts/verdicts.py index --before " + rev + " --out results/README.md` from each "
        "study's verdict.csv (itself computed from the study's runs.csv by its claims file: `python "
        "scripts/verdicts.py remake`). Intervals and how well they cover: [coverage.md](coverage.md). Each "
        "study's report.md is as its study made it: those made before 2026-12-05 print percentile-bootstrap "
        "intervals for accuracies, which cover less than they say at 5 seeds; the verdicts here do not use "
        "them.", "",
        "| study | claims | holds | partly | does not hold | inconclusive | decided and survive Holm | rough | seeds |",
        "|---|---|---|---|---|---|---|---|---|", *counts, "",
        f"**{total} claims, {decided} decided** (holds, partly or does not hold) at {level} each. A {level} "
        f"interval misses the truth in about 1 study in {round(1 / (1 - stats.CONFIDENCE))}, so across {decided} "
        f"decided verdicts a few (up to about {(1 - stats.CONFIDENCE) * decided:.0f}, if every one sat at its "
        "threshold) are expected to be wrong by chance alone. Each verdict.csv says, in `family_wise`, whether a "
        "decided verdict survives Holm's step-down correction over its own study's claims (the interval widened "
        f"until the verdict no longer stands; `decided_to` is that level): {surviving} of the {decided} do. "
        f"With the 10-seed verdicts below in place of their 5-seed ones, {decided_later} of the {total} are decided.",
        "",
        f"## Verdicts that changed since {rev}", "",
        f"At {rev} every interval was a percentile bootstrap (about 83% coverage at 5 seeds for a mean; a zero-width "
        "[0, 0] or [1, 1] for a share where all runs agree). `intervals` is the same claims file decided with "
        "today's intervals (Student t, Welch t, Clopper-Pearson, Newcombe; see bnexp/stats.py); `now` adds the "
        "claims files' rewordings since (each study's README says which rules changed and why).", "",
        f"| study | claim | at {rev} | intervals | now |", "|---|---|---|---|---|", *changes, "",
        f"{len(changes)} of the claims that had a verdict at {rev} changed."
        + (f" New since {rev}, with no earlier verdicts: {', '.join(new_studies)}." if new_studies else ""), "",
        "## Open verdicts, and the seeds they would need", "",
        "Every inconclusive verdict, and every decided one with a threshold within one interval width of its "
        "interval (a close call). `seeds needed`: per variant, the seeds at which the measured effect and spread, "
        "kept as they are, would put the interval clear of the nearest threshold: about even odds of a decided "
        "verdict there, and roughly twice as many seeds for 80%. For a share, the seeds at which every run "
        "agreeing as now would decide it; \"-\" for speed-ups and P(sooner) (bootstrap and score intervals: no "
        "closed form) and for effects at the threshold itself. `at 10 seeds`: the claim's verdict in the study's "
        f"{FOLLOW_UP}/ folder, where its settings were trained again with 10 seeds (seeds 0-9).", "",
        "| study | claim | measured | verdict | seeds | seeds needed | at 10 seeds |", "|---|---|---|---|---|---|---|",
        *open_rows, "",
        "## The open verdicts at 10 seeds", "",
        f"Each open verdict above whose settings have a {FOLLOW_UP}/ folder, at 5 and at 10 seeds; `seeds needed` as "
        "above, from the 10-seed effect and spread, where the claim is still inconclusive at 10.", "",
        "| study | claim | 5 seeds | 10 seeds | seeds needed |", "|---|---|---|---|---|", *later, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("remake", help="re-decide every study's claims from its runs.csv")
    idx = sub.add_parser("index", help="results/README.md: every study's verdict counts and what changed")
    idx.add_argument("--before", required=True, help="the commit to compare the verdicts with")
    idx.add_argument("--out", type=Path, help="write it here as well as to stdout")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    try:
        if args.command == "remake":
            return remake()
        if git_show(args.before, ROOT / "README.md") is None:
            raise UserError(f"no commit {args.before!r} in this checkout")
        text = index(args.before)
    except UserError as e:
        print(e, file=sys.stderr)
        return 2
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
