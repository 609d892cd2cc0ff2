"""`bnexp report PATH...`: the paper's tables and figures from run directories on disk.

Runs (read by bnexp/runs.py) are grouped into variants (the config without the seed and the
execution settings), aggregated over seeds, and compared with a baseline the way the paper's
Figure 3 table does: steps to reach the baseline's best accuracy, speed-up, best accuracy.
Unfinished, diverged or damaged runs are reported as such, never silently dropped. The figures
are drawn by bnexp/figures.py.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from bnexp import stats
from bnexp.claims import evaluate as evaluate_claims
from bnexp.claims import load as load_claims
from bnexp.claims import read_runs_csv, verdict_markdown, write_verdicts
from bnexp.config import EXECUTION_SETTINGS, accuracy_targets
from bnexp.errors import UserError
from bnexp.figures import VersusPoint, plot_figures, plot_step_probes, plot_versus
from bnexp.runs import Run, find_run_dirs, load_run
from bnexp.summary import ENDED, Status, first_step_reaching

# Runs that differ only in these are seeds of one variant.
NOT_THE_VARIANT = EXECUTION_SETTINGS | {"trainer.seed"}


def silent_keys(runs: list[Run]) -> set[str]:
    """Keys some runs lack and the others agree on: they tell no variants apart. That is a group's
    own option (norm.eps where some runs have norm=none), or an option newer than some runs."""
    present = defaultdict(set)
    for run in runs:
        for key, value in run.config.items():
            present[key].add(str(value))
    return {k for k, values in present.items() if len(values) == 1 and any(k not in r.config for r in runs)}


def group_variants(runs: list[Run], names: list[str] | None = None) -> dict[str, list[Run]]:
    """Variants named by the config keys that tell them apart ("norm=batch"), in a stable order; or
    by `names` alone (--variant-keys), where the other differences follow from them (a batch size's
    own steps and learning rate): two variants those keys cannot tell apart are refused."""
    ignored = silent_keys(runs) | NOT_THE_VARIANT
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[tuple(sorted((k, str(v)) for k, v in run.config.items() if k not in ignored))].append(run)
    keys = list(groups)
    if names:
        return named_variants(groups, names)
    differing = {k for key in keys for k, v in key if any(dict(other).get(k) != v for other in keys)}
    def varies_within_its_group(k: str) -> bool:
        group = f"{k.rsplit('.', 1)[0]}.name"
        seen: dict[str, set] = defaultdict(set)
        for key in keys:
            seen[dict(key).get(group)].add(dict(key).get(k))
        return any(len(values) > 1 for values in seen.values())

    # A group's own options (norm.eps) differ whenever the group does (norm.name): name the group
    # only, unless the option also tells apart variants of the same group.
    differing = sorted(k for k in differing if k.endswith(".name") or f"{k.rsplit('.', 1)[0]}.name" not in differing
                       or varies_within_its_group(k))

    names = {dict(key).get("name") for key in keys}
    if "name" in differing and len(names) == len(keys):
        differing = ["name"]  # presets name themselves: "bn_x30" says it all

    def label(key: tuple) -> str:
        config = dict(key)
        if not differing:
            return config.get("name", "all runs")
        if differing == ["name"]:
            return config["name"]
        return ",".join(f"{k.removesuffix('.name')}={config.get(k, '-')}" for k in differing)

    def natural(key: tuple) -> tuple:  # lr 2 before lr 10
        values = [dict(key).get(k, "") for k in differing]
        return tuple((0, float(v), "") if _is_number(v) else (1, 0.0, v) for v in values)

    return {label(k): sorted(groups[k], key=lambda r: (str(r.seed), str(r.path))) for k in sorted(keys, key=natural)}


def named_variants(groups: dict[tuple, list[Run]], names: list[str]) -> dict[str, list[Run]]:
    known = {k for key in groups for k, _ in key}
    if unknown := [k for k in names if k not in known]:
        raise UserError(f"--variant-keys: no run has {', '.join(unknown)} (name options as the runs' configs do: "
                        "norm.name, trainer.batch_size)")
    labelled: dict[str, tuple] = {}
    for key in groups:
        config = dict(key)
        label = ",".join(f"{k.removesuffix('.name')}={config.get(k, '-')}" for k in names)
        if label in labelled:
            other = dict(labelled[label])
            apart = sorted(k for k in set(config) | set(other) if config.get(k) != other.get(k))
            raise UserError(f"--variant-keys {','.join(names)}: variant {label} holds runs that also differ in "
                            f"{', '.join(apart)}; add those keys")
        labelled[label] = key

    def natural(label: str) -> tuple:  # batch 2 before batch 16
        config = dict(labelled[label])
        return tuple((0, float(v), "") if _is_number(v := config.get(k, "")) else (1, 0.0, v) for k in names)

    return {label: sorted(groups[labelled[label]], key=lambda r: (str(r.seed), str(r.path)))
            for label in sorted(labelled, key=natural)}


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def mean_std(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(variants: dict[str, list[Run]], baseline: str, target: float | None, fixed_targets: list[float]):
    """One row per variant: the paper's Figure 3 columns, plus seeds, failures and fixed targets, and
    the statistics with their intervals (bnexp/stats.py) for the two baseline targets: its mean best
    (or --target) and its lowest best, which every baseline seed reaches."""
    bests = [max(a for _, a in r.accuracy) for r in variants[baseline]]
    if target is None:
        target = statistics.fmean(bests)
    targets = {"target": target, "every_seed": min(bests)}
    censored = {name: {key: steps_to(runs, t) for key, t in targets.items()} for name, runs in variants.items()}
    rows = []
    for name, runs in variants.items():
        reach = [first_step_reaching(r.accuracy, target) for r in runs]
        steps = [s for s in reach if s is not None]
        crossings = {t: [s for s in (first_step_reaching(r.accuracy, t) for r in runs) if s is not None]
                     for t in fixed_targets}
        best, final = [max(a for _, a in r.accuracy) for r in runs], [r.accuracy[-1][1] for r in runs]
        rows.append({
            "variant": name,
            "baseline": name == baseline,
            "runs": len(runs),
            "completed": sum(r.status == Status.COMPLETED for r in runs),
            "diverged": sum(r.status == Status.DIVERGED for r in runs),
            "unfinished": sum(r.status not in ENDED for r in runs),
            "best_accuracy": mean_std(best),
            "final_accuracy": mean_std(final),
            "target": target,
            "steps_to_target": mean_std(steps),
            "reached_target": len(steps),
            "steps_to": {t: mean_std(crossings[t]) for t in fixed_targets},
            "reached": {t: len(crossings[t]) for t in fixed_targets},
            "wall_time_s": mean_std([r.summary["wall_time_s"] for r in runs if r.summary]),
            # the part of a run's wall time spent evaluating (runs from before eval_time_s have none)
            "eval_share": mean_std([r.summary["eval_time_s"] / r.summary["wall_time_s"] for r in runs
                                    if r.summary and r.summary.get("eval_time_s") is not None
                                    and r.summary["wall_time_s"]]),
            "diverged_at": [r.summary["diverged_at_step"] for r in runs if r.status == Status.DIVERGED],
            # With intervals: means over seeds, and per baseline target the censored steps (never reached
            # = never), their median, the speed-up over the baseline and P(a run gets there sooner).
            "best_accuracy_ci": stats.mean(best, **stats.ACCURACY),
            "final_accuracy_ci": stats.mean(final, **stats.ACCURACY),
            "targets": targets,
            "at": {key: at_target(censored[baseline][key], censored[name][key]) for key in targets},
        })
        rows[-1]["speedup"] = rows[-1]["at"]["target"]["speedup"]
    return rows


def at_target(baseline: stats.Censored, steps: stats.Censored) -> dict:
    """A variant's steps to one target against the baseline's, with intervals."""
    return {"reached": steps.reached, "runs": len(steps), "median_steps": stats.median_steps(steps),
            "speedup": stats.speedup(baseline, steps), "p_sooner": stats.probability_of_improvement(baseline, steps)}


def steps_to(runs: list[Run], target: float) -> stats.Censored:
    """Each run's first evaluated step at or above `target`, never (censored at its last evaluation,
    or for good where it diverged) if none."""
    return stats.Censored.of([first_step_reaching(r.accuracy, target) for r in runs], [r.accuracy[-1][0] for r in runs],
                             [r.status == Status.DIVERGED for r in runs])


def fmt_acc(ms) -> str:
    return "-" if ms is None else f"{100 * ms[0]:.2f} ± {100 * ms[1]:.2f}%"


def fmt_steps(ms, reached: int, runs: int) -> str:
    if ms is None:
        return "never"
    text = f"{ms[0]:,.0f}" + (f" ± {ms[1]:,.0f}" if ms[1] else "")
    return text if reached == runs else f"{text} ({reached}/{runs} runs)"


def fmt_seeds(n: int) -> str:
    return f"{n} (rough)" if n < stats.ROUGH else str(n)


def interval_table(rows: list[dict]) -> str:
    """The statistics with their intervals, for the two baseline targets."""
    targets = rows[0]["targets"]
    head = ["variant", "seeds", "best accuracy", "final accuracy"]
    for label in ("A", "B"):
        head += [f"reached {label}", f"median steps to {label}", f"speed-up to {label}", f"P(sooner) to {label}"]
    lines = [f"{stats.percent()} intervals: accuracies Student t over seeds; median steps and speed-ups percentile "
             f"bootstrap ({stats.RESAMPLES:,} resamples, fixed seed); P(sooner) Newcombe's score interval. "
             f"Target A: {100 * targets['target']:.2f}% (the table's target); target B: "
             f"{100 * targets['every_seed']:.2f}% (the baseline's lowest best: every baseline seed reaches it). "
             "A run that never reaches a target counts as never (for medians and P(sooner): the chance that "
             "a run of the variant gets there in fewer steps than a run of the baseline, ties half); a "
             "speed-up that censored runs leave open is a bound (≥, ≤), its interval from the conservative "
             f"to the liberal bound. Intervals from fewer than {stats.ROUGH} seeds are rough.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"] + (" (baseline)" if r["baseline"] else ""), fmt_seeds(r["runs"]),
                 stats.fmt_estimate(r["best_accuracy_ci"], 100, 2), stats.fmt_estimate(r["final_accuracy_ci"], 100, 2)]
        for key in ("target", "every_seed"):
            at = r["at"][key]
            cells += [f"{at['reached']}/{at['runs']}", stats.fmt_estimate(at["median_steps"]),
                      stats.fmt_speedup(at["speedup"], r["baseline"], interval=not r["baseline"]),
                      "-" if r["baseline"] else stats.fmt_estimate(at["p_sooner"], 1, 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(rows: list[dict], fixed_targets: list[float]) -> str:
    target = rows[0]["target"]
    head = ["variant", "runs", f"steps to {100 * target:.2f}%", "speed-up", "best accuracy", "final accuracy",
            *(f"steps to {100 * t:g}%" for t in fixed_targets), "wall time / run (evaluating)", "diverged",
            "unfinished"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["variant"] + (" (baseline)" if r["baseline"] else ""),
            str(r["runs"]),
            fmt_steps(r["steps_to_target"], r["reached_target"], r["runs"]),
            stats.fmt_speedup(r["speedup"], r["baseline"]),
            fmt_acc(r["best_accuracy"]),
            fmt_acc(r["final_accuracy"]),
            *(fmt_steps(r["steps_to"][t], r["reached"][t], r["runs"]) for t in fixed_targets),
            ("-" if r["wall_time_s"] is None else f"{r['wall_time_s'][0]:.0f} s")
            + ("" if r["eval_share"] is None else f" ({100 * r['eval_share'][0]:.0f}%)"),
            str(r["diverged"]) + (f" (at {', '.join(map(str, r['diverged_at']))})" if r["diverged_at"] else ""),
            str(r["unfinished"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], fixed_targets: list[float], path: Path) -> None:
    def ms(prefix, value):
        return {f"{prefix}_mean": value and value[0], f"{prefix}_std": value and value[1]}

    flat_rows = []
    for r in rows:
        flat = {k: r[k] for k in ("variant", "baseline", "runs", "completed", "diverged", "unfinished", "target")}
        flat.update(ms("steps_to_target", r["steps_to_target"]), reached_target=r["reached_target"])
        flat.update(ms("best_accuracy", r["best_accuracy"]), **ms("final_accuracy", r["final_accuracy"]))
        flat.update(ms("wall_time_s", r["wall_time_s"]), **ms("eval_share", r["eval_share"]))
        for t in fixed_targets:
            flat.update(ms(f"steps_to_{t:g}", r["steps_to"][t]), **{f"reached_{t:g}": r["reached"][t]})
        for prefix, e in (("best_accuracy", r["best_accuracy_ci"]), ("final_accuracy", r["final_accuracy_ci"])):
            flat.update({f"{prefix}_ci_low": e.low, f"{prefix}_ci_high": e.high})
        flat["seeds"] = r["runs"]
        for key, at in r["at"].items():
            sp, med, p = at["speedup"], at["median_steps"], at["p_sooner"]
            flat.update({f"{key}": r["targets"][key], f"{key}_reached": at["reached"],
                         f"{key}_median_steps": med.value, f"{key}_median_steps_ci_low": med.low,
                         f"{key}_median_steps_ci_high": med.high, f"{key}_speedup_low": sp.low,
                         f"{key}_speedup_high": sp.high, f"{key}_speedup_ci_low": sp.interval_low,
                         f"{key}_speedup_ci_high": sp.interval_high, f"{key}_p_sooner": p.value,
                         f"{key}_p_sooner_ci_low": p.low, f"{key}_p_sooner_ci_high": p.high})
        flat_rows.append(flat)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(flat_rows[0]))
        writer.writeheader()
        writer.writerows(flat_rows)


def runs_csv(variants: dict[str, list[Run]], rows: list[dict], fixed_targets: list[float],
             phases: list[tuple[int, int]] = ()) -> str:
    """runs.csv's text: one row per run, so that any statistic of the report can be recomputed from it alone:
    steps_to_<target> is the first evaluated step at or above it, empty where the run never got
    there (censored at last_evaluated_step); steps_to_target is the baseline's mean best (or
    --target), steps_to_every_seed its lowest best, as the report's targets A and B. With `phases`
    (--phases), each step probe's median over the run's probed steps in each phase: `<tag>@<first>-<last>`;
    with probes.longer_rows, each `longer/<side><k>/drop` of the last evaluation; where `bnexp evaluate`
    has evaluated a run, each `evaluate/<set>/<label>` accuracy of its newest evaluated checkpoint."""
    # The two baseline targets by their role (their values are in report.md), then the fixed ones.
    targets = {**rows[0]["targets"], **{f"{t:g}": t for t in fixed_targets}}
    fields = ["variant", "baseline", "run", "seed", "status", "steps", "max_steps", "best_accuracy", "best_step",
              "final_accuracy", "final_step", "last_evaluated_step", *(f"steps_to_{k}" for k in targets),
              "diverged_at_step", *PROBE_COLUMNS, "wall_time_s", "eval_time_s", "git_commit", "git_dirty"]
    tags = sorted({t for runs in variants.values() for r in runs for t in r.curves if t.startswith(STEP_PROBES)})
    if phases and not tags:
        raise UserError("--phases summarizes the ICS and landscape probes, and no run took them "
                        "(probes.ics_every, probes.landscape_every)")
    fields += [phase_column(t, phase) for t in tags for phase in phases]
    drops = sorted({t for runs in variants.values() for r in runs for t in r.curves if is_longer_drop(t)},
                   key=lambda t: (t.split("/")[1].rstrip("0123456789"), int(re.sub(r"\D", "", t))))
    fields += drops
    evaluated = sorted({t for runs in variants.values() for r in runs for t in r.curves if t.startswith("evaluate/")})
    fields += evaluated
    root = common_parent([r.path for runs in variants.values() for r in runs])
    baseline = next(r["variant"] for r in rows if r["baseline"])
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=fields)
    w.writeheader()
    for name, runs in variants.items():
        for r in runs:
            summary = r.summary or {}
            best_step, best = max(r.accuracy, key=lambda h: (h[1], -h[0]))
            w.writerow({
                "variant": name, "baseline": name == baseline, "run": str(r.path.resolve().relative_to(root)),
                "seed": r.seed, "status": r.status, "steps": summary.get("steps"),
                "max_steps": r.config.get("trainer.max_steps"), "best_accuracy": best, "best_step": best_step,
                "final_accuracy": r.accuracy[-1][1], "final_step": r.accuracy[-1][0],
                "last_evaluated_step": r.accuracy[-1][0],
                **{f"steps_to_{k}": first_step_reaching(r.accuracy, t) for k, t in targets.items()},
                **probe_columns(r),
                **{phase_column(t, phase): phase_median(r, t, phase) for t in tags for phase in phases},
                **{t: last_value(r, t) for t in (*drops, *evaluated)},
                **{k: summary.get(k) for k in ("diverged_at_step", "wall_time_s", "eval_time_s", "git_commit",
                                               "git_dirty")},
            })
    return text.getvalue()


PROBE_COLUMNS = ("final_train_accuracy", "variance_shift", "init_grad_ratio")


def is_longer_drop(tag: str) -> bool:  # probes.longer_rows' accuracy drops, one runs.csv column each
    return tag.startswith("longer/") and tag.endswith("/drop")


def last_value(run: Run, tag: str) -> float | None:
    curve = run.curves.get(tag)
    return curve[max(curve)] if curve else None


def phase_column(tag: str, phase: tuple[int, int]) -> str:
    return f"{tag}@{phase[0]}-{phase[1]}"


def phase_median(run: Run, tag: str, phase: tuple[int, int]) -> float | None:
    """A step probe's median over the run's probed steps in a phase (inclusive); none if it has none."""
    values = [v for step, v in run.curves.get(tag, {}).items() if phase[0] <= step <= phase[1] and math.isfinite(v)]
    return statistics.median(values) if values else None


def probe_columns(run: Run) -> dict[str, float | None]:
    """runs.csv's numbers from the optional probes, empty where the run did not take them:
    final_train_accuracy: train_set/accuracy at the last evaluation (trainer.eval_train);
    variance_shift: the smallest varshift/<layer> at the last evaluation, the most shifted BN layer
    (probes.variance_shift); init_grad_ratio: ||dL/dW|| of the first weight layer over the last
    one's on the first step, at the initial weights (probes.grad_every), layers in their names'
    natural order (mlp: hidden1 .. hiddenN, output)."""
    shifts = [curve[max(curve)] for tag, curve in run.curves.items() if tag.startswith("varshift/") and curve]
    grads = sorted((tag for tag in run.curves if tag.startswith("grad/") and tag.endswith("/norm")),
                   key=lambda tag: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", tag)])
    ratio = None
    if grads:
        first, last_layer = run.curves[grads[0]], run.curves[grads[-1]]
        step = min(first)
        ratio = first[step] / last_layer[step] if last_layer.get(step) else None
    return {"final_train_accuracy": last_value(run, "train_set/accuracy"),
            "variance_shift": min(shifts) if shifts else None, "init_grad_ratio": ratio}


def versus_points(variants: dict[str, list[Run]], key: str) -> dict[str, list[VersusPoint]]:
    """versus.png's data: the variants as lines over one numeric option (`--versus model.init_std`),
    a line per setting of the other options, named by the variant's name without `key=...`. Each
    point: the best test accuracy per run (mean over seeds), log10 of init_grad_ratio where runs
    took the gradient probe, and the share of runs diverged."""
    if not any(key in r.config for runs in variants.values() for r in runs):
        raise UserError(f"--versus {key}: no run has that option (name it as the runs' configs do: model.init_std)")
    lines: dict[str, list[VersusPoint]] = defaultdict(list)
    for name, runs in variants.items():
        values = {str(r.config.get(key)) for r in runs}
        if len(values) != 1 or isinstance(runs[0].config.get(key), bool) or not _is_number(next(iter(values))):
            raise UserError(f"--versus {key}: variant {name} has {key}={', '.join(sorted(values))}; "
                            "it takes an option every run sets to one number")
        [value] = values
        part = f"{key}={value}"
        line = ",".join(p for p in name.split(",") if p != part) or "all runs"
        best = stats.mean([max(a for _, a in r.accuracy) for r in runs if r.accuracy], **stats.ACCURACY)
        ratios = [math.log10(g) for r in runs
                  if (g := probe_columns(r)["init_grad_ratio"]) is not None and math.isfinite(g) and g > 0]
        diverged = sum(r.status == Status.DIVERGED for r in runs) / len(runs)
        if best is not None:
            lines[line].append((float(value), best, stats.mean(ratios), diverged))
    if len({p[0] for points in lines.values() for p in points}) < 2:
        raise UserError(f"--versus {key}: the runs take fewer than two values of it")
    return {line: sorted(points, key=lambda p: p[0]) for line, points in lines.items()}


def common_parent(paths: list[Path]) -> Path:
    """The folder all run dirs lie in: runs.csv names each run by its path below it."""
    return Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))


def curve_stats(runs: list[Run], tag: str) -> list[tuple[int, int, float, float, float, float]]:
    """(step, n, mean, std, min, max) of one scalar over the runs of a variant, per logged step."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for step, value in run.curves.get(tag, {}).items():
            by_step[step].append(value)
    out = []
    for step in sorted(by_step):
        v = by_step[step]
        out.append((step, len(v), statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, min(v), max(v)))
    return out


def write_curves_csv(variants: dict[str, list[Run]], path: Path) -> None:
    """The data behind the figures: accuracy over seeds per step, and the probe of each variant's first seed."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "step", "runs", "test_accuracy_mean", "test_accuracy_std", "test_accuracy_min",
                    "test_accuracy_max", "probe_run", "probe_layer", "probe_p15", "probe_p50", "probe_p85"])
        for name, runs in variants.items():
            first = runs[0]
            layer = (first.probe_layers or [""])[-1]
            probe = {q: first.curves.get(f"probe/{layer}/{q}", {}) for q in ("p15", "p50", "p85")}
            for step, n, mean, std, lo, hi in curve_stats(runs, "test/accuracy"):
                w.writerow([name, step, n, mean, std, lo, hi, first.path.name, layer,
                            *(probe[q].get(step, "") for q in ("p15", "p50", "p85"))])


STEP_PROBES = ("ics/", "shift/", "landscape/")  # Santurkar et al.'s probes (bnexp/probes.py), where runs took them


def step_probe_stats(variants: dict[str, list[Run]]) -> dict[str, dict[str, list]]:
    """{tag: {variant: curve_stats}} for every ICS, activation-shift and landscape scalar some run logged."""
    tags = sorted({t for runs in variants.values() for r in runs for t in r.curves if t.startswith(STEP_PROBES)})
    return {tag: {name: stats for name, runs in variants.items() if (stats := curve_stats(runs, tag))} for tag in tags}


def write_step_probes_csv(stats: dict[str, dict[str, list]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["tag", "variant", "step", "runs", "mean", "std", "min", "max"])
        for tag, by_variant in stats.items():
            for name, rows in by_variant.items():
                w.writerows([tag, name, *row] for row in rows)


# Scalars aggregated over each variant's seeds for TensorBoard: tag -> its chart's title.
SEED_CURVES = {"test/accuracy": "test accuracy", "test/error": "test error", "train/loss": "train loss"}


def write_seed_runs(variants: dict[str, list[Run]], folder: Path) -> None:
    """One TensorBoard run per variant under `folder` with the mean, min and max over its seeds of
    each SEED_CURVES scalar (`seeds/test/accuracy/mean`, ...), and a custom-scalars layout that
    draws them as margin charts: mean with the seeds' range as a band, one series per variant."""
    from torch.utils.tensorboard import SummaryWriter

    layout = {"seeds (mean, band: min-max)": {
        title: ["Margin", [f"seeds/{tag}/mean", f"seeds/{tag}/min", f"seeds/{tag}/max"]]
        for tag, title in SEED_CURVES.items()}}
    for name, runs in variants.items():
        run_folder = folder / name.replace("/", "_")
        for old in run_folder.glob("events.out.tfevents.*"):  # a report written again replaces its runs
            old.unlink()
        with SummaryWriter(log_dir=str(run_folder)) as writer:
            writer.add_custom_scalars(layout)
            writer.add_text("seeds", f"{len(runs)} runs: " + ", ".join(str(r.path) for r in runs))
            for tag in SEED_CURVES:
                for step, _n, mean, _std, low, high in curve_stats(runs, tag):
                    for stat, value in (("mean", mean), ("min", low), ("max", high)):
                        writer.add_scalar(f"seeds/{tag}/{stat}", value, step)


def pick_baseline(variants: dict[str, list[Run]], wanted: str | None) -> str:
    if wanted is not None:
        matches = [name for name in variants if name == wanted] or [name for name in variants if wanted in name]
        if len(matches) != 1:
            raise SystemExit(f"bnexp report: error: --baseline {wanted!r} matches {len(matches)} variants "
                             f"({', '.join(variants)}); name one of them")
        return matches[0]
    without_norm = [name for name, runs in variants.items() if runs[0].config.get("norm.name") == "none"]
    return without_norm[0] if len(without_norm) == 1 else next(iter(variants))


def accuracies_argument(text: str) -> list[float]:
    """--targets: accuracies by the rule trainer.targets follows (config.accuracy_targets)."""
    try:
        return accuracy_targets(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("bnexp: error: ")) from None


def accuracy_argument(text: str) -> float:
    """--target: one accuracy, by the same rule."""
    targets = accuracies_argument(text)
    if len(targets) != 1:
        raise argparse.ArgumentTypeError(f"--target takes one accuracy, got {text!r}")
    return targets[0]


def phases_argument(text: str) -> list[tuple[int, int]]:
    phases = []
    for part in filter(None, text.split(",")):
        first, sep, last = part.partition("-")
        if not (sep and first.isdigit() and last.isdigit() and int(first) <= int(last)):
            raise argparse.ArgumentTypeError(f"expected step ranges FIRST-LAST (1-2500,25001-50000), got {part!r}")
        phases.append((int(first), int(last)))
    if not phases:
        raise argparse.ArgumentTypeError("expected at least one step range FIRST-LAST")
    return phases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bnexp report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run directories, sweeps, or folders of them")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--target", type=accuracy_argument,
                       help="accuracy to reach (default: the baseline's best, mean over seeds)")
    which.add_argument("--baseline", help="the baseline variant (default: the one without normalization)")
    parser.add_argument("--targets", type=accuracies_argument, default=[],
                        help="extra fixed accuracies for steps-to columns, e.g. 0.97,0.98")
    parser.add_argument("--claims", help="a claims file (a path, or a study's name: results/NAME/claims.yaml): "
                        "each claim's verdict computed from runs.csv, into verdict.md and verdict.csv; with a "
                        "runs.csv as PATH, the verdicts alone, from that file")
    parser.add_argument("--out", type=Path, help="write report.md, report.csv, runs.csv, curves.csv, figures, "
                        "tensorboard/ (each variant's mean and range over seeds) and, where runs took the ICS "
                        "or landscape probes, probes.csv, ics.png and landscape.png here")
    parser.add_argument("--variant-keys", type=lambda text: [k for k in text.split(",") if k], metavar="KEYS",
                        help="name variants by these options alone (norm.name,trainer.batch_size), where the other "
                        "differences follow from them")
    parser.add_argument("--phases", type=phases_argument, default=[], metavar="A-B,...",
                        help="runs.csv gains each ICS / landscape probe's median over the steps of each phase, "
                        "as <tag>@A-B (e.g. 1-2500,25001-50000), for claims on them")
    parser.add_argument("--versus", metavar="KEY", help="with --out: versus.png, each variant's best accuracy "
                        "(mean over seeds, 95%% interval) against this numeric option (e.g. model.init_std), one "
                        "line per setting of the others, and the init gradient ratio where runs probed it")
    args = parser.parse_args(argv)
    if args.versus and not args.out:
        parser.error("--versus draws versus.png: add --out DIR")
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"bnexp report: error: no such path: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        return report(args)
    except UserError as e:  # a bad claims file, or claims the runs cannot decide: before anything is written
        print(e, file=sys.stderr)
        return 2


def report(args: argparse.Namespace) -> int:
    fixed_targets = args.targets
    claims = load_claims(args.claims) if args.claims else None
    if len(args.paths) == 1 and args.paths[0].is_file() and args.paths[0].suffix == ".csv":
        if claims is None:
            raise UserError("a runs.csv alone gives the verdicts: add --claims NAME")
        if args.versus:
            raise UserError("--versus draws from run directories, not from a runs.csv")
        found = evaluate_claims(claims, read_runs_csv(args.paths[0].read_text()), args.paths[0])
        print(verdict_markdown(found, str(args.paths[0])))
        for path in write_verdicts(found, args.out, str(args.paths[0])) if args.out else []:
            print(f"wrote {path}")
        return 0
    runs, left_out = [], []
    for path in find_run_dirs(args.paths):
        try:
            runs.append(load_run(path))
        except ValueError as e:
            left_out.append((path, str(e)))
    if not runs:
        for path, why in left_out:
            print(f"bnexp report: left out {path}: {why}", file=sys.stderr)
        print(f"bnexp report: error: no readable runs under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 2

    variants = group_variants(runs, args.variant_keys)
    baseline = pick_baseline(variants, args.baseline)
    variants = {baseline: variants[baseline], **variants}  # the baseline first, as in the paper's tables
    rows = summarize(variants, baseline, args.target, fixed_targets)
    source = "--target" if args.target is not None else f"the best accuracy of {baseline}, mean over its runs"
    lines = [f"{len(runs)} runs in {len(variants)} variants; target {100 * rows[0]['target']:.2f}% ({source}).", ""]
    # Options missing from some runs although their group is the same everywhere: older runs.
    newer = sorted(k for k in silent_keys(runs) - NOT_THE_VARIANT
                   if len({str(r.config.get(f"{k.rsplit('.', 1)[0]}.name")) for r in runs}) == 1)
    if newer:
        lines += [f"Note: not every run's config has {', '.join(newer)} (runs from different bnexp versions?); "
                  "those options are left out of the comparison.", ""]
    for key in ("data.name", "model.name"):
        values = sorted({str(r.config.get(key)) for r in runs})
        if len(values) > 1:
            lines += [f"Note: the runs differ in {key} ({', '.join(values)}): the table compares across them.", ""]
    lines.append(markdown_table(rows, fixed_targets))
    lines += ["", interval_table(rows)]
    if left_out:
        lines += ["Left out (not readable):", *(f"- {path}: {why}" for path, why in left_out), ""]
    text = "\n".join(lines)
    per_run = runs_csv(variants, rows, fixed_targets, args.phases)
    # The verdicts come from runs.csv's text, the file a reader recomputes them from.
    found = evaluate_claims(claims, read_runs_csv(per_run)) if claims else None
    versus = versus_points(variants, args.versus) if args.versus else None
    print(text)
    if found is not None:
        print(verdict_markdown(found, "runs.csv"))
    for path, why in left_out:
        print(f"bnexp report: left out {path}: {why}", file=sys.stderr)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(text)
        write_csv(rows, fixed_targets, args.out / "report.csv")
        (args.out / "runs.csv").write_text(per_run)
        write_curves_csv(variants, args.out / "curves.csv")
        write_seed_runs(variants, args.out / "tensorboard")
        print(f"wrote {args.out / 'tensorboard'} (tensorboard --logdir {args.out / 'tensorboard'})")
        accuracy = {name: curve_stats(runs, "test/accuracy") for name, runs in variants.items()}
        reached = {r["variant"]: r["steps_to_target"] and r["steps_to_target"][0] for r in rows}
        written = plot_figures(variants, accuracy, args.out, rows[0]["target"], reached)
        if probes := step_probe_stats(variants):
            write_step_probes_csv(probes, args.out / "probes.csv")
            written += [args.out / "probes.csv", *plot_step_probes(probes, list(variants), args.out)]
        if versus is not None:
            written += plot_versus(versus, args.versus, args.out)
        if found is not None:
            written += write_verdicts(found, args.out, "runs.csv")
        for path in written:
            print(f"wrote {path}")
    return 0
