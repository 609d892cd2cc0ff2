"""The report's figures (matplotlib): accuracy over steps, Figure 1's probe panels, and a variant's
best accuracy against one option (versus.png).

Drawn from what bnexp/report.py computed: each variant's runs and its accuracy statistics per step.
"""

from __future__ import annotations

import math
from pathlib import Path

from bnexp.runs import Run
from bnexp.stats import Estimate

Stats = list[tuple[int, int, float, float, float, float]]  # (step, runs, mean, std, min, max)


def panel_labels(count: int) -> list[str]:
    """(a), (b), ... like the paper's panels; numbers where a sweep has more panels than letters."""
    if count <= 26:
        return [chr(ord("a") + k) for k in range(count)]
    return [str(k + 1) for k in range(count)]


def colors(names: list[str]) -> dict:
    """One colour per variant, in order, the same in every figure of a report."""
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def mean_and_band(ax, stats: Stats, color, label: str) -> None:
    """A variant's curve: the mean over its seeds as a line, their min-max as a band."""
    steps = [s[0] for s in stats]
    ax.plot(steps, [s[2] for s in stats], color=color, label=label)
    ax.fill_between(steps, [s[4] for s in stats], [s[5] for s in stats], color=color, alpha=0.2, linewidth=0)


def plot_figures(variants: dict[str, list[Run]], accuracy: dict[str, Stats], out: Path, target: float | None = None,
                 steps_to_target: dict[str, float | None] | None = None) -> list[Path]:
    """accuracy.png (accuracy over steps; error over steps, log-log) and, where runs carry probes,
    figure.png shaped like Figure 1. With a target, the error panel draws it as a line and marks
    each variant's mean steps to it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    color = colors(list(variants))
    means = sorted(s[2] for stats in accuracy.values() for s in stats)
    # Zoom like the paper's Figure 1(a): hide the first few evaluations near chance.
    y_range = (max(0.0, means[len(means) // 10] - 0.05), min(1.0, means[-1] + 0.005))

    def accuracy_panel(ax):
        for name, stats in accuracy.items():
            runs = len(variants[name])
            mean_and_band(ax, stats, color[name], f"{name} ({runs} run{'s' * (runs > 1)})")
        ax.set_xlabel("training steps")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(*y_range)
        ax.grid(alpha=0.3)

    def error_panel(ax):
        """Test error on log-log axes: early training gets its share of the steps axis, and the last
        tenths of a point, where converged models differ, their share of the error axis."""
        for name, stats in accuracy.items():
            errors = [(step, n, 1 - mean, std, 1 - high, 1 - low) for step, n, mean, std, low, high in stats]
            mean_and_band(ax, [e for e in errors if e[0] > 0], color[name], name)
        if target is not None:
            ax.axhline(1 - target, color="0.3", linestyle=":", linewidth=1)
            ax.annotate(f"target {100 * target:.2f}%", (0.01, 1 - target), xycoords=("axes fraction", "data"),
                        xytext=(0, -9), textcoords="offset points", fontsize=7, color="0.3")
            for name, steps_mean in (steps_to_target or {}).items():
                if steps_mean:
                    ax.plot([steps_mean], [1 - target], marker="^", markersize=7, color=color[name], zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training steps (log scale)")
        ax.set_ylabel("test error (log scale)")
        lowest = min(1 - s[5] for stats in accuracy.values() for s in stats)
        ax.set_ylim(max(lowest * 0.8, 1e-4), 1 - y_range[0])
        ax.grid(alpha=0.3, which="both")

    def legend(fig, axes):
        if len(variants) <= 4:
            axes[0].legend(loc="lower right", fontsize=8)
        else:
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    accuracy_panel(axes[0])
    error_panel(axes[1])
    legend(fig, axes)
    fig.suptitle("Test accuracy and error vs training steps (line: mean over seeds; band: min-max)")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    written = [out / "accuracy.png"]

    probed = {name: runs[0] for name, runs in variants.items() if runs[0].probe_layers}
    if probed:
        panels = 1 + len(probed)
        ncols = min(panels, 4)
        nrows = math.ceil(panels / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.8 * nrows), squeeze=False)
        axes = axes.flatten()
        accuracy_panel(axes[0])
        panel = panel_labels(panels)
        axes[0].set_title(f"({panel[0]}) test accuracy")
        for i, (ax, (name, run)) in enumerate(zip(axes[1:], probed.items(), strict=False)):
            layer = run.probe_layers[-1]
            for q, style in (("p15", "--"), ("p50", "-"), ("p85", "--")):
                points = sorted(run.curves[f"probe/{layer}/{q}"].items())
                ax.plot([p[0] for p in points], [p[1] for p in points], style, color=color[name], label=q)
            ax.set_title(f"({panel[i + 1]}) {name}\ninput to one {layer} unit, seed {run.seed}", fontsize=9)
            ax.set_xlabel("training steps")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        for ax in axes[panels:]:
            ax.set_visible(False)
        legend(fig, axes)
        fig.tight_layout()
        fig.savefig(out / "figure.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(out / "figure.png")
    return written


def plot_step_probes(stats: dict[str, dict[str, Stats]], variant_order: list[str], out: Path) -> list[Path]:
    """ics.png (per probed layer: ||G - G'|| and cos(G, G'); per nonlinearity: the one-step shift of
    its input's mean) and landscape.png (the three landscape quantities), where runs took those
    probes: per variant the mean over seeds, the band min-max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    color = colors(variant_order)

    def panel(ax, tag: str, title: str, log_y: bool) -> None:
        for name in variant_order:
            if rows := stats[tag].get(name):
                mean_and_band(ax, rows, color[name], f"{name} ({max(r[1] for r in rows)} runs)")
        if log_y and all(r[4] > 0 for rows in stats[tag].values() for r in rows):
            ax.set_yscale("log")
        ax.set_xscale("log")  # early training, where the nets differ most, gets its share of the axis
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training steps (log scale)")
        ax.grid(alpha=0.3)

    written = []

    def layers_of(kind: str) -> list[str]:
        return list(dict.fromkeys(tag.split("/")[1] for tag in stats if tag.startswith(f"{kind}/")))

    # A first layer has nothing before it: its G' is G (l2 0, cos 1), nothing to draw.
    ics = [layer for layer in layers_of("ics")
           if any(r[5] > 0 for rows in stats[f"ics/{layer}/l2"].values() for r in rows)]
    shifts = layers_of("shift")
    if ics or shifts:
        rows = [row for row, layers in (("l2", ics), ("cos", ics), ("shift", shifts)) if layers]
        cols = max(len(ics), len(shifts))
        fig, axes = plt.subplots(len(rows), cols, figsize=(3.8 * cols, 3.2 * len(rows)), squeeze=False)
        for r, row in enumerate(rows):
            layers = shifts if row == "shift" else ics
            for col in range(cols):
                if col >= len(layers):
                    axes[r][col].set_visible(False)
                elif row == "shift":
                    panel(axes[r][col], f"shift/{layers[col]}/mean", f"{layers[col]}: |change of its input's mean| "
                          "in one step", log_y=True)
                else:
                    title = {"l2": "||G - G'||", "cos": "cos(G, G')"}[row]
                    panel(axes[r][col], f"ics/{layers[col]}/{row}", f"{layers[col]}: {title}", log_y=row == "l2")
        axes[0][0].legend(fontsize=7)
        fig.suptitle("Internal covariate shift. Santurkar et al.'s Def. 2.1: how a layer's gradient G changes (G') "
                     "when the layers before it take their update;\nthe distributional view: how far each unit's "
                     "input mean moves from one step to the next (line: mean over seeds; band: min-max)", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "ics.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(out / "ics.png")
    quantities = [("loss_range", "loss range along -g"), ("grad_change", "max ||grad(w - eta g) - g||"),
                  ("beta_smoothness", "effective beta-smoothness")]
    if any(f"landscape/{q}" in stats for q, _ in quantities):
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
        for ax, (q, title) in zip(axes, quantities, strict=True):
            if f"landscape/{q}" in stats:
                panel(ax, f"landscape/{q}", title, log_y=True)
        axes[0].legend(fontsize=7)
        fig.suptitle("The loss landscape along the gradient (Santurkar et al.; line: mean over seeds, "
                     "band: min-max)", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "landscape.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(out / "landscape.png")
    return written


# (value of the --versus option, best accuracy over seeds, log10 of the init gradient ratio where
# probed, share of the runs diverged): one variant of a line in plot_versus.
VersusPoint = tuple[float, Estimate, Estimate | None, float]


def plot_versus(lines: dict[str, list[VersusPoint]], key: str, out: Path) -> list[Path]:
    """versus.png: each variant's best test accuracy (mean over its seeds, 95% t interval)
    against one option's value, one line per setting of the other options, as CS231n's weight-scale
    plot; where runs took the gradient probe, a second panel: log10 of the first layer's gradient
    norm over the last one's at the initial weights. A hollow marker: most of its runs diverged
    (their best accuracy is the one before diverging)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    color = colors(list(lines))
    probed = any(p[2] is not None for points in lines.values() for p in points)
    fig, axes = plt.subplots(1, 1 + probed, figsize=(6.5 * (1 + probed), 4.5), squeeze=False)
    xs = [p[0] for points in lines.values() for p in points]
    log_x = min(xs) > 0 and max(xs) >= 20 * min(xs)

    def panel(ax, estimate_of, scale: float, ylabel: str) -> None:
        for name, points in lines.items():
            drawn = [(x, e, diverged) for x, *estimates, diverged in points if (e := estimate_of(estimates))]
            if not drawn:
                continue
            x = [d[0] for d in drawn]
            y = [scale * d[1].value for d in drawn]
            # An unbounded interval (one seed) draws no bar rather than a bar of no width.
            err = [[scale * (d[1].value - d[1].low) for d in drawn], [scale * (d[1].high - d[1].value) for d in drawn]]
            err = [[e if math.isfinite(e) else math.nan for e in side] for side in err]
            seeds = max(d[1].n for d in drawn)
            ax.errorbar(x, y, yerr=err, color=color[name], capsize=3, label=f"{name} ({seeds} seeds)")
            ax.scatter(x, y, color=color[name], zorder=3,
                       facecolors=["none" if d[2] > 0.5 else color[name] for d in drawn])
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)

    panel(axes[0][0], lambda e: e[0], 100, "best test accuracy (%)")
    axes[0][0].set_title("best test accuracy: mean over seeds, 95% interval\n(hollow: most runs diverged)",
                         fontsize=10)
    axes[0][0].legend(fontsize=7)
    if probed:
        panel(axes[0][1], lambda e: e[1], 1, "log10(||dL/dW|| first layer / last layer)")
        axes[0][1].axhline(0, color="gray", linewidth=0.8)
        axes[0][1].set_title("gradient norms at the initial weights, first layer over last", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "versus.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [out / "versus.png"]
