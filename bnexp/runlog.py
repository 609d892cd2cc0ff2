"""What a run leaves on disk: TensorBoard events, metrics.csv, and summary.json written last.

metrics.csv is long-form (step, tag, value) and holds exactly the scalars sent to TensorBoard.
summary.json (bnexp/summary.py) appears only when the run has ended and says how.
"""

from __future__ import annotations

import csv
import os
import threading
from pathlib import Path

from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from bnexp.errors import UserError
from bnexp.summary import SUMMARY, Summary, write_json_atomic


def _quiet_writer_faults(args) -> None:
    """TensorBoard writes events from a thread of its own; when a write fails there (a full disk, a
    vanished run dir), the writer raises the same error in the run's own next write, where the run
    ends failed with it. Its thread's traceback would report it a second time, as a crash."""
    if not (isinstance(args.thread, _AsyncWriterThread) and issubclass(args.exc_type, OSError)):
        _default_excepthook(args)


_default_excepthook = threading.excepthook
threading.excepthook = _quiet_writer_faults

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

    def close(self, summary: Summary) -> None:
        """The logs closed, then summary.json written: the run has ended (or stopped)."""
        self.tb.close()
        self._csv_file.close()
        write_json_atomic(self.dir / SUMMARY, summary)


class NullLog:
    """The log of a data-parallel run's other processes: rank 0 writes for all."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def close(self, summary: Summary) -> None:
        pass


def kept_rows(path: Path, last_step: int) -> list[list[str]]:
    """metrics.csv's rows up to and including `last_step` (those a checkpoint at that step accounts
    for). A process killed mid-write can leave a partial last line: it is dropped. A damaged line
    before it is refused (one line, naming it), rather than silently losing rows."""
    if not path.exists():
        return []
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path} cannot be read ({type(e).__name__}: {e}); move it away to resume without it") from None
    kept = []
    for number, row in enumerate(rows[1:], start=2):
        try:
            step, _, value = row
            step = int(step)
            float(value)
        except ValueError:
            if number == len(rows):
                break
            raise UserError(f"{path} line {number} is damaged ({','.join(row)[:60]!r}); "
                            "move the file away to resume without its rows") from None
        if step <= last_step:
            kept.append(row)
    return kept


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
