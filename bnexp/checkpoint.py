"""Checkpoints: written atomically, the last two kept (and, if asked, every one at a multiple of a
step count, for evaluating a run over its training), the newest readable one loaded.

A checkpoint is `RUN_DIR/checkpoints/step_<step>.pt`. It is written to a temporary file, synced
and renamed, so the newest name on disk is always a whole checkpoint; a failed write (a full
disk) removes its temporary file and leaves the previous checkpoint the newest. A damaged file
(truncated by a crash of the machine) is reported and skipped for the one before it; a run dir
whose checkpoints are all unreadable is refused rather than silently restarted from zero.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from bnexp.errors import UserError, first_line

log = logging.getLogger(__name__)

KEEP = 2  # the newest may be damaged by a crash mid-write of the disk: keep one more


class CheckpointError(RuntimeError):
    """Writing a checkpoint failed; the previous one is intact."""


def directory(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, newest first (files named otherwise are not bnexp's)."""
    found = [p for p in directory(run_dir).glob("step_*.pt") if p.stem.split("_", 1)[1].isdigit()]
    return sorted(found, key=step_of, reverse=True)


def step_of(path: Path) -> int:
    return int(path.stem.split("_", 1)[1])


def rng_states() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def save(run_dir: Path, step: int, state: dict, keep_every: int = 0) -> Path:
    """Write the checkpoint of `step`; prune all but the newest KEEP, and those of steps that are
    multiples of `keep_every` (when > 0), which stay for bnexp evaluate --step."""
    path = directory(run_dir) / f"step_{step:09d}.pt"
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save({**state, "step": step, "rng": rng_states()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError ("unexpected pos")
        try:
            tmp.unlink(missing_ok=True)
            previous = next((p.name for p in checkpoints(run_dir)), "none")
        except OSError:  # no checkpoints folder at all (a file in its place, a vanished run dir)
            previous = "none"
        why = first_line(e) or type(e).__name__  # torch's message can run on with a C++ backtrace
        raise CheckpointError(f"could not write checkpoint {path} ({why}); the newest good one is {previous}") from e
    for old in checkpoints(run_dir)[KEEP:]:
        if not (keep_every and step_of(old) % keep_every == 0):
            old.unlink(missing_ok=True)
    return path


def remove_all(run_dir: Path) -> None:
    for path in checkpoints(run_dir):
        path.unlink()


def load_latest(run_dir: Path, at_most: int | None = None, required: tuple[str, ...] = ()) -> dict | None:
    """The newest readable checkpoint (of a step <= at_most, if given) holding the `required` keys,
    None when the run has none; its file under "file". Its RNG states, under "rng", are the caller's
    to restore (set_rng_states): loading changes nothing but what it returns."""
    found = [p for p in checkpoints(run_dir) if at_most is None or step_of(p) <= at_most]
    for path in found:
        try:
            # weights_only=False: the RNG states are numpy and python objects. These files are the
            # run's own, written above; never load a checkpoint from a source you do not trust.
            state = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or not isinstance(state.get("step"), int):
                raise ValueError("not a bnexp checkpoint")
            if missing := [key for key in required if key not in state]:
                raise ValueError(f"it lacks {', '.join(missing)}")
            state["file"] = str(path)
        except Exception as e:  # torch.load raises many kinds on a truncated or foreign file
            log.warning("checkpoint %s is damaged (%s: %s); trying the one before it", path, type(e).__name__, e)
            continue
        log.info("resuming from %s (step %d)", path, state["step"])
        return state
    if found:
        raise UserError(f"every checkpoint in {directory(run_dir)} is damaged; refusing to start "
                        "over in the same run dir (move it away, or set trainer.resume=never to overwrite it)")
    return None
