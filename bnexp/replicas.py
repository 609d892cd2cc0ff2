"""Replicas: the runs of seeds seed .. seed+R-1 of one config, trained together as one computation.

Small networks train at a rate set by per-operation overhead, not arithmetic; stacking R copies of
the network along a new leading dimension (torch.func.vmap over their stacked parameters) pays that
overhead once per step for all of them. Each replica is still a normal run:

- its own model (initialised from its seed exactly as the run alone would be), batches and
  augmentation (pure functions of its seed and the step), BN statistics (stacked, never pooled);
- its own run dir, RUN_DIR/seed_<seed>, written by its own `Trainer` (evaluation, probes, logs,
  checkpoints in the single-run format, summary.json), so report, TensorBoard, resume and finalize
  read it as any other run. Its module's parameters and buffers are views of the stacked tensors,
  so evaluation runs the plain module and sees every update;
- a replica whose loss becomes non-finite ends as diverged at its step; the others go on (the
  replicas' computations never mix, so theirs are unchanged).

The stacked optimizer is SGD over the stacked parameters: elementwise, so each replica's update is
the one its run alone would make. Results equal the runs alone to float tolerance, not bitwise:
batched kernels sum in another order. `bnexp resume RUN_DIR` continues every unfinished replica;
`bnexp resume RUN_DIR/seed_<s>` continues one of them alone.
"""

from __future__ import annotations

import copy
import logging
import signal
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm import tqdm

from bnexp import checkpoint, models
from bnexp import data as datasets
from bnexp.runlog import flatten
from bnexp.summary import Status, Summary, ended
from bnexp.train import (
    Trainer,
    Window,
    check_same_config,
    learning_rate,
    make_optimizer,
    open_runlog,
    population_batches,
    prepare_process,
    show_progress,
)

log = logging.getLogger(__name__)


def replica_dir(run_dir: Path, seed: int) -> Path:
    return Path(run_dir) / f"seed_{seed}"


def replica_dirs(run_dir: Path) -> list[Path]:
    """The replicas' run dirs inside a replicated run's dir (none for a run of one seed)."""
    return sorted((p for p in Path(run_dir).glob("seed_*") if (p / "config.yaml").is_file()),
                  key=lambda p: int(p.name.split("_")[1]))


def run(cfg: DictConfig, run_dir: Path) -> list[Summary]:
    """Train the seeds of trainer.replicas together; one summary per replica, in seed order."""
    seeds = range(cfg.trainer.seed, cfg.trainer.seed + cfg.trainer.replicas)
    configs = {s: replica_config(cfg, s) for s in seeds}
    dirs = {s: replica_dir(run_dir, s) for s in seeds}
    summaries: dict[int, Summary] = {}
    for s in seeds:
        dirs[s].mkdir(parents=True, exist_ok=True)
        if cfg.trainer.resume == "auto" and (done := ended(dirs[s])):
            check_same_config(dirs[s], flatten(OmegaConf.to_container(configs[s], resolve=True)))
            summaries[s] = done
    todo = [s for s in seeds if s not in summaries]
    if summaries:
        log.info("%d of %d replicas have ended already", len(summaries), len(seeds))
    if todo:
        for s, summary in zip(todo, train(cfg, configs, dirs, todo, run_dir), strict=True):
            summaries[s] = summary
    return [summaries[s] for s in seeds]


def replica_config(cfg: DictConfig, seed: int) -> DictConfig:
    """The config of one replica: its own seed; trainer.replicas records how it was trained."""
    one = copy.deepcopy(cfg)
    one.trainer.seed = seed
    return one


def train(cfg: DictConfig, configs: dict, dirs: dict, seeds: list[int], run_dir: Path) -> list[Summary]:
    device = prepare_process(cfg.trainer)
    data = datasets.build(cfg.data, cfg.trainer, device)  # one copy, batched per replica by its seed
    replica_models = []
    for s in seeds:
        torch.manual_seed(s)  # as the run of seed s alone: its initial weights
        replica_models.append(models.build(cfg.model, cfg.norm, data.input_shape, data.num_classes).to(device))
    states = resume_states(cfg, configs, dirs, seeds)
    stack = Stack(replica_models)
    optimizer = make_optimizer(stack.params.values(), cfg.optim)
    overrides = run_overrides(run_dir)
    trainers = []
    for i, (s, model) in enumerate(zip(seeds, replica_models, strict=True)):
        config = flatten(OmegaConf.to_container(configs[s], resolve=True))
        write_overrides(dirs[s], overrides, s)
        runlog = open_runlog(configs[s], dirs[s], config, model, states[i])
        trainer = Trainer(configs[s].trainer, model, data.reseeded(s), ReplicaOptimizer(optimizer, i),
                          learning_rate(cfg), runlog, population_batches=population_batches(cfg.norm),
                          checkpoint_dir=dirs[s])
        if states[i] is not None:
            trainer.restore(states[i])
        trainers.append(trainer)
    where = f"{device}" + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else "")
    log.info("run dir %s | %s x %d replicas (seeds %s) on %s | %d parameters each", run_dir, cfg.model.name,
             len(seeds), ", ".join(map(str, seeds)), where, sum(p.numel() for p in replica_models[0].parameters()))
    return ReplicatedTraining(cfg.trainer, stack, optimizer, trainers).fit()


def resume_states(cfg: DictConfig, configs: dict, dirs: dict, seeds: list[int]) -> list[dict | None]:
    """Each replica's checkpoint at one common step (the newest every replica has), or None for all:
    replicas train in lockstep, so they continue from the same step."""
    if cfg.trainer.resume == "never":
        for s in seeds:
            checkpoint.remove_all(dirs[s])
        return [None] * len(seeds)
    newest = [checkpoint.load_latest(dirs[s]) for s in seeds]
    if any(state is None for state in newest):
        if any(state is not None for state in newest):
            log.warning("some replicas have no checkpoint: all start from step 0")
            for s in seeds:
                checkpoint.remove_all(dirs[s])
        return [None] * len(seeds)
    common = min(state["step"] for state in newest)
    states = [state if state["step"] == common else checkpoint.load_latest(dirs[s], at_most=common)
              for s, state in zip(seeds, newest, strict=True)]
    if any(state is None for state in states):
        raise checkpoint.CheckpointError(f"the replicas have no checkpoint in common at or before step {common}")
    for s in seeds:
        check_same_config(dirs[s], flatten(OmegaConf.to_container(configs[s], resolve=True)))
    return states


def run_overrides(run_dir: Path) -> list[str]:
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    return list(OmegaConf.load(path)) if path.is_file() else []


def write_overrides(replica: Path, overrides: list[str], seed: int) -> None:
    """The replica's own .hydra/overrides.yaml: `bnexp resume RUN_DIR/seed_<s>` continues it alone."""
    own = [o for o in overrides if o.split("=")[0].lstrip("+~") not in ("trainer.seed", "trainer.replicas")]
    (replica / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(OmegaConf.create([*own, f"trainer.seed={seed}", "trainer.replicas=1"]),
                   replica / ".hydra" / "overrides.yaml")


class Stack:
    """R modules of one architecture as stacked tensors, [R, ...] each, computed in one vmapped call.
    The modules keep working on their own: their parameters and buffers become views of the stacks."""

    def __init__(self, modules: list[nn.Module]):
        self.params, self.buffers = stack_module_state(modules)  # parameters: leaves that require grad
        self.base = copy.deepcopy(modules[0]).to("meta").train()  # the architecture, without tensors
        for r, module in enumerate(modules):
            for name, stacked in self.params.items():
                owner, attr = _owner(module, name)
                owner._parameters[attr] = nn.Parameter(stacked[r].detach(), requires_grad=False)
            for name, stacked in self.buffers.items():
                owner, attr = _owner(module, name)
                owner._buffers[attr] = stacked[r]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each replica's mean cross-entropy on its batch, [R], and its logits, [R, B, C]."""

        def one(params, buffers, x, y):
            logits = functional_call(self.base, (params, buffers), (x,))
            return F.cross_entropy(logits.float(), y), logits

        return vmap(one)(self.params, self.buffers, x, y)


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (module.get_submodule(path) if path else module), attr


class ReplicaOptimizer:
    """Replica r's part of the stacked optimizer, as its checkpoints hold it: the state_dict that
    torch.optim.SGD over that replica's own parameters would have."""

    def __init__(self, stacked: torch.optim.SGD, r: int):
        self.stacked, self.r = stacked, r

    def state_dict(self) -> dict:
        full = self.stacked.state_dict()
        state = {i: {k: v[self.r].clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                 for i, s in full["state"].items()}
        return {"state": state, "param_groups": full["param_groups"]}

    @torch.no_grad()
    def load_state_dict(self, saved: dict) -> None:
        params = self.stacked.param_groups[0]["params"]
        for i, s in saved["state"].items():
            for k, v in s.items():
                if isinstance(v, torch.Tensor):
                    own = self.stacked.state[params[int(i)]]
                    if k not in own:
                        own[k] = torch.zeros_like(params[int(i)])
                    own[k][self.r].copy_(v)


class ReplicatedTraining:
    """The step loop of a replicated run: one batched step for all replicas, then each replica's own
    Trainer ends the log window (divergence, logging, evaluation, checkpoint) as a run alone does."""

    def __init__(self, cfg: DictConfig, stack: Stack, optimizer: torch.optim.SGD, trainers: list[Trainer]):
        self.cfg, self.stack, self.optimizer, self.trainers = cfg, stack, optimizer, trainers
        self.max_steps, self.log_every = int(cfg.max_steps), int(cfg.log_every)
        self.step = trainers[0].step  # replicas resume from one common step
        self.autocast = trainers[0].autocast
        self.evaluate_at = trainers[0].evaluate_at
        self.lr_at = trainers[0].lr_at
        # torch.compile fuses the vmapped step's layout copies and small ops: ~1.6-1.9x on a CPU.
        self.forward = torch.compile(stack.forward) if cfg.compile else stack.forward
        self.stop_signal: int | None = None
        self.summaries: dict[int, Summary] = {}  # replica index -> summary, as each ends

    def fit(self) -> list[Summary]:
        bar = tqdm(total=self.max_steps, initial=self.step, disable=not show_progress(self.cfg.progress),
                   unit="step", dynamic_ncols=True)
        handlers = {s: signal.signal(s, self.stop) for s in (signal.SIGTERM, signal.SIGINT)}
        outcome = None
        try:
            for trainer in self.trainers:
                trainer.begin()
            outcome = self.train(bar)
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once, the last checkpoints stay
            log.warning("interrupted at step %d", self.step)
        finally:
            bar.close()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        for r, trainer in enumerate(self.trainers):
            if r not in self.summaries:
                trainer.step = self.step
                self.summaries[r] = (self.end(trainer, outcome) if outcome is not None
                                     else trainer.conclude(Status.INTERRUPTED, None, None))
        return [self.summaries[r] for r in range(len(self.trainers))]

    def stop(self, signum, frame) -> None:
        if self.stop_signal is not None:
            raise KeyboardInterrupt
        self.stop_signal = signum
        for trainer in self.trainers:
            trainer.stop_signal = signum
        log.warning("%s at step %d: checkpointing every replica, then stopping", signal.Signals(signum).name,
                    self.step)

    @staticmethod
    def end(trainer: Trainer, outcome: Status) -> Summary:
        """A replica that trained to the end or was stopped: its last evaluation, checkpoint, summary."""
        try:
            trainer.end(outcome)
        except KeyboardInterrupt:
            return trainer.conclude(Status.INTERRUPTED, None, None)
        except checkpoint.CheckpointError as e:
            log.error("%s", e)
            return trainer.conclude(Status.FAILED, None, str(e))
        return trainer.conclude(outcome, None, None)

    def train(self, bar: tqdm) -> Status:
        """Step all replicas to max_steps (completed) or until a signal (interrupted); a replica whose
        loss is not finite ends there, as diverged, and the others go on."""
        window, lr = Window(), None
        while self.step < self.max_steps:
            if self.stop_signal is not None:
                return Status.INTERRUPTED
            if (step_lr := self.lr_at(self.step)) != lr:
                lr = step_lr
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
            batches = [trainer.data.next_batch(self.step) for trainer in self.trainers]
            x, y = torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])
            with self.autocast():
                losses, logits = self.forward(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # replica r's gradient is its own loss's: the replicas never mix
            self.optimizer.step()
            self.step += 1
            window.add(losses, logits, y)
            if self.step % self.log_every == 0 or self.step in self.evaluate_at:
                self.end_window(window, lr)
                bar.update(len(window.losses))
                window = Window()
                if len(self.summaries) == len(self.trainers):
                    break  # every replica has diverged
        return Status.COMPLETED

    def end_window(self, window: Window, lr: float) -> None:
        losses, errors = window.close()
        for r, trainer in enumerate(self.trainers):
            if r in self.summaries:
                continue  # diverged before: its slot computes on, unread
            trainer.step = self.step
            ended_here = trainer.end_window(losses[:, r], errors[r], window.started, lr)
            if ended_here is not None and ended_here[0] is Status.DIVERGED:
                self.summaries[r] = trainer.conclude(Status.DIVERGED, ended_here[1], None)
