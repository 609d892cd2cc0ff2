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
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bnexp import data as datasets
from bnexp import models
from bnexp.norm import batch_statistics_layers, finalize_population
from bnexp.probes import PercentileProbe
from bnexp.runlog import RunLog, flatten

log = logging.getLogger(__name__)

# What TensorBoard's HParams tab shows for each run (the whole config is in the run's config.yaml).
HPARAMS = ("name", "data.name", "model.name", "model.activation", "model.width", "norm.name", "optim.lr",
           "optim.lr_mult", "optim.momentum", "optim.weight_decay", "optim.weight_decay_mult", "schedule.name",
           "trainer.batch_size", "trainer.max_steps", "trainer.seed")


def run(cfg: DictConfig, run_dir: Path) -> dict:
    device = pick_device(cfg.trainer.device)
    torch.manual_seed(cfg.trainer.seed)
    data = datasets.build(cfg.data, cfg.trainer, device)
    model = models.build(cfg.model, cfg.norm, data.input_shape, data.num_classes).to(device)
    base_lr, factor = cfg.optim.lr * cfg.optim.lr_mult, lr_factor(cfg.schedule)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=base_lr,
        momentum=cfg.optim.momentum,
        nesterov=cfg.optim.nesterov,
        weight_decay=cfg.optim.weight_decay * cfg.optim.weight_decay_mult,
    )
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    config = flatten(OmegaConf.to_container(cfg, resolve=True))
    hyperparameters = {key: config[key] for key in HPARAMS if key in config}
    runlog = RunLog(run_dir, hyperparameters, list(model.probe_points()))
    log.info("run dir %s | %s on %s | %d parameters", run_dir, cfg.model.name, device,
             sum(p.numel() for p in model.parameters()))
    finalize = None
    if cfg.norm.name == "batch_paper" and cfg.norm.inference == "population":
        def finalize(step: int) -> None:
            batches = (data.next_batch(step + i)[0] for i in range(cfg.norm.population_batches))
            log.info("population statistics over %d training batches", finalize_population(model, batches))

    return Trainer(cfg.trainer, model, data, optimizer, lambda step: base_lr * factor(step), runlog, finalize).fit()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
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


def show_progress(setting) -> bool:
    return sys.stderr.isatty() if setting == "auto" else bool(setting)


class Trainer:
    def __init__(self, cfg: DictConfig, model, data, optimizer, lr_at, runlog: RunLog, finalize=None):
        """lr_at(step) is the learning rate of step `step` (0-based): the schedule as a pure function.
        finalize(step), if given, runs once after the last step, before the final evaluation."""
        self.cfg, self.model, self.data, self.finalize = cfg, model, data, finalize
        self.optimizer, self.lr_at, self.log = optimizer, lr_at, runlog
        # Speed flags, all off by default: bf16 autocast, NHWC memory layout, torch.compile.
        # Evaluation runs the uncompiled module, where the probe's hooks live.
        device_type = next(model.parameters()).device.type
        self.autocast = lambda: torch.autocast(device_type, dtype=torch.bfloat16, enabled=bool(cfg.amp))
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(model) if cfg.compile else model
        self.probe = PercentileProbe(model.probe_points(), cfg.probe_unit)
        self.batch_norms = batch_statistics_layers(model) if cfg.eval_batchstats else []
        self.step = 0
        self.history: list[tuple[int, float]] = []  # (step, test accuracy) at every evaluation

    def fit(self) -> dict:
        started, clock = datetime.now(timezone.utc), time.perf_counter()
        status, diverged_at = "interrupted", None
        self.bar = tqdm(total=self.cfg.max_steps, disable=not show_progress(self.cfg.progress),
                        unit="step", dynamic_ncols=True)
        try:
            self.evaluate()
            diverged_at = self.train()
            status = "completed" if diverged_at is None else "diverged"
        except KeyboardInterrupt:
            log.warning("interrupted at step %d", self.step)
        finally:
            self.bar.close()
        summary = self.summary(status, diverged_at, started, time.perf_counter() - clock)
        self.log.scalars(self.step, {f"summary/{k}": summary[k] for k in ("best_accuracy", "final_accuracy")
                                     if summary[k] is not None})
        self.log.finish(summary)
        return summary

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """Images in the memory format the model was put in (channels_last when asked for)."""
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x

    def train(self) -> int | None:
        """Step to max_steps; the step of the first non-finite loss if training diverges."""
        cfg, model = self.cfg, self.model
        model.train()
        # Kept on the device and reduced once per log window: no synchronisation per step.
        losses, logits_seen, labels_seen, lr = [], [], [], None
        window_start = time.perf_counter()
        # Plain ints: reading a DictConfig costs microseconds, too much for every step.
        max_steps, eval_every, log_every = int(cfg.max_steps), int(cfg.eval_every), int(cfg.log_every)
        while self.step < max_steps:
            if (step_lr := self.lr_at(self.step)) != lr:
                lr = step_lr
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
            x, y = self.data.next_batch(self.step)
            with self.autocast():
                logits = self.forward(self.layout(x))
                loss = F.cross_entropy(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            losses.append(loss.detach())
            logits_seen.append(logits.detach())
            labels_seen.append(y)

            evaluate_now = self.step % eval_every == 0 or self.step == max_steps
            if evaluate_now or self.step % log_every == 0:
                window = torch.stack(losses)
                finite = torch.isfinite(window)
                if not finite.all():
                    diverged_at = self.step - len(losses) + 1 + int((~finite).nonzero()[0])
                    log.warning("loss is not finite at step %d: diverged", diverged_at)
                    return diverged_at
                elapsed = time.perf_counter() - window_start
                mean_loss = window.mean().item()
                self.log.scalars(self.step, {
                    "train/loss": mean_loss,
                    "train/error": (torch.cat(logits_seen).argmax(1) != torch.cat(labels_seen)).float().mean().item(),
                    "opt/lr": lr,
                    "perf/steps_per_s": len(losses) / elapsed,
                })
                self.bar.update(len(losses))
                self.bar.set_postfix(loss=f"{mean_loss:.4f}", test_acc=f"{self.history[-1][1]:.4f}")
                losses, logits_seen, labels_seen = [], [], []
                if evaluate_now:
                    if self.step == max_steps and self.finalize is not None:
                        self.finalize(self.step)
                    self.evaluate()
                window_start = time.perf_counter()
        return None

    @torch.inference_mode()
    def evaluate(self) -> None:
        """Test-set accuracy of the inference network (eval mode: population statistics)."""
        self.model.eval()
        correct = loss_sum = n = 0
        with self.probe.recording():
            for x, y in self.data.eval_batches():
                with self.autocast():
                    logits = self.model(self.layout(x))
                loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()
                n += len(y)
        self.model.train()
        accuracy = correct.item() / n
        self.history.append((self.step, accuracy))
        batchstats = {"test/error_batchstats": self.error_with_batch_statistics()} if self.batch_norms else {}
        self.log.scalars(self.step, {
            "test/accuracy": accuracy,
            "test/error": 1 - accuracy,
            "test/loss": loss_sum.item() / n,
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

    def summary(self, status, diverged_at, started, wall_time) -> dict:
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
            # The first evaluated step at or above each target: resolution is trainer.eval_every.
            "steps_to_target": {str(t): next((s for s, a in history if a >= t), None) for t in self.cfg.targets},
            "wall_time_s": round(wall_time, 3),
            "steps_per_s": round(self.step / wall_time, 2) if wall_time > 0 else None,
            "started_at": started.isoformat(timespec="seconds"),
            "ended_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": str(next(self.model.parameters()).device),
            "torch": torch.__version__,
        }
