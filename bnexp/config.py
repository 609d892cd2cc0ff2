"""Configuration checks: the one place where bad input becomes one clear error line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

DEVICES = ("auto", "cpu", "cuda")
ACTIVATIONS = ("sigmoid", "relu")
STEMS = ("auto", "imagenet", "small")
BATCH_NORMS = ("batch", "batch_paper", "batch_renorm", "ghost")  # those that use batch statistics


class UserError(CompactHydraException):
    """A mistake in the user's input: Hydra prints the message alone, without a traceback."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(f"bnexp: error: {message}")


def validate(cfg: DictConfig) -> None:
    """Reject configurations that cannot produce a meaningful run, before any training starts."""
    t, o = cfg.trainer, cfg.optim
    world = int(os.environ.get("WORLD_SIZE", 1))  # processes of a data-parallel run (torchrun)
    _require(t.max_steps > 0, f"trainer.max_steps must be > 0, got {t.max_steps}")
    _require(t.batch_size > 0, f"trainer.batch_size must be > 0, got {t.batch_size}")
    _require(t.eval_every > 0, f"trainer.eval_every must be > 0, got {t.eval_every}")
    _require(t.log_every > 0, f"trainer.log_every must be > 0, got {t.log_every}")
    _require(t.eval_batch_size > 0, f"trainer.eval_batch_size must be > 0, got {t.eval_batch_size}")
    _require(t.device in DEVICES, f"trainer.device must be one of {DEVICES}, got {t.device!r}")
    _require(
        all(0 < a <= 1 for a in t.targets),
        f"trainer.targets are accuracies in (0, 1], got {list(t.targets)}",
    )
    _require(t.checkpoint_every >= 0 and t.checkpoint_every % t.log_every == 0,
             f"trainer.checkpoint_every must be a multiple of trainer.log_every ({t.log_every}) or 0, "
             f"got {t.checkpoint_every}")
    _require(t.resume in ("auto", "never"), f"trainer.resume must be auto or never, got {t.resume!r}")
    _require(t.threads is None or t.threads > 0, f"trainer.threads must be > 0 or null, got {t.threads}")
    _require(t.batch_size % world == 0,
             f"trainer.batch_size={t.batch_size} cannot be split among {world} processes; each process takes "
             "an equal part of every batch, so use a multiple of the process count")
    _require(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    _require(o.lr_mult > 0, f"optim.lr_mult must be > 0, got {o.lr_mult}")
    _require(o.momentum >= 0, f"optim.momentum must be >= 0, got {o.momentum}")
    _require(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _require(o.weight_decay_mult >= 0, f"optim.weight_decay_mult must be >= 0, got {o.weight_decay_mult}")
    _require(cfg.data.get("distort", 0) >= 0 and cfg.data.get("distort_mult", 1) >= 0,
             "data.distort and data.distort_mult must be >= 0")
    if cfg.norm.name in BATCH_NORMS:
        # With one example per batch, BN's variance is 0 and every output is beta: nothing to learn.
        normalized_together = t.batch_size if cfg.norm.get("sync", False) else t.batch_size // world
        _require(
            normalized_together > 1,
            f"norm={cfg.norm.name} needs more than one example per batch{' and process' * (world > 1)} "
            f"(trainer.batch_size={t.batch_size}: batch statistics of one example are degenerate); "
            "use norm=none, layer or group for batch size 1" + (", or norm.sync=true" * (world > 1)),
        )
        momentum = cfg.norm.get("momentum", 0.1)  # batch_renorm has a rate instead
        _require(0 <= momentum <= 1, f"norm.momentum must be in [0, 1], got {momentum}")
    if cfg.norm.name != "none":
        _require(cfg.norm.eps > 0, f"norm.eps must be > 0, got {cfg.norm.eps}")
    if cfg.norm.name == "ghost":
        _require(cfg.norm.virtual_batch > 1, f"norm.virtual_batch must be > 1, got {cfg.norm.virtual_batch}")
    m = cfg.model
    _require(m.activation in ACTIVATIONS, f"model.activation must be one of {ACTIVATIONS}, got {m.activation!r}")
    if m.name == "mlp":
        _require(m.init_std > 0, f"model.init_std must be > 0, got {m.init_std}")
    if m.name == "inception":
        _require(m.width > 0, f"model.width must be > 0, got {m.width}")
        _require(0 <= m.dropout < 1, f"model.dropout must be in [0, 1), got {m.dropout}")
        _require(m.stem in STEMS, f"model.stem must be one of {STEMS}, got {m.stem!r}")
    if cfg.schedule.name == "exponential":
        _require(0 < cfg.schedule.decay_rate <= 1, "schedule.decay_rate must be in (0, 1]")
        _require(cfg.schedule.decay_steps > 0, "schedule.decay_steps must be > 0")
        _require(cfg.schedule.speedup > 0, "schedule.speedup must be > 0")
    _require(not o.nesterov or o.momentum > 0, "optim.nesterov=true needs optim.momentum > 0")
    _require(t.device != "cuda" or _cuda_available(), "trainer.device=cuda but no CUDA device is available")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_writable(directory: str) -> None:
    """Fail early, with one line, when the run directory cannot be created or written."""
    path = Path(directory)
    existing = next(p for p in [path, *path.parents] if p.exists())
    _require(existing.is_dir(), f"output directory {directory}: {existing} is not a directory")
    _require(
        os.access(existing, os.W_OK | os.X_OK),
        f"output directory {directory} is not writable (no write permission on {existing}); "
        "set runs_root=... or $BNEXP_RUNS",
    )


class CheckOutputDir(Callback):
    """Hydra creates the run directory before the job starts: check that it can, and say so if not.

    Hydra turns exceptions in callbacks into warnings, so a refusal exits here with one line.
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.sweep.dir)

    @staticmethod
    def _check(directory: str) -> None:
        try:
            check_writable(directory)
        except UserError as e:
            print(e, file=sys.stderr)
            sys.exit(2)


class ListSweepOutcomes(Callback):
    """At the end of a sweep, one line per job that did not complete (failed, interrupted, diverged,
    or never wrote a summary); exits 1 if any job failed, so scripts notice. Diverging is a result."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from bnexp.runlog import read_json

        sweep = Path(config.hydra.sweep.dir)
        outcomes = {}
        for hydra_dir in sorted(sweep.rglob(".hydra")):
            job = hydra_dir.parent
            outcomes[job.relative_to(sweep)] = (read_json(job / "failure.json") or read_json(job / "summary.json")
                                                or {"status": "no summary", "error": f"see {job / 'train.log'}"})
        counts: dict[str, int] = {}
        for summary in outcomes.values():
            counts[summary["status"]] = counts.get(summary["status"], 0) + 1
        print(f"bnexp: sweep {sweep}: {len(outcomes)} jobs: "
              + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())), file=sys.stderr)
        for job, summary in outcomes.items():
            if summary["status"] != "completed":
                detail = summary.get("error") or (f"at step {summary['diverged_at_step']}"
                                                  if summary.get("diverged_at_step") is not None else "")
                print(f"  {summary['status']}: {job} {detail}".rstrip(), file=sys.stderr)
        if any(s["status"] in ("failed", "no summary") for s in outcomes.values()):
            sys.exit(1)
