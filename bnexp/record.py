"""One run's bookkeeping while it trains: evaluations, clocks, logs, checkpoints and its summary.

A training of R runs (bnexp/trainer.py) holds one `RunRecord` per run, a single run and each
replica alike, and calls it at each event of the loop: a log window's end, an evaluation, a
checkpoint, the end. A record knows nothing of how steps are made; its model is the plain module
(for a replica, views of the stacked tensors), its optimizer the one its checkpoints hold.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from bnexp import checkpoint
from bnexp.builders import autocast, in_layout
from bnexp.errors import UserError, first_line
from bnexp.evaluation import error_with_batch_statistics, fold_batch_norms, replica_metrics, test_metrics
from bnexp.norm import batch_statistics_layers, finalize_population
from bnexp.probes import PercentileProbe, VarianceShift, longer_sequences, replica_recording
from bnexp.summary import ENDED, Status, Summary, first_step_reaching, provenance

log = logging.getLogger(__name__)


class Tested(NamedTuple):
    """One evaluation's passes: test accuracy and loss, the training set's (trainer.eval_train), and
    the seconds they took (0 where the evaluation that uses them times them)."""

    accuracy: float
    loss: float
    train_set: dict[str, float]
    seconds: float


class RunRecord:
    def __init__(self, cfg, run_dir: Path, model, optimizer, data, runlog, writes_checkpoints: bool = True,
                 population_batches: int = 0, variance_shift: bool = False, longer_rows=(), blank=None):
        """cfg: the run's trainer group. runlog: its RunLog (NullLog in a data-parallel run's other
        processes, which write no checkpoints either). population_batches: if > 0, the BN layers'
        population statistics are computed over that many training batches after the last step.
        variance_shift: also log each BN layer's variance shift at every evaluation (probes.variance_shift).
        longer_rows, blank: the last evaluation's variable-length test (probes.longer_rows), the
        blank rows' value per channel (data.blank)."""
        self.dir, self.model, self.optimizer, self.data, self.runlog = Path(run_dir), model, optimizer, data, runlog
        self.writes_checkpoints, self.population_batches = writes_checkpoints, population_batches
        self.keep_checkpoint_every = int(cfg.get("keep_checkpoint_every", 0))  # absent from configs of older runs
        self.max_steps, self.targets, self.batch_size = int(cfg.max_steps), list(cfg.targets), int(cfg.batch_size)
        self.device = next(model.parameters()).device
        self.amp, self.channels_last, self.fold_bn = bool(cfg.amp), bool(cfg.channels_last), bool(cfg.eval_fold_bn)
        self.eval_train = bool(cfg.eval_train)
        self.probe = PercentileProbe(model.probe_points(), cfg.probe_unit)
        self.batch_norms = batch_statistics_layers(model) if cfg.eval_batchstats else []
        self.variance_shift = VarianceShift(model) if variance_shift else None
        self.longer_rows, self.blank = list(longer_rows), blank
        self.history: list[tuple[int, float]] = []  # (step, test accuracy) at every evaluation
        self.saved_step = 0  # the step of the newest checkpoint
        self.elapsed_before, self.started = 0.0, datetime.now(timezone.utc)  # earlier segments of a resumed run
        self.eval_time = 0.0  # seconds spent evaluating, over all segments (a study's cost is stated with it)
        self.clock = time.perf_counter()  # this segment's start (begin sets it again)
        self.code = provenance()  # the code that trains this segment, for the summary
        self.summary: Summary | None = None  # set when the run ends or stops (conclude)

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint of this run (checkpoint.load_latest with required=STATE)."""
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError, IndexError) as e:  # what torch raises on a foreign state
            raise UserError(f"checkpoint {state.get('file')} does not fit this run's model and optimizer "
                            f"({first_line(e)}); move it away, or set trainer.resume=never") from None
        self.saved_step = state["step"]
        self.history, self.elapsed_before, self.started = state["history"], state["elapsed"], state["started"]
        self.eval_time = state.get("eval_time", 0.0)  # absent from checkpoints written before it was kept

    # What `state` holds, with what checkpoint.save adds: a checkpoint without one of them is not this run's.
    STATE = ("model", "optimizer", "history", "elapsed", "started", "step", "rng")

    def state(self) -> dict:
        """What a resumed run needs besides the config (checkpoint.save adds the step and RNG states)."""
        # Copies: a replica's tensors are views of the stacked ones, which torch.save would write whole.
        model = {name: tensor.clone() for name, tensor in self.model.state_dict().items()}
        return {"model": model, "optimizer": self.optimizer.state_dict(), "history": self.history,
                "elapsed": self.elapsed_before + time.perf_counter() - self.clock, "started": self.started,
                "eval_time": self.eval_time}

    def begin(self) -> bool:
        """Start this segment's clock. True when the run is fresh, to evaluate at step 0 (a resumed
        one has, up to its checkpoint)."""
        self.clock = time.perf_counter()
        return not self.history

    def log_window(self, step: int, loss: float, error: float, lr: float, steps_per_s: float) -> None:
        self.runlog.scalars(step, {"train/loss": loss, "train/error": error, "opt/lr": lr,
                                   "perf/steps_per_s": steps_per_s})

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the model's memory layout."""
        return in_layout(x, self.channels_last)

    def evaluate(self, step: int, tested: Tested | None = None) -> None:
        """Test-set accuracy of the inference network (eval mode: population statistics), and with
        trainer.eval_train the training set's (train_set/accuracy, train_set/loss: the train/test gap).
        tested: this step's passes, made for every replica of a stack at once (evaluate_together),
        whose probe values this record's probe already holds; None: made here."""
        started = time.perf_counter()
        if tested is None:
            tested = self.test_passes()
        self.history.append((step, tested.accuracy))
        batchstats = {}
        if self.batch_norms:
            with autocast(self.device, self.amp):
                batchstats["test/error_batchstats"] = error_with_batch_statistics(
                    self.model, self.batch_norms, self.data, self.batch_size, self.prepare)
        self.eval_time += time.perf_counter() - started + tested.seconds
        self.runlog.scalars(step, {"test/accuracy": tested.accuracy, "test/error": 1 - tested.accuracy,
                                   "test/loss": tested.loss, **tested.train_set, **batchstats,
                                   **self.probe.percentiles(),
                                   **(self.variance_shift.ratios() if self.variance_shift else {})})

    def test_passes(self) -> Tested:
        """The inference network over the test set (with the probe and the variance shift recording),
        and over the training set with trainer.eval_train."""
        # The variance shift reads the BN layers' inputs: they are there only unfolded.
        folded = self.fold_bn and self.variance_shift is None
        inference = fold_batch_norms(self.model) if folded else self.model
        shift = self.variance_shift.recording() if self.variance_shift else contextlib.nullcontext()
        with self.probe.recording(inference.probe_points()), shift, autocast(self.device, self.amp):
            accuracy, loss = test_metrics(inference, self.data, self.prepare)
        train_set = {}
        if self.eval_train:  # after the probes: they describe the test set
            with autocast(self.device, self.amp):
                train_accuracy, train_loss = test_metrics(inference, self.data, self.prepare, split="train")
            train_set = {"train_set/accuracy": train_accuracy, "train_set/loss": train_loss}
        return Tested(accuracy, loss, train_set, seconds=0.0)  # timed by evaluate

    def final_evaluation(self, step: int) -> None:
        """After the last step: the last evaluation, after the paper's population statistics where
        asked for (finalize_population, called first)."""
        self.evaluate(step)
        if self.longer_rows:
            started = time.perf_counter()
            with autocast(self.device, self.amp):
                longer = longer_sequences(self.model, self.data, self.longer_rows, self.blank, self.history[-1][1])
            self.eval_time += time.perf_counter() - started
            self.runlog.scalars(step, longer)

    def finalize_population(self, step: int) -> bool:
        """Before the last evaluation: the paper's population statistics where asked for. False when
        the run has no last evaluation to make (a run resumed from its final checkpoint made it)."""
        if self.history[-1][0] == step:
            return False
        if self.population_batches:
            batches = (self.data.next_batch(step + i)[0] for i in range(self.population_batches))
            log.info("population statistics over %d training batches", finalize_population(self.model, batches))
        return True

    def save_checkpoint(self, step: int) -> None:
        """A checkpoint at `step`, unless one is there already (raises checkpoint.CheckpointError)."""
        if self.writes_checkpoints and self.saved_step != step:
            checkpoint.save(self.dir, step, self.state(), self.keep_checkpoint_every)
        self.saved_step = step

    def conclude(self, step: int, status: Status, diverged_at: int | None = None, error: str | None = None,
                 stopped_by: str | None = None) -> Summary:
        """The summary, written last: the run has ended (or stopped) with `status` at `step`. Raises
        OSError when it cannot be written: then the run dir holds no summary, as an unfinished run."""
        summary = self.summary_at(step, status, diverged_at)
        if error:
            summary["error"] = error
        if stopped_by:
            summary["stopped_by"] = stopped_by
        self.summary = summary
        if status in ENDED:  # a stopped run's resumption logs them when it ends; logged now, they would stay
            self.runlog.scalars(step, {f"summary/{k}": summary[k] for k in ("best_accuracy", "final_accuracy")
                                       if summary[k] is not None})
        self.runlog.close(summary)
        return summary

    def summary_at(self, step: int, status: Status, diverged_at: int | None) -> Summary:
        history, wall_time = self.history, self.elapsed_before + time.perf_counter() - self.clock
        best_step, best = max(history, key=lambda h: (h[1], -h[0])) if history else (None, None)
        final_step, final = history[-1] if history else (None, None)
        return {
            "status": status,
            "steps": step,
            "max_steps": self.max_steps,
            "diverged_at_step": diverged_at,
            "final_accuracy": final,
            "final_error": None if final is None else 1 - final,
            "final_step": final_step,
            "best_accuracy": best,
            "best_error": None if best is None else 1 - best,
            "best_step": best_step,
            # The first evaluated step at or above each target: as precise as the evaluation schedule.
            "steps_to_target": {str(t): first_step_reaching(history, t) for t in self.targets},
            "wall_time_s": round(wall_time, 3),  # over all segments of a resumed run
            "steps_per_s": round(step / wall_time, 2) if wall_time > 0 else None,
            "eval_time_s": round(self.eval_time, 3),  # the part of wall_time_s spent evaluating
            "started_at": self.started.isoformat(timespec="seconds"),
            "ended_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": str(self.device),
            "torch": torch.__version__,
            **self.code,
        }


def evaluate_together(records: dict[int, RunRecord], wide: nn.Module, replicas: int, step: int) -> None:
    """Replicas of a stack of R (records by their place r in it) evaluated in one pass of the wide
    inference network (stepper.StackedModels.inference_network): each one's accuracy, loss and probe
    values as its own evaluation would find them, to float rounding, for the cost of one pass."""
    first = next(iter(records.values()))
    started = time.perf_counter()
    probes = {r: record.probe for r, record in records.items()}
    with replica_recording(probes, wide.probe_points(), replicas), autocast(first.device, first.amp):
        tested = replica_metrics(wide, first.data.eval_batches(), replicas, first.prepare)
    train_set = [{} for _ in range(replicas)]
    if first.eval_train:  # after the probes: they describe the test set
        with autocast(first.device, first.amp):
            on_train = replica_metrics(wide, first.data.eval_batches("train"), replicas, first.prepare)
        train_set = [{"train_set/accuracy": a, "train_set/loss": loss} for a, loss in on_train]
    seconds = (time.perf_counter() - started) / len(records)  # each replica's share of the pass
    for r, record in records.items():
        record.evaluate(step, Tested(*tested[r], train_set[r], seconds))
