"""Run directories as bnexp writes them, read back: what `bnexp report` and scripts/ analyse.

Only what a run wrote is read (config.yaml, metrics.csv or the TensorBoard events, summary.json),
so this works on runs made anywhere: a GPU box, a Slurm cluster, an older bnexp.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from bnexp.config import flatten
from bnexp.summary import SUMMARY, Summary
from bnexp.summary import read as read_summary

UNFINISHED = "unfinished"  # the status of a run without a summary: still running, or killed


@dataclass
class Run:
    path: Path
    config: dict
    summary: Summary | None
    curves: dict[str, dict[int, float]] = field(default_factory=dict)  # tag -> step -> value

    @property
    def status(self) -> str:
        return self.summary["status"] if self.summary else UNFINISHED

    @property
    def seed(self):
        return self.config.get("trainer.seed")

    @property
    def accuracy(self) -> list[tuple[int, float]]:
        return sorted(self.curves.get("test/accuracy", {}).items())

    @property
    def probe_layers(self) -> list[str]:
        return sorted({tag.split("/")[1] for tag in self.curves if tag.startswith("probe/")})


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Run directories: the ones holding the resolved config.yaml that every bnexp run writes."""
    found = set()
    for path in paths:
        candidates = [path / "config.yaml", *path.rglob("config.yaml")] if path.is_dir() else []
        found.update(c.parent for c in candidates if c.is_file() and c.parent.name != ".hydra")
    return sorted(found)


def load_run(path: Path) -> Run:
    """A run as written to disk; raises ValueError with the reason when it cannot be read."""
    try:
        config = flatten(OmegaConf.to_container(OmegaConf.load(path / "config.yaml")))
    except Exception as e:  # OSError, YAML errors, a config that is not a mapping
        raise ValueError(f"unreadable config.yaml ({type(e).__name__}: {e})") from None
    summary = read_summary(path / SUMMARY)
    if summary is None and (path / SUMMARY).exists():
        raise ValueError("unreadable summary.json")
    return Run(path, config, summary, read_curves(path))


def read_curves(path: Path) -> dict[str, dict[int, float]]:
    curves: dict[str, dict[int, float]] = defaultdict(dict)
    if (path / "metrics.csv").exists():
        try:
            with open(path / "metrics.csv", newline="") as f:
                for row in csv.DictReader(f):
                    curves[row["tag"]][int(row["step"])] = float(row["value"])
        except (KeyError, ValueError, TypeError, csv.Error) as e:
            raise ValueError(f"damaged metrics.csv ({type(e).__name__}: {e})") from None
    elif any(path.glob("events.out.tfevents.*")):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        try:
            events = EventAccumulator(str(path), size_guidance={"scalars": 0}).Reload()
            for tag in events.Tags()["scalars"]:
                curves[tag] = {e.step: e.value for e in events.Scalars(tag)}
        except Exception as e:  # tensorboard raises many kinds on damaged files
            raise ValueError(f"damaged event file ({type(e).__name__}: {e})") from None
    if not curves.get("test/accuracy"):
        raise ValueError("no test/accuracy recorded (neither metrics.csv nor TensorBoard events)")
    for table in sorted(path.glob("evaluate/step_*/evaluation.csv")):  # bnexp evaluate's, one per checkpoint
        if not table.parent.name.removeprefix("step_").isdigit():
            continue  # step_<n>.tmp: an evaluation that was stopped before it was whole
        try:
            with open(table, newline="") as f:
                for row in csv.DictReader(f):
                    tag = f"evaluate/{row['set']}/{row['label']}"
                    curves[tag][int(row["checkpoint_step"])] = float(row["accuracy"])
        except (KeyError, ValueError, TypeError, csv.Error) as e:
            raise ValueError(f"damaged {table.relative_to(path)} ({type(e).__name__}: {e})") from None
    return dict(curves)
