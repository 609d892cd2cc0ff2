"""From config to objects: the device, the optimizer, the learning-rate schedule, the evaluation
steps, the population statistics. Plain functions of the config, imported by the run
(bnexp/train.py), `bnexp finalize` and the benchmarks alike; none of them trains anything.
"""

from __future__ import annotations

import math
import os

import torch
from omegaconf import DictConfig

from bnexp import distributed


def prepare_process(trainer: DictConfig) -> torch.device:
    """The device to train on; CPU threads and deterministic kernels as the config asks."""
    if trainer.threads:  # else torch's default: every core, or the share a joblib worker was given
        torch.set_num_threads(trainer.threads)
    if trainer.deterministic:
        make_deterministic()
    return pick_device(trainer.device)


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


def make_optimizer(parameters, optim: DictConfig) -> torch.optim.Optimizer:
    lr, weight_decay = optim.lr * optim.lr_mult, optim.weight_decay * optim.weight_decay_mult
    if optim.name == "adam":
        return torch.optim.Adam(parameters, lr=lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=weight_decay)
    return torch.optim.SGD(parameters, lr=lr, momentum=optim.momentum, nesterov=optim.nesterov,
                           weight_decay=weight_decay)


def learning_rate(cfg: DictConfig):
    """lr(step): the initial learning rate times the schedule's factor, a pure function of the step."""
    base_lr, factor = cfg.optim.lr * cfg.optim.lr_mult, lr_factor(cfg.schedule)
    return lambda step: base_lr * factor(step)


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


def population_batches(norm: DictConfig) -> int:
    """How many training batches the paper's inference statistics (Algorithm 2) are computed over
    after the last step, replacing the moving averages; 0: keep the moving averages."""
    return norm.population_batches if norm.name == "batch_paper" and norm.inference == "population" else 0


def autocast(device: torch.device, amp: bool):
    """bf16 autocast where trainer.amp asks for it, for training steps and evaluation alike."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)


def in_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Images in the memory format the model was put in (channels_last when asked for)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
