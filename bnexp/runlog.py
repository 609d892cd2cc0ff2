"""What a run leaves on disk: TensorBoard events, metrics.csv, and summary.json written last.

metrics.csv is long-form (step, tag, value) and holds exactly the scalars sent to TensorBoard.
summary.json (bnexp/summary.py) appears only when the run has ended and says how.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from bnexp.summary import SUMMARY, Summary, write_json_atomic

# The metrics the HParams tab shows beside each run's hyper-parameters.
HPARAM_METRICS = ("test/accuracy", "test/error", "train/loss", "summary/best_accuracy", "summary/final_accuracy")


class RunLog:
    """resume_step: continue a run whose logs are complete up to that step (its checkpoint): later
    rows of metrics.csv are dropped, and TensorBoard is told to purge later events, so the resumed
    run's curves have no step twice and none missing."""

    def __init__(self, run_dir: Path, hyperparameters: dict, probe_layers: list[str], resume_step: int | None = None,
                 ics_layers: list[str] = (), landscape: bool = False):
        self.dir = Path(run_dir)
        if resume_step is None:
            # A run that starts from step 0 in a dir used before (resume=never, or an attempt that
            # died before its first checkpoint): the old events would show every step twice.
            for old in self.dir.glob("events.out.tfevents.*"):
                old.unlink()
            self.tb = SummaryWriter(log_dir=str(self.dir))
            self.tb.add_custom_scalars(dashboard_layout(probe_layers, ics_layers, landscape))
            # Written into this run's own event file: SummaryWriter.add_hparams would make a sub-run.
            for summary in hparams(hyperparameters, dict.fromkeys(HPARAM_METRICS, 0.0)):
                self.tb.file_writer.add_summary(summary)
            rows = []
        else:
            # The layout and hparams are in the first event file already.
            self.tb = SummaryWriter(log_dir=str(self.dir), purge_step=resume_step + 1)
            rows = kept_rows(self.dir / "metrics.csv", resume_step)
        metrics, tmp = self.dir / "metrics.csv", self.dir / "metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:  # replaced whole: a crash here loses no kept row
            csv.writer(f).writerows([["step", "tag", "value"], *rows])
        os.replace(tmp, metrics)
        self._csv_file = open(metrics, "a", newline="", buffering=1)
        self._csv = csv.writer(self._csv_file)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.tb.add_scalar(tag, value, step)
            self._csv.writerow([step, tag, repr(float(value))])

    def finish(self, summary: Summary) -> None:
        self.tb.close()
        self._csv_file.close()
        write_json_atomic(self.dir / SUMMARY, summary)


class NullLog:
    """The log of a data-parallel run's other processes: rank 0 writes for all."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def finish(self, summary: Summary) -> None:
        pass


def kept_rows(path: Path, last_step: int) -> list[list[str]]:
    """metrics.csv's rows up to and including `last_step` (those a checkpoint at that step accounts for)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        # len 3: a process killed mid-write can leave a partial last line
        return [row for row in csv.reader(f) if len(row) == 3 and row[0] != "step" and int(row[0]) <= last_step]


def dashboard_layout(probe_layers: list[str], ics_layers: list[str] = (), landscape: bool = False) -> dict:
    """TensorBoard's Custom Scalars page: every run's curves on shared charts, probes as margin charts;
    the ICS probe per layer and the landscape probe where the run takes them.

    Each run writes the same layout; TensorBoard merges them and drops the duplicates.
    """
    layout = {
        "bnexp: all runs": {
            "test error": ["Multiline", ["^test/error$"]],
            "train loss": ["Multiline", ["^train/loss$"]],
            "test accuracy": ["Multiline", ["^test/accuracy$"]],
            "learning rate": ["Multiline", ["^opt/lr$"]],
        },
        "bnexp: input to a nonlinearity (p50 line, p15-p85 band)": {
            layer: ["Margin", [f"probe/{layer}/p50", f"probe/{layer}/p15", f"probe/{layer}/p85"]]
            for layer in probe_layers
        },
    }
    if ics_layers:
        layout["bnexp: internal covariate shift (Santurkar et al.), per layer"] = {
            f"{layer} {what}": ["Multiline", [f"^ics/{layer}/{what}$"]]
            for layer in ics_layers for what in ("l2", "cos")}
        layout["bnexp: how far each nonlinearity's input distribution moves in one step"] = {
            f"{layer} {what}": ["Multiline", [f"^shift/{layer}/{what}$"]] for layer in probe_layers
            for what in ("mean", "std")}
    if landscape:
        layout["bnexp: loss landscape along the gradient (Santurkar et al.)"] = {
            what: ["Multiline", [f"^landscape/{what}$"]] for what in ("loss_range", "grad_change", "beta_smoothness")}
    return layout


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}; lists and None become strings (HParams types)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out
