"""The step-based trainer: the paper counts steps, so steps are the unit of time everywhere.

`run(cfg, run_dir)` builds data, model and optimizer from the config and hands them to `Trainer`,
which knows nothing of which model or norm it trains. Each step draws a batch by indexing tensors
already on the device; training scalars stay on the device and are read once per `log_every`
steps, so logging costs no synchronisation per step. A non-finite loss ends the run as a result
(status "diverged" at the exact step), not as a crash.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bnexp import checkpoint, distributed, models
from bnexp import data as datasets
from bnexp.config import EXECUTION_SETTINGS, UserError, step_probes_on
from bnexp.norm import batch_statistics_layers, finalize_population
from bnexp.probes import PercentileProbe, StepProbes
from bnexp.runlog import NullLog, RunLog, flatten
from bnexp.summary import ENDED, SUMMARY, Status, Summary, ended, first_step_reaching, provenance

log = logging.getLogger(__name__)

# What TensorBoard's HParams tab shows for each run (the whole config is in the run's config.yaml).
HPARAMS = ("name", "data.name", "model.name", "model.activation", "model.width", "norm.name", "optim.lr",
           "optim.lr_mult", "optim.momentum", "optim.weight_decay", "optim.weight_decay_mult", "schedule.name",
           "trainer.batch_size", "trainer.max_steps", "trainer.seed")


def run(cfg: DictConfig, run_dir: Path) -> Summary | list[Summary]:
    """One run in run_dir; with trainer.replicas > 1, one run per seed, trained together (bnexp/replicas.py)."""
    if cfg.trainer.replicas > 1:
        from bnexp import replicas

        return replicas.run(cfg, run_dir)
    rank, world = distributed.rank_and_world()
    config = flatten(OmegaConf.to_container(cfg, resolve=True))
    if cfg.trainer.resume == "auto" and (done := ended(run_dir)):
        check_same_config(run_dir, config)
        log.info("%s already %s; nothing to do", run_dir, done["status"])
        return done
    device = prepare_process(cfg.trainer)
    torch.manual_seed(cfg.trainer.seed)
    data = datasets.build(cfg.data, cfg.trainer, device, shard=(rank, world))
    model = models.build(cfg.model, cfg.norm, data.input_shape, data.num_classes).to(device)
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    state = None
    if cfg.trainer.resume == "auto":
        state = checkpoint.load_latest(run_dir)
        if state is not None:
            check_same_config(run_dir, config)
            checkpoint.set_rng_states(state["rng"])  # every draw after this is the uninterrupted run's
    elif rank == 0:
        checkpoint.remove_all(run_dir)  # resume=never: this run starts over
    step_probes = StepProbes(cfg.probes, model) if step_probes_on(cfg.probes) else None
    runlog = open_runlog(cfg, run_dir, config, model, state, step_probes) if rank == 0 else NullLog()
    where = f"{device}" + (f" x {world} processes" if world > 1 else "")
    if device.type == "cpu":
        where += f" ({torch.get_num_threads()} threads)"
    log.info("run dir %s | %s on %s | %d parameters", run_dir, cfg.model.name, where,
             sum(p.numel() for p in model.parameters()))
    trainer = Trainer(cfg.trainer, model, data, optimizer, learning_rate(cfg), runlog,
                      population_batches=population_batches(cfg.norm), checkpoint_dir=run_dir if rank == 0 else None,
                      step_probes=step_probes)
    if state is not None:
        trainer.restore(state)
    return trainer.fit()


def prepare_process(trainer: DictConfig) -> torch.device:
    """The device to train on; CPU threads and deterministic kernels as the config asks."""
    if trainer.threads:  # else torch's default: every core, or the share a joblib worker was given
        torch.set_num_threads(trainer.threads)
    if trainer.deterministic:
        make_deterministic()
    return pick_device(trainer.device)


def make_optimizer(parameters, optim: DictConfig) -> torch.optim.SGD:
    return torch.optim.SGD(parameters, lr=optim.lr * optim.lr_mult, momentum=optim.momentum, nesterov=optim.nesterov,
                           weight_decay=optim.weight_decay * optim.weight_decay_mult)


def learning_rate(cfg: DictConfig):
    """lr(step): the initial learning rate times the schedule's factor, a pure function of the step."""
    base_lr, factor = cfg.optim.lr * cfg.optim.lr_mult, lr_factor(cfg.schedule)
    return lambda step: base_lr * factor(step)


def population_batches(norm: DictConfig) -> int:
    """How many training batches the paper's inference statistics (Algorithm 2) are computed over
    after the last step, replacing the moving averages; 0: keep the moving averages."""
    return norm.population_batches if norm.name == "batch_paper" and norm.inference == "population" else 0


def open_runlog(cfg: DictConfig, run_dir: Path, config: dict, model, state: dict | None,
                step_probes: StepProbes | None = None) -> RunLog:
    """The run dir's config.yaml (a resumed run keeps the one it was checked against) and its logs."""
    if state is None:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    (run_dir / SUMMARY).unlink(missing_ok=True)  # a resumed run is no longer finished
    hyperparameters = {key: config[key] for key in HPARAMS if key in config}
    return RunLog(run_dir, hyperparameters, list(model.probe_points()),
                  resume_step=None if state is None else state["step"],
                  ics_layers=list(step_probes.layers) if step_probes else [],
                  landscape=bool(step_probes and step_probes.landscape_every))


def check_same_config(run_dir: Path, config: dict) -> None:
    """Refuse to continue a run dir made with a different config: its steps would mix two experiments."""
    if not (run_dir / "config.yaml").is_file():
        return
    saved = flatten(OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")))
    changed = sorted(k for k in saved.keys() | config.keys()
                     if k not in EXECUTION_SETTINGS and saved.get(k) != config.get(k))
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in changed[:5])
        raise UserError(f"{run_dir} holds a run with a different config ({diff}); refusing to "
                        "resume it. Use the run's own overrides, another run dir, or trainer.resume=never.")


def make_deterministic() -> None:
    """Deterministic kernels only (an error where an op has none), cuDNN without autotuning."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", distributed.local_rank())  # one GPU per process under torchrun
    return torch.device(name)


def lr_factor(cfg: DictConfig):
    """The schedule as a multiplier of the initial learning rate, a function of the step."""
    if cfg.name == "constant":
        return lambda step: 1.0
    if cfg.name == "exponential":
        # Plain numbers: this runs every step, and reading a DictConfig costs microseconds.
        rate, every, staircase = float(cfg.decay_rate), cfg.decay_steps / cfg.speedup, bool(cfg.staircase)

        def exponential(step: int) -> float:
            return rate ** (math.floor(step / every) if staircase else step / every)

        return exponential
    raise ValueError(f"unknown schedule.name {cfg.name!r}")


def evaluation_steps(cfg: DictConfig) -> frozenset[int]:
    """The steps after which the test set is evaluated: 0, max_steps, and between them every
    eval_every steps, or geometrically from eval_first on, each step at most eval_ratio times the
    one before (whole steps: every step while that ratio is less than one step). A pure function
    of the config, so a resumed run evaluates where the uninterrupted run does."""
    last = int(cfg.max_steps)
    if cfg.eval_schedule == "every":
        steps = set(range(int(cfg.eval_every), last, int(cfg.eval_every)))
    else:
        steps, step = set(), int(cfg.eval_first)
        while step < last:
            steps.add(step)
            step = max(math.floor(step * float(cfg.eval_ratio)), step + 1)
    return frozenset(steps | {0, last})


def show_progress(setting) -> bool:
    return sys.stderr.isatty() if setting == "auto" else bool(setting)


@torch.inference_mode()
def test_metrics(model, data, layout=lambda x: x) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the inference network (eval mode) on the test set."""
    model.eval()
    correct = loss_sum = n = 0
    for x, y in data.eval_batches():
        logits = model(layout(x))
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        n += len(y)
    model.train()
    return correct.item() / n, loss_sum.item() / n


class Window:
    """The training steps since the last log: kept on the device, read once when the window ends.
    A replicated run adds all replicas' steps at once (losses [R], logits [R, B, C], labels [R, B])."""

    def __init__(self):
        self.losses, self.logits, self.labels = [], [], []
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.losses.append(loss.detach())
        self.logits.append(logits.detach())
        self.labels.append(labels)

    def close(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss of every step, the training error over the window); with replicas, the losses
        are [steps, R] and the errors [R]."""
        wrong = torch.stack(self.logits).argmax(-1) != torch.stack(self.labels)
        return torch.stack(self.losses), wrong.float().mean((0, -1))


class Trainer:
    def __init__(self, cfg: DictConfig, model, data, optimizer, lr_at, runlog, population_batches=0,
                 checkpoint_dir=None, step_probes: StepProbes | None = None):
        """lr_at(step) is the learning rate of step `step` (0-based): the schedule as a pure function.
        population_batches: if > 0, the BN layers' population statistics are computed over that many
        training batches after the last step (`finish`). checkpoint_dir: where checkpoints go (None:
        this process does not write them). step_probes: the ICS and landscape probes, if any."""
        self.cfg, self.model, self.data, self.population_batches = cfg, model, data, population_batches
        self.optimizer, self.lr_at, self.log, self.checkpoint_dir = optimizer, lr_at, runlog, checkpoint_dir
        # Plain ints: reading a DictConfig costs microseconds, too much for every step.
        self.max_steps, self.log_every = int(cfg.max_steps), int(cfg.log_every)
        self.checkpoint_every = int(cfg.checkpoint_every)
        self.evaluate_at = evaluation_steps(cfg)
        self.device = next(model.parameters()).device
        # Speed flags, all off by default: bf16 autocast, NHWC memory layout, torch.compile.
        # Evaluation runs the uncompiled, unwrapped module, where the probe's hooks live.
        self.autocast = lambda: torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bool(cfg.amp))
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.forward = model
        if torch.distributed.is_initialized():
            from torch.nn.parallel import DistributedDataParallel

            on_gpu = self.device.type == "cuda"
            self.forward = DistributedDataParallel(model, device_ids=[self.device] if on_gpu else None)
        if cfg.compile:
            self.forward = torch.compile(self.forward)
        self.probe = PercentileProbe(model.probe_points(), cfg.probe_unit)
        self.step_probes = step_probes
        self.batch_norms = batch_statistics_layers(model) if cfg.eval_batchstats else []
        self.step = self.saved_step = 0
        self.history: list[tuple[int, float]] = []  # (step, test accuracy) at every evaluation
        self.stop_signal: int | None = None  # set by SIGTERM/SIGINT: checkpoint, then stop
        self.elapsed_before, self.started = 0.0, datetime.now(timezone.utc)  # earlier segments of a resumed run
        self.eval_time = 0.0  # seconds spent evaluating, over all segments (a study's cost is stated with it)
        self.clock = time.perf_counter()  # this segment's start (begin sets it again)
        self.bar = tqdm(disable=True)  # fit's progress bar (a replicated run draws one for all replicas)
        self.code = provenance()  # the code that trains this segment, for the summary

    def state(self) -> dict:
        """What a resumed run needs besides the config (checkpoint.save adds the step and RNG states)."""
        # Copies: a replica's tensors are views of the stacked ones, which torch.save would write whole.
        model = {name: tensor.clone() for name, tensor in self.model.state_dict().items()}
        return {"model": model, "optimizer": self.optimizer.state_dict(), "history": self.history,
                "elapsed": self.elapsed_before + time.perf_counter() - self.clock, "started": self.started,
                "eval_time": self.eval_time}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = self.saved_step = state["step"]
        self.history, self.elapsed_before, self.started = state["history"], state["elapsed"], state["started"]
        self.eval_time = state.get("eval_time", 0.0)  # absent from checkpoints written before it was kept

    def save_checkpoint(self) -> None:
        if self.checkpoint_dir is not None and self.saved_step != self.step:
            checkpoint.save(self.checkpoint_dir, self.step, self.state())
        self.saved_step = self.step

    def fit(self) -> Summary:
        """Evaluate, train, finish; checkpoint where the run stopped; write the summary."""
        self.bar = tqdm(total=self.max_steps, initial=self.step, disable=not show_progress(self.cfg.progress),
                        unit="step", dynamic_ncols=True)
        handlers = self.catch_signals()
        status, diverged_at, error = Status.INTERRUPTED, None, None
        try:
            self.begin()
            outcome, diverged_at = self.train()
            self.end(outcome)
            status = outcome
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once, the last checkpoint stays
            log.warning("interrupted at step %d", self.step)
        except checkpoint.CheckpointError as e:
            log.error("%s", e)
            status, error = Status.FAILED, str(e)
        finally:
            self.bar.close()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        return self.conclude(status, diverged_at, error)

    def begin(self) -> None:
        """Start this segment's clock; a fresh run evaluates at step 0 (a resumed one has, up to its checkpoint)."""
        self.clock = time.perf_counter()
        if not self.history:
            self.evaluate()

    def end(self, outcome: Status) -> None:
        """After training: a completed run's final evaluation; a checkpoint where the run stopped (a
        requeue resumes there), except after divergence."""
        if outcome is Status.COMPLETED:
            self.finish()
        if outcome is not Status.DIVERGED:
            self.save_checkpoint()

    def conclude(self, status: Status, diverged_at: int | None, error: str | None) -> Summary:
        """The summary, written last: the run has ended (or stopped) with `status`."""
        summary = self.summary(status, diverged_at, time.perf_counter() - self.clock)
        if error:
            summary["error"] = error
        if self.stop_signal is not None:
            summary["stopped_by"] = signal.Signals(self.stop_signal).name
        if status in ENDED:  # a stopped run's resumption logs them when it ends; logged now, they would stay
            self.log.scalars(self.step, {f"summary/{k}": summary[k] for k in ("best_accuracy", "final_accuracy")
                                         if summary[k] is not None})
        self.log.finish(summary)
        return summary

    def catch_signals(self) -> dict:
        """SIGTERM (Slurm preemption, torchrun) and Ctrl-C ask the run to checkpoint and stop; a second
        one stops it at once."""
        def stop(signum, frame):
            if self.stop_signal is not None:
                raise KeyboardInterrupt
            self.stop_signal = signum
            log.warning("%s at step %d: checkpointing, then stopping", signal.Signals(signum).name, self.step)

        try:
            return {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        except ValueError:  # not the main thread: leave signals to whoever runs us
            return {}

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """Images in the memory format the model was put in (channels_last when asked for)."""
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x

    def train(self) -> tuple[Status, int | None]:
        """Step to max_steps (completed), until a signal (interrupted), or to the first non-finite loss
        (diverged, at that step)."""
        self.model.train()
        single_process = not torch.distributed.is_initialized()
        window, lr = Window(), None
        while self.step < self.max_steps:
            if self.stop_signal is not None and single_process:
                return Status.INTERRUPTED, None  # processes of a data-parallel run agree at a window's end
            if (step_lr := self.lr_at(self.step)) != lr:
                lr = step_lr
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
            x, y = self.data.next_batch(self.step)
            x = self.layout(x)
            if probing := self.step_probes is not None and self.step_probes.due(self.step):
                self.step_probes.before_step()
            with self.autocast():
                logits = self.forward(x)
                loss = F.cross_entropy(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            if probing:
                self.log.scalars(self.step, self.step_probes.measure(self.step, x, y, lr))
            window.add(loss, logits, y)
            if self.step % self.log_every == 0 or self.step in self.evaluate_at:
                if (ended_here := self.end_window(*window.close(), window.started, lr)) is not None:
                    return ended_here
                window = Window()
        return Status.COMPLETED, None

    def end_window(self, losses: torch.Tensor, error: torch.Tensor, started: float,
                   lr: float) -> tuple[Status, int | None] | None:
        """Between two windows, in order: the divergence check, the window's training scalars, an
        evaluation when one is due, then a stop or a checkpoint. The processes of a data-parallel run
        agree on divergence and stopping, so that no process is left waiting for the others.
        Returns how training ended, or None to go on."""
        finite = torch.isfinite(losses)
        diverged_here = not finite.all()
        diverged, stopping = distributed.any_process([diverged_here, self.stop_signal is not None], self.device)
        if diverged:  # here, or in another process (then: this window's last step)
            first = int((~finite).nonzero()[0]) if diverged_here else len(losses) - 1
            diverged_at = self.step - len(losses) + 1 + first
            log.warning("loss is not finite at step %d: diverged", diverged_at)
            return Status.DIVERGED, diverged_at
        mean_loss, error = distributed.mean_over_processes(torch.stack([losses.mean(), error])).tolist()
        self.log.scalars(self.step, {
            "train/loss": mean_loss,
            "train/error": error,
            "opt/lr": lr,
            "perf/steps_per_s": len(losses) / (time.perf_counter() - started),
        })
        self.bar.update(len(losses))
        self.bar.set_postfix(loss=f"{mean_loss:.4f}", test_acc=f"{self.history[-1][1]:.4f}")
        if self.step == self.max_steps:
            return None  # the last evaluation and checkpoint are fit's, after `finish`
        if self.step in self.evaluate_at:
            self.evaluate()
        if stopping:
            self.stop_signal = self.stop_signal or signal.SIGTERM  # another process was signalled
            return Status.INTERRUPTED, None
        if self.checkpoint_every and self.step % self.checkpoint_every == 0:
            self.save_checkpoint()
        return None

    def finish(self) -> None:
        """After the last step: the paper's population statistics where asked for, then the final evaluation."""
        if self.history[-1][0] == self.step:
            return  # done before: a run resumed from its final checkpoint
        if self.population_batches:
            batches = (self.data.next_batch(self.step + i)[0] for i in range(self.population_batches))
            log.info("population statistics over %d training batches", finalize_population(self.model, batches))
        self.evaluate()

    def evaluate(self) -> None:
        """Test-set accuracy of the inference network (eval mode: population statistics)."""
        started = time.perf_counter()
        with self.probe.recording(), self.autocast():
            accuracy, loss = test_metrics(self.model, self.data, self.layout)
        self.history.append((self.step, accuracy))
        batchstats = {"test/error_batchstats": self.error_with_batch_statistics()} if self.batch_norms else {}
        self.eval_time += time.perf_counter() - started
        self.log.scalars(self.step, {
            "test/accuracy": accuracy,
            "test/error": 1 - accuracy,
            "test/loss": loss,
            **batchstats,
            **self.probe.percentiles(),
        })

    @torch.inference_mode()
    def error_with_batch_statistics(self) -> float:
        """Test error when BN normalizes each test batch (of the training batch size) with its own
        statistics, as in training: beside test/error it shows the train/inference gap. The running
        statistics are restored afterwards; a last partial batch is left out."""
        saved = [{k: b.clone() for k, b in m.named_buffers()} for m in self.batch_norms]
        self.model.eval()
        for m in self.batch_norms:
            m.train()
        size, wrong, n = int(self.cfg.batch_size), 0, 0
        for x, y in self.data.eval_batches():
            for xb, yb in zip(x.split(size), y.split(size), strict=True):
                if len(yb) == size:
                    with self.autocast():
                        wrong += (self.model(self.layout(xb)).argmax(1) != yb).sum()
                    n += size
        for m, buffers in zip(self.batch_norms, saved, strict=True):
            for k, b in m.named_buffers():
                b.copy_(buffers[k])
        self.model.train()
        return (wrong / max(n, 1)).item()

    def summary(self, status: Status, diverged_at: int | None, wall_time: float) -> Summary:
        history = self.history
        best_step, best = max(history, key=lambda h: (h[1], -h[0])) if history else (None, None)
        final_step, final = history[-1] if history else (None, None)
        return {
            "status": status,
            "steps": self.step,
            "max_steps": self.cfg.max_steps,
            "diverged_at_step": diverged_at,
            "final_accuracy": final,
            "final_error": None if final is None else 1 - final,
            "final_step": final_step,
            "best_accuracy": best,
            "best_error": None if best is None else 1 - best,
            "best_step": best_step,
            # The first evaluated step at or above each target: as precise as the evaluation schedule.
            "steps_to_target": {str(t): first_step_reaching(history, t) for t in self.cfg.targets},
            "wall_time_s": round(self.elapsed_before + wall_time, 3),  # over all segments of a resumed run
            "steps_per_s": round(self.step / (self.elapsed_before + wall_time), 2) if wall_time > 0 else None,
            "eval_time_s": round(self.eval_time, 3),  # the part of wall_time_s spent evaluating
            "started_at": self.started.isoformat(timespec="seconds"),
            "ended_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": str(next(self.model.parameters()).device),
            "torch": torch.__version__,
            **self.code,
        }
