"""What a run leaves on disk: TensorBoard events, metrics.csv, and summary.json written last.

metrics.csv is long-form (step, tag, value) and holds exactly the scalars sent to TensorBoard.
summary.json appears only when the run has ended and says how (completed | diverged | interrupted);
it is written to a temporary file and renamed, so a reader never sees half of one.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

# The metrics the HParams tab shows beside each run's hyper-parameters.
HPARAM_METRICS = ("test/accuracy", "test/error", "train/loss", "summary/best_accuracy", "summary/final_accuracy")


class RunLog:
    def __init__(self, run_dir: Path, hyperparameters: dict, probe_layers: list[str]):
        self.dir = Path(run_dir)
        self.tb = SummaryWriter(log_dir=str(self.dir))
        self.tb.add_custom_scalars(dashboard_layout(probe_layers))
        # Written into this run's own event file: SummaryWriter.add_hparams would make a sub-run.
        for summary in hparams(hyperparameters, dict.fromkeys(HPARAM_METRICS, 0.0)):
            self.tb.file_writer.add_summary(summary)
        self._csv_file = open(self.dir / "metrics.csv", "w", newline="", buffering=1)
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(["step", "tag", "value"])

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.tb.add_scalar(tag, value, step)
            self._csv.writerow([step, tag, repr(float(value))])

    def finish(self, summary: dict) -> None:
        self.tb.close()
        self._csv_file.close()
        write_json_atomic(self.dir / "summary.json", summary)


def dashboard_layout(probe_layers: list[str]) -> dict:
    """TensorBoard's Custom Scalars page: every run's curves on shared charts, probes as margin charts.

    Each run writes the same layout; TensorBoard merges them and drops the duplicates.
    """
    return {
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


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
