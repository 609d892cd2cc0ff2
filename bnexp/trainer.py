"""The step loop, once for every kind of run: R >= 1 runs trained in lockstep by one stepper.

The paper counts steps, so steps are the unit of time everywhere. Each step draws every run's
batch by indexing tensors already on the device, and the stepper (bnexp/stepper.py) trains all R
runs at once: one module for a single run, R stacked modules for replicas. Losses and logits stay
on the device and are read once per `log_every` steps, so logging costs no synchronisation per
step. At a window's end each run is checked, logged, evaluated and checkpointed through its own
`RunRecord` (bnexp/record.py). A run whose loss becomes non-finite ends there as diverged, a
result and not a crash; the others go on (the runs' computations never mix). SIGTERM and Ctrl-C
checkpoint every run, then stop; a fault (a checkpoint or log that cannot be written, a data file
that cannot be read) ends every run still training as failed, with the reason, in its summary.
"""

from __future__ import annotations

import logging
import signal
import sys
import time

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from bnexp import checkpoint, distributed
from bnexp.builders import evaluation_steps, in_layout
from bnexp.errors import RunFailed
from bnexp.probes import GradientProbe, StepProbes
from bnexp.record import RunRecord, evaluate_together
from bnexp.summary import Status, Summary

log = logging.getLogger(__name__)


class Window:
    """The training steps since the last log, kept on the device and read once when the window ends."""

    def __init__(self):
        self.losses, self.logits, self.labels = [], [], []
        self.started = time.perf_counter()

    def add(self, losses: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """One step of R runs: losses [R], logits [R, B, C], labels [R, B]."""
        self.losses.append(losses.detach())
        self.logits.append(logits.detach())
        self.labels.append(labels)

    def close(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss of every step and run, [steps, R]; each run's training error over the window, [R])."""
        wrong = torch.stack(self.logits).argmax(-1) != torch.stack(self.labels)
        return torch.stack(self.losses), wrong.float().mean((0, -1))


class Trainer:
    def __init__(self, cfg: DictConfig, stepper, records: list[RunRecord], lr_at, step: int = 0,
                 step_probes: StepProbes | None = None, gradient_probe: GradientProbe | None = None):
        """cfg: the trainer group. stepper: trains the R runs of `records` (in that order) one step.
        lr_at(step): the learning rate of step `step` (0-based), a pure function. step: where the
        runs start (a resumed run's checkpoint). step_probes: the ICS and landscape probes (R = 1).
        gradient_probe: the layers' gradient norms (any R)."""
        self.cfg, self.stepper, self.records, self.lr_at, self.step = cfg, stepper, records, lr_at, step
        self.step_probes, self.gradient_probe = step_probes, gradient_probe
        # Plain ints: reading a DictConfig costs microseconds, too much for every step.
        self.max_steps, self.log_every = int(cfg.max_steps), int(cfg.log_every)
        self.checkpoint_every = int(cfg.checkpoint_every)
        self.evaluate_at = evaluation_steps(cfg)
        self.live = dict(enumerate(records))  # the runs still training, by their place in the stack
        self.stop_signal: int | None = None  # set by SIGTERM/SIGINT: checkpoint, then stop
        self.unwritten: list[str] = []  # the summaries that could not be written, and why
        self.bar = tqdm(disable=True)

    def fit(self) -> list[Summary]:
        """Evaluate, train, evaluate at the end; checkpoint where the runs stopped; one summary each."""
        self.bar = tqdm(total=self.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
                        disable=not (sys.stderr.isatty() if self.cfg.progress == "auto" else self.cfg.progress))
        handlers = self.catch_signals()
        outcome, error = Status.INTERRUPTED, None
        try:
            self.evaluate({r: record for r, record in self.live.items() if record.begin()})
            outcome = self.run_steps()
            self.end(outcome)
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once, the last checkpoints stay
            log.warning("interrupted at step %d", self.step)
            outcome = Status.INTERRUPTED
        except (checkpoint.CheckpointError, RunFailed, OSError) as e:
            log.error("%s", e)
            outcome, error = Status.FAILED, str(e)
        finally:
            self.bar.close()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        for r in list(self.live):
            self.conclude(r, outcome, error=error)
        if self.unwritten:
            raise RunFailed("; ".join(self.unwritten))
        return [record.summary for record in self.records]

    def run_steps(self) -> Status:
        """Step to max_steps (completed), until a signal (interrupted), or until every run has diverged."""
        single_process = not torch.distributed.is_initialized()
        window = Window()
        while self.step < self.max_steps and self.live:
            if self.stop_signal is not None and single_process:
                return Status.INTERRUPTED  # processes of a data-parallel run agree at a window's end
            lr = self.lr_at(self.step)
            x, y = self.batches()
            if probing := self.step_probes is not None and self.step_probes.due(self.step):
                self.step_probes.before_step()
            losses, logits = self.stepper.step(x, y, lr)
            if self.gradient_probe is not None and self.gradient_probe.due(self.step):
                measured = self.gradient_probe.measure(self.stepper)
                for r, record in self.live.items():
                    record.runlog.scalars(self.step + 1, measured[r])
            self.step += 1
            if probing:
                measured = self.step_probes.measure(self.step, in_layout(x[0], self.cfg.channels_last), y[0], lr)
                self.records[0].runlog.scalars(self.step, measured)
            window.add(losses, logits, y)
            if self.step % self.log_every == 0 or self.step in self.evaluate_at:
                if (stopped := self.end_window(window, lr)) is not None:
                    return stopped
                window = Window()
        return Status.COMPLETED

    def batches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every run's batch of this step, stacked: inputs [R, B, ...], labels [R, B]. A run that
        has diverged still gets one: its slot computes on, unread."""
        try:
            drawn = [record.data.next_batch(self.step) for record in self.records]
        except RunFailed:  # a training file that cannot be read: every step before this one is done
            self.save_checkpoints()
            raise
        if len(drawn) == 1:
            return drawn[0][0].unsqueeze(0), drawn[0][1].unsqueeze(0)
        return torch.stack([x for x, _ in drawn]), torch.stack([y for _, y in drawn])

    def end_window(self, window: Window, lr: float) -> Status | None:
        """Between two windows, in order: the divergence check, each run's training scalars, an
        evaluation when one is due, then a stop or a checkpoint. The processes of a data-parallel run
        agree on divergence, faults and stopping, so that no process is left waiting for the others.
        Returns how training ended, or None to go on."""
        losses, errors = window.close()
        finite = torch.isfinite(losses)
        *diverged, stopping = distributed.any_process([*(~finite.all(0)).tolist(), self.stop_signal is not None],
                                                     losses.device)
        for r in [r for r in self.live if diverged[r]]:  # here, or in another process (then: the window's last step)
            bad = (~finite[:, r]).nonzero()
            at = self.step - len(losses) + 1 + (int(bad[0]) if len(bad) else len(losses) - 1)
            log.warning("%s: the loss is not finite at step %d: diverged", self.records[r].dir, at)
            self.conclude(r, Status.DIVERGED, diverged_at=at)
        if not self.live:
            return None
        (loss, error) = distributed.mean_over_processes(torch.stack([losses.mean(0), errors])).tolist()
        steps_per_s = len(losses) / (time.perf_counter() - window.started)
        self.bar.update(len(losses))
        self.bar.set_postfix(loss=f"{sum(loss[r] for r in self.live) / len(self.live):.4f}",
                             test_acc=f"{sum(rec.history[-1][1] for rec in self.live.values()) / len(self.live):.4f}")
        failure = None
        try:
            self.log_evaluate_checkpoint(loss, error, lr, steps_per_s, checkpoint_due=not stopping)
        except (checkpoint.CheckpointError, RunFailed, OSError) as e:
            failure = e
        # A fault in one process of a data-parallel run (rank 0 writes) stops them all together.
        if distributed.any_process([failure is not None], losses.device)[0]:
            raise failure or RunFailed("another process of this data-parallel run failed (see rank 0's log)")
        if stopping:
            self.stop_signal = self.stop_signal or signal.SIGTERM  # another process was signalled
            return Status.INTERRUPTED
        return None

    def log_evaluate_checkpoint(self, loss: list[float], error: list[float], lr: float, steps_per_s: float,
                                checkpoint_due: bool) -> None:
        """The window's events for every live run: its training scalars, an evaluation when one is
        due, a checkpoint when one is due (a stopping run checkpoints in `end`)."""
        for r, record in self.live.items():
            record.log_window(self.step, loss[r], error[r], lr, steps_per_s)
        if self.step == self.max_steps:
            return  # the last evaluation and checkpoints are `end`'s
        if self.step in self.evaluate_at:
            self.evaluate(self.live)
        if checkpoint_due and self.checkpoint_every and self.step % self.checkpoint_every == 0:
            self.save_checkpoints()

    def end(self, outcome: Status) -> None:
        """After training: each completed run's last evaluation, then a checkpoint where the runs
        stopped (a requeued job resumes there). A run whose last checkpoint cannot be written fails."""
        if outcome is Status.COMPLETED:
            self.evaluate({r: record for r, record in self.live.items() if record.finalize_population(self.step)},
                          final=True)
        for r, record in list(self.live.items()):
            try:
                record.save_checkpoint(self.step)
            except checkpoint.CheckpointError as e:
                log.error("%s", e)
                self.conclude(r, Status.FAILED, error=str(e))

    def evaluate(self, records: dict[int, RunRecord], final: bool = False) -> None:
        """These runs' evaluations (records by their place in the stack; final: their last one): in one
        pass of the stack's wide network where the stepper has one and no record needs its own module
        for it (the variance shift reads each BN's input; a recurrent run's longer sequences run its
        cell), else each run on its own."""
        first = next(iter(records.values()), None)
        if first is None:
            return
        alone = first.variance_shift is not None or bool(first.longer_rows)
        wide = None if alone else self.stepper.inference_network(first.fold_bn)
        if wide is not None:
            evaluate_together(records, wide, len(self.records), self.step)
            return
        for record in records.values():
            (record.final_evaluation if final else record.evaluate)(self.step)

    def save_checkpoints(self) -> None:
        for record in self.live.values():
            record.save_checkpoint(self.step)

    def conclude(self, r: int, status: Status, diverged_at: int | None = None, error: str | None = None) -> None:
        """Run r has ended (or stopped): its summary, written last. A summary that cannot be written
        (a full disk, a vanished run dir) leaves the run without one, as an unfinished run, and
        `fit` raises RunFailed once every run has been concluded."""
        record = self.live.pop(r)
        stopped_by = signal.Signals(self.stop_signal).name if self.stop_signal is not None else None
        try:
            record.conclude(self.step, status, diverged_at, error, stopped_by)
        except OSError as e:
            log.error("%s: the summary could not be written (%s)", record.dir, e)
            self.unwritten.append(f"{record.dir} ended {status} at step {self.step}{f' ({error})' if error else ''}, "
                                  f"but its summary could not be written ({e})")

    def catch_signals(self) -> dict:
        """SIGTERM (Slurm preemption, torchrun) and Ctrl-C ask the runs to checkpoint and stop; a
        second one stops them at once."""
        def stop(signum, frame):
            if self.stop_signal is not None:
                raise KeyboardInterrupt
            self.stop_signal = signum
            log.warning("%s at step %d: checkpointing, then stopping", signal.Signals(signum).name, self.step)

        try:
            return {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        except ValueError:  # not the main thread: leave signals to whoever runs us
            return {}
