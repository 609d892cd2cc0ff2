"""summary.json: how a run ended and its headline numbers, in one definition.

The trainer writes it last and atomically (a run without one has not ended); the CLI, resume, the
sweep's outcome list, `bnexp report` and scripts/ read it. A sweep job that fails before training
(a refused config) writes only `failure.json`, {"status": "failed", "error": ...}, so that it never
replaces the summary of a run already in its dir.
"""

from __future__ import annotations

import json
import os
import subprocess
from enum import Enum
from pathlib import Path
from typing import TypedDict

import bnexp

SUMMARY, FAILURE = "summary.json", "failure.json"


class Status(str, Enum):
    COMPLETED = "completed"  # trained to max_steps
    DIVERGED = "diverged"  # a non-finite loss at diverged_at_step: a result, not a crash
    INTERRUPTED = "interrupted"  # stopped by a signal after checkpointing; resume continues it
    FAILED = "failed"  # an error ended it (a full disk; in a sweep, a refused config)

    def __str__(self) -> str:
        return self.value


ENDED = (Status.COMPLETED, Status.DIVERGED)  # for good: resume leaves such a run as it is


class _Optional(TypedDict, total=False):
    error: str  # status failed: why
    stopped_by: str  # status interrupted: SIGTERM or SIGINT


class Summary(_Optional):
    status: Status
    steps: int  # steps trained
    max_steps: int
    diverged_at_step: int | None
    final_accuracy: float | None  # test accuracy at the last evaluation, and its step
    final_error: float | None
    final_step: int | None
    best_accuracy: float | None  # the best evaluated test accuracy, and its (first) step
    best_error: float | None
    best_step: int | None
    steps_to_target: dict[str, int | None]  # trainer.targets -> first evaluated step reaching it
    wall_time_s: float  # over all segments of a resumed run
    steps_per_s: float | None
    eval_time_s: float  # the part of wall_time_s spent evaluating the test set
    started_at: str  # ISO 8601, UTC
    ended_at: str
    device: str
    torch: str  # the code that made the run: torch's and bnexp's versions, and bnexp's git commit
    bnexp: str
    git_commit: str | None  # None: bnexp is not running from a git checkout
    git_dirty: bool | None  # uncommitted changes in that checkout


def first_step_reaching(history: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluated step whose accuracy is at least `target`; None if it never gets there."""
    return next((step for step, accuracy in history if accuracy >= target), None)


def provenance() -> dict:
    """bnexp's version and, where bnexp runs from a git checkout, its commit and whether it had changes."""
    source = Path(bnexp.__file__).resolve().parent.parent
    commit = dirty = None
    if (source / "bnexp" / "__init__.py").is_file() and (source / ".git").exists():  # not a wheel in site-packages

        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()

        try:
            commit, dirty = git("rev-parse", "HEAD"), bool(git("status", "--porcelain"))
        except (OSError, subprocess.SubprocessError):  # no git, or a checkout git will not read
            commit = dirty = None
    return {"bnexp": bnexp.__version__, "git_commit": commit, "git_dirty": dirty}


def read(path: Path) -> dict | None:
    """A summary.json or failure.json; None when it is absent or unreadable (a run that has not ended):
    not JSON (truncated), or not an object with a status."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("status"), str) else None


def ended(run_dir: Path) -> Summary | None:
    """The summary of a run that has ended for good (completed or diverged), e.g. for a requeued job."""
    summary = read(Path(run_dir) / SUMMARY)
    return summary if summary and summary.get("status") in ENDED else None


def write_json_atomic(path: Path, data: dict) -> None:
    """Written to a temporary file, synced and renamed: a reader never sees half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
