"""The config: where it lives, how it is composed, and the one place where bad input becomes one
clear error line.

`validate(cfg)` runs before any data is loaded. Every setting in the composed config has a rule
here (its type and range); a setting without one, such as `+trainer.typo=1`, is refused rather
than silently ignored. Rules that span settings (batch sizes and the norm, the model's shapes)
follow, the model itself checked by building it on the meta device: no memory, no compute.
Validation imports data and models for that check; they import nothing of this module.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from bnexp.errors import UserError, first_line


def config_dir() -> Path:
    """configs/ ships inside the wheel as bnexp/configs; in a source checkout it sits beside bnexp/."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "configs", package.parent / "configs"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"bnexp's configs/ not found beside {package}")


def compose(overrides: list[str]) -> DictConfig:
    """The config `bnexp train OVERRIDES` would run, composed in-process (tests, benchmarks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


# Settings that change how a run executes but not what it computes: runs that differ only in these
# (and the seed) are seeds of one variant in `bnexp report`, a run may be resumed with them changed,
# and sweep dirs are not named after them. Defined once, in configs/config.yaml, where Hydra names
# the sweep dirs (`scale` is excluded there too: a preset's name, not a setting).
EXECUTION_SETTINGS = frozenset(
    OmegaConf.load(config_dir() / "config.yaml").hydra.job.config.override_dirname.exclude_keys) - {"scale"}

# trainer.targets and `bnexp report --targets`: accuracies a run can reach.
TARGET_BOUNDS = "(0, 1]"


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}; lists and None become strings (HParams types)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def load_run_config(run_dir: Path) -> DictConfig:
    """A run dir's config.yaml, or one line saying why it cannot be read (missing, not YAML, not a mapping)."""
    path = Path(run_dir) / "config.yaml"
    try:
        cfg = OmegaConf.load(path)
    except FileNotFoundError:
        raise UserError(f"{run_dir} is not a bnexp run dir (no config.yaml)") from None
    except Exception as e:  # OSError, YAML's many errors
        raise UserError(f"{path} cannot be read ({type(e).__name__}: {first_line(e)})") from None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{path} is not a bnexp config (not a mapping of settings)")
    return cfg


def read_overrides(path: Path) -> list[str]:
    """A run dir's .hydra/overrides.yaml (what `bnexp resume` repeats), or one line saying why not."""
    try:
        overrides = OmegaConf.load(path)
    except Exception as e:  # OSError, YAML's many errors
        raise UserError(f"{path} cannot be read ({type(e).__name__}: {first_line(e)})") from None
    if not isinstance(overrides, ListConfig) or not all(isinstance(o, str) for o in overrides):
        raise UserError(f"{path} is not a list of overrides")
    return list(overrides)


def accuracy_targets(text: str) -> list[float]:
    """`bnexp report --targets 0.97,0.98`: the rule trainer.targets follows, for the command line."""
    try:
        targets = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        targets = None
    if targets is None or not all(_is_number(t) and _within(t, TARGET_BOUNDS) for t in targets):
        raise UserError(f"accuracies must be numbers in {TARGET_BOUNDS} separated by commas, got {text!r}")
    return targets


def validate(cfg: DictConfig) -> None:
    """Refuse configurations that cannot produce a meaningful run, before any training starts."""
    c = Checks(cfg)
    c.text("name")
    c.text("runs_root")
    _objective(c)
    for group, rules in (("data", DATA), ("model", MODELS), ("norm", NORMS), ("optim", OPTIMIZERS),
                         ("schedule", SCHEDULES)):
        rules[c.choice(f"{group}.name", tuple(rules))](c)
    _trainer(c)
    _probes(c)
    c.nothing_else()
    across_settings(cfg)


class Checks:
    """Type and range checks of single settings. Ranges read as written: "> 0", ">= 1", "[0, 1)".
    Every key checked is remembered, so that `nothing_else` can refuse settings without a rule."""

    def __init__(self, cfg: DictConfig):
        self.cfg, self.seen = cfg, set()

    def value(self, key: str):
        self.seen.add(key)
        try:
            return OmegaConf.select(self.cfg, key, throw_on_missing=True)
        except MissingMandatoryValue:
            raise UserError(f"{key} is required: set {key}=...") from None
        except OmegaConfBaseException as e:  # an interpolation that cannot be resolved
            raise UserError(f"{key}: {str(e).splitlines()[0]}") from None

    def whole(self, key: str, bounds: str, null: bool = False) -> int | None:
        v = self.value(key)
        ok = (v is None and null) or (_is_whole(v) and _within(v, bounds))
        return self._require(ok, key, v, f"a whole number {bounds}" + " or null" * null)

    def number(self, key: str, bounds: str | None = None) -> float:
        v = self.value(key)
        return self._require(_is_number(v) and _within(v, bounds), key, v, f"a number {bounds or ''}".strip())

    def numbers(self, key: str, bounds: str | None = None, empty: bool = False) -> None:
        """A number or a list of numbers (an empty list only where `empty`)."""
        v = self.value(key)
        values = list(v) if isinstance(v, ListConfig) else [v]
        ok = (bool(values) or empty) and all(_is_number(x) and _within(x, bounds) for x in values)
        self._require(ok, key, v, f"a number {bounds or ''}".strip() + " or a list of them")

    def wholes(self, key: str, bounds: str) -> None:
        v = self.value(key)
        ok = isinstance(v, ListConfig) and all(_is_whole(x) and _within(x, bounds) for x in v)
        self._require(ok, key, v, f"a list of whole numbers {bounds}")

    def flag(self, key: str) -> None:
        v = self.value(key)
        self._require(isinstance(v, bool), key, v, "true or false")

    def choice(self, key: str, options: tuple) -> str:
        v = self.value(key)
        ok = any(v == o and type(v) is type(o) for o in options)  # 1 is not true, nor "true" true
        shown = (str(o).lower() if isinstance(o, bool) else o for o in options)  # as YAML writes them
        return self._require(ok, key, v, f"one of {', '.join(shown)}")

    def text(self, key: str) -> None:
        v = self.value(key)
        self._require(isinstance(v, str) and v != "", key, v, "a non-empty text")

    @staticmethod
    def _require(ok: bool, key: str, value, what: str):
        if not ok:
            shown = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
            raise UserError(f"{key} must be {what}, got {shown!r}")
        return value

    def nothing_else(self) -> None:
        """Refuse settings that no rule knows (`+trainer.typo=1`): bnexp would silently ignore them."""
        tree = OmegaConf.to_container(self.cfg, resolve=False, throw_on_missing=False)
        tree.pop("hydra", None)
        unknown = sorted(set(_leaves(tree)) - self.seen)
        if unknown:
            raise UserError(f"unknown setting{'s' * (len(unknown) > 1)} {', '.join(unknown)}: bnexp does not use "
                            f"{'them' if len(unknown) > 1 else 'it'} (a typo?); see `bnexp train --cfg job`")


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _is_whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_BOUNDS = re.compile(r"^\s*(?:(>=|>|<=|<)\s*(\S+)|([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])]))\s*$")


def _within(v: float, bounds: str | None) -> bool:
    """v satisfies "> 0", ">= 1", "< 5" or an interval "[0, 1)", "(0, 1]"."""
    if bounds is None:
        return True
    op, limit, left, lo, hi, right = _BOUNDS.match(bounds).groups()
    if op:
        limit = float(limit)
        return {">": v > limit, ">=": v >= limit, "<": v < limit, "<=": v <= limit}[op]
    lo, hi = float(lo), float(hi)
    return (v > lo if left == "(" else v >= lo) and (v < hi if right == ")" else v <= hi)


# --- one rule set per option of each config group (configs/<group>/<option>.yaml) -------------

def _distortion(c: Checks) -> None:
    c.number("data.distort", ">= 0")
    c.number("data.distort_mult", ">= 0")


def _pixels(c: Checks) -> None:
    c.numbers("data.mean")
    c.numbers("data.std", "> 0")


def _subset(c: Checks) -> None:  # the datasets held as tensors (all but imagefolder)
    c.whole("data.train_subset", ">= 1", null=True)
    c.whole("data.subset_seed", ">= 0")


def _downloaded(c: Checks) -> None:
    c.text("data.root")
    c.flag("data.download")


def _shift(c: Checks) -> None:
    name, severity = c.value("data.shift"), c.value("data.shift_severity")
    if name is None:
        if severity is not None:
            raise UserError(f"data.shift_severity={severity} needs a corruption: set data.shift=... too")
        return
    c.text("data.shift")
    from bnexp import shift  # here: commands that train nothing never import torch

    shift.severity_of(name, severity)  # an unknown name or a severity out of range, refused by name


def _downloaded_images(c: Checks) -> None:  # MNIST, Fashion-MNIST, CIFAR-10
    _downloaded(c)
    _pixels(c)
    _distortion(c)
    _subset(c)


def _mnist(c: Checks) -> None:
    _downloaded_images(c)
    _shift(c)


def _cifar10(c: Checks) -> None:
    _downloaded_images(c)
    c.whole("data.crop_padding", ">= 0")
    c.flag("data.flip")


def _synthetic(c: Checks) -> None:
    _pixels(c)
    _distortion(c)
    _subset(c)
    c.whole("data.n_train", ">= 1")
    c.whole("data.n_test", ">= 1")
    c.whole("data.num_classes", ">= 2")
    c.wholes("data.shape", ">= 1")
    c.number("data.noise", ">= 0")
    c.whole("data.seed", ">= 0")


def _imagefolder(c: Checks) -> None:
    c.text("data.root")
    _pixels(c)
    _distortion(c)
    c.whole("data.size", ">= 1")
    c.number("data.min_crop_scale", "(0, 1]")
    c.whole("data.workers", ">= 0")


DATA = {"mnist": _mnist, "fashion_mnist": _mnist, "cifar10": _cifar10, "synthetic": _synthetic,
        "imagefolder": _imagefolder}
ACTIVATIONS = ("sigmoid", "relu")


def _mlp(c: Checks) -> None:
    c.wholes("model.hidden", ">= 1")  # a layer of width 0 would pass nothing on
    if c.whole("model.depth", ">= 1", null=True) is not None and len(set(c.cfg.model.hidden)) != 1:
        raise UserError(f"model.depth repeats one width, but model.hidden lists several "
                        f"({list(c.cfg.model.hidden)}): set model.hidden=[WIDTH]")
    c.choice("model.activation", ACTIVATIONS)
    c.number("model.init_std", "> 0")
    c.number("model.dropout", "[0, 1)")
    c.choice("model.dropout_at", ("every", "last"))
    c.flag("model.residual")
    c.flag("model.skipinit")
    if c.cfg.model.skipinit and not c.cfg.model.residual:
        raise UserError("model.skipinit scales residual branches: set model.residual=true too")


def _inception(c: Checks) -> None:
    c.number("model.width", "> 0")
    c.choice("model.stem", ("auto", "imagenet", "small"))
    c.flag("model.stem_pool")
    c.choice("model.activation", ACTIVATIONS)
    c.number("model.dropout", "[0, 1)")
    c.flag("model.lrn")


def _lstm(c: Checks) -> None:
    from bnexp.models.lstm import SEQUENCES

    sequence = c.value("model.sequence")
    if not (sequence in SEQUENCES or (_is_whole(sequence) and sequence >= 1)):
        raise UserError(f"model.sequence must be one of {', '.join(SEQUENCES)} or a whole number of steps >= 1, "
                        f"got {sequence!r}")
    c.whole("model.hidden", ">= 1")
    c.whole("model.layers", ">= 1")
    c.number("model.forget_bias")
    c.number("model.h0_noise", ">= 0")


MODELS = {"mlp": _mlp, "inception": _inception, "lstm": _lstm}
RECURRENT_MODELS = ("lstm",)


def _eps(c: Checks) -> None:  # every norm but none
    c.number("norm.eps", "> 0")
    c.choice("norm.position", ("pre", "post"))


def _moving_averages(c: Checks) -> None:
    _eps(c)
    c.number("norm.momentum", "[0, 1]")


def _gain_and_paths(c: Checks) -> None:  # norm=batch and norm=layer
    if c.value("norm.gain_init") is not None:
        c.number("norm.gain_init")
    from bnexp.models.lstm import PATHS

    where = c.value("norm.where")
    ok = isinstance(where, ListConfig) and len(where) > 0 and len(set(where)) == len(where) and set(where) <= set(PATHS)
    c._require(ok, "norm.where", where, f"a list of distinct paths of {', '.join(PATHS)}, at least one")


def _batch(c: Checks) -> None:
    _moving_averages(c)
    c.flag("norm.sync")
    _gain_and_paths(c)
    c.choice("norm.stats", ("per_step", "shared"))


def _layer(c: Checks) -> None:
    _eps(c)
    _gain_and_paths(c)


def _batch_paper(c: Checks) -> None:
    _moving_averages(c)
    c.choice("norm.inference", ("moving_average", "population"))
    c.whole("norm.population_batches", ">= 1")


def _batch_renorm(c: Checks) -> None:
    _eps(c)
    c.number("norm.rate", "(0, 1]")
    c.whole("norm.warmup_steps", ">= 0")
    c.number("norm.rmax", ">= 1")
    c.whole("norm.rmax_steps", ">= 0")
    c.number("norm.dmax", ">= 0")
    c.whole("norm.dmax_steps", ">= 0")


def _ghost(c: Checks) -> None:
    _moving_averages(c)
    c.whole("norm.virtual_batch", ">= 2")


def _noisy_batch(c: Checks) -> None:
    _moving_averages(c)
    c.number("norm.scale_mean", "[0, 1]")  # the scale's mean lies in [1 - scale_mean, 1 + scale_mean]: never negative
    for key in ("scale_std", "shift_mean", "shift_std"):
        c.number(f"norm.{key}", ">= 0")


def _group(c: Checks) -> None:
    _eps(c)
    c.whole("norm.groups", ">= 1")


NORMS = {"none": lambda c: None, "batch": _batch, "batch_paper": _batch_paper, "batch_renorm": _batch_renorm,
         "ghost": _ghost, "noisy_batch": _noisy_batch, "group": _group, "layer": _layer, "instance": _eps}
BATCH_NORMS = ("batch", "batch_paper", "batch_renorm", "ghost", "noisy_batch")  # those that use batch statistics


def _sgd(c: Checks) -> None:
    c.number("optim.lr", "> 0")
    c.number("optim.lr_mult", "> 0")
    c.number("optim.momentum", "[0, 1)")
    c.flag("optim.nesterov")
    c.number("optim.weight_decay", ">= 0")
    c.number("optim.weight_decay_mult", ">= 0")
    c.number("optim.clip_norm", ">= 0")


def _adam(c: Checks) -> None:
    c.number("optim.lr", "> 0")
    c.number("optim.lr_mult", "> 0")
    betas = c.value("optim.betas")
    ok = (isinstance(betas, ListConfig) and len(betas) == 2
          and all(_is_number(b) and _within(b, "[0, 1)") for b in betas))
    c._require(ok, "optim.betas", betas, "two numbers in [0, 1)")
    c.number("optim.eps", "> 0")
    c.number("optim.weight_decay", ">= 0")
    c.number("optim.weight_decay_mult", ">= 0")
    c.number("optim.clip_norm", ">= 0")


def _exponential(c: Checks) -> None:
    c.number("schedule.decay_rate", "(0, 1]")
    c.number("schedule.decay_steps", "> 0")
    c.flag("schedule.staircase")
    c.number("schedule.speedup", "> 0")


OPTIMIZERS = {"sgd": _sgd, "adam": _adam}
SCHEDULES = {"constant": lambda c: None, "exponential": _exponential}


def _trainer(c: Checks) -> None:
    c.whole("trainer.max_steps", "> 0")
    c.whole("trainer.batch_size", "> 0")
    c.choice("trainer.eval_schedule", ("every", "geometric"))
    c.whole("trainer.eval_every", "> 0")
    c.whole("trainer.eval_first", "> 0")
    c.number("trainer.eval_ratio", "> 1")
    c.whole("trainer.log_every", "> 0")
    c.whole("trainer.eval_batch_size", "> 0")
    c.whole("trainer.seed", "[0, 4294967295]")
    c.choice("trainer.device", ("auto", "cpu", "cuda"))
    c.choice("trainer.progress", ("auto", True, False))
    c.numbers("trainer.targets", TARGET_BOUNDS, empty=True)
    c.whole("trainer.probe_unit", ">= 0")
    for flag in ("eval_batchstats", "eval_fold_bn", "eval_train", "amp", "channels_last", "compile", "deterministic"):
        c.flag(f"trainer.{flag}")
    c.whole("trainer.checkpoint_every", ">= 0")
    c.whole("trainer.keep_checkpoint_every", ">= 0")
    c.choice("trainer.resume", ("auto", "never"))
    c.whole("trainer.threads", "> 0", null=True)
    c.whole("trainer.replicas", ">= 1")


OBJECTIVES = ("best_accuracy", "final_accuracy", "best_error", "final_error")  # and steps_to_target.<t>


def _objective(c: Checks) -> None:
    metric = c.value("optimized_metric")
    targets = c.value("trainer.targets")
    steps = [f"steps_to_target.{t}" for t in (targets if isinstance(targets, ListConfig) else [targets])]
    if metric is not None and metric not in (*OBJECTIVES, *steps):
        raise UserError(f"optimized_metric must be null or one of {', '.join((*OBJECTIVES, *steps))}, got {metric!r}")
    c.whole("optimized_never", "> 0", null=True)


def _probes(c: Checks) -> None:
    c.whole("probes.ics_every", ">= 0")
    c.whole("probes.landscape_every", ">= 0")
    c.numbers("probes.landscape_steps", "> 0")
    c.whole("probes.grad_every", ">= 0")
    c.flag("probes.variance_shift")
    rows = c.value("probes.longer_rows")
    ok = rows is None or (isinstance(rows, ListConfig) and all(_is_whole(k) and k >= 1 for k in rows)
                          and len(set(rows)) == len(rows))  # None: a config saved before the probe
    c._require(ok, "probes.longer_rows", rows, "a list of distinct whole numbers of rows >= 1 (or [])")


def step_probes_on(probes: DictConfig) -> bool:
    """Whether a run takes Santurkar et al.'s ICS or landscape probes (configs/probes)."""
    return bool(probes.ics_every or probes.landscape_every)


def across_settings(cfg: DictConfig) -> None:
    """Rules between settings, and the model's shapes, for the batch each process will see."""
    t, world = cfg.trainer, int(os.environ.get("WORLD_SIZE", 1))  # processes of a data-parallel run (torchrun)
    _require(t.checkpoint_every % t.log_every == 0,
             f"trainer.checkpoint_every must be a multiple of trainer.log_every ({t.log_every}) or 0, "
             f"got {t.checkpoint_every}")
    _require(not t.keep_checkpoint_every or (t.checkpoint_every and t.keep_checkpoint_every % t.checkpoint_every == 0),
             f"trainer.keep_checkpoint_every must be a multiple of trainer.checkpoint_every ({t.checkpoint_every}) "
             f"or 0, got {t.keep_checkpoint_every}")
    _require(t.batch_size % world == 0,
             f"trainer.batch_size={t.batch_size} cannot be split among {world} processes; each process takes "
             "an equal part of every batch, so use a multiple of the process count")
    per_process = t.batch_size // world
    if cfg.norm.name in BATCH_NORMS:
        # With one example per batch, BN's variance is 0 and every output is beta: nothing to learn.
        normalized_together = t.batch_size if cfg.norm.get("sync", False) else per_process
        _require(
            normalized_together > 1,
            f"norm={cfg.norm.name} needs more than one example per batch{' and process' * (world > 1)} "
            f"(trainer.batch_size={t.batch_size}: batch statistics of one example are degenerate); "
            f"use norm={'none or layer' if cfg.model.name in RECURRENT_MODELS else 'none, layer or group'} for "
            "batch size 1" + (", or norm.sync=true" * (world > 1)),
        )
    if cfg.norm.name == "ghost":
        virtual = cfg.norm.virtual_batch
        _require(per_process <= virtual or per_process % virtual == 0,
                 f"norm=ghost needs the batch size{' per process' * (world > 1)} ({per_process}) to be a multiple "
                 f"of norm.virtual_batch ({virtual}), so that every virtual batch has the same size")
    _require(not cfg.optim.get("nesterov") or cfg.optim.momentum > 0, "optim.nesterov=true needs optim.momentum > 0")
    recurrent_norm(cfg)
    _require(t.device != "cuda" or _cuda_available(), "trainer.device=cuda but no CUDA device is available")
    _require(world == 1 or not step_probes_on(cfg.probes),
             "the ICS and landscape probes measure one process's gradients, not a data-parallel run's: "
             "run them without torchrun")
    if t.replicas > 1:
        _require(world == 1, "trainer.replicas > 1 cannot run under torchrun: replicas share one process")
        check_replicable(cfg)
    check_model(cfg)


# The norms without a recurrent form in bnexp, and why (model=lstm has none, batch and layer).
NOT_RECURRENT = {
    "batch_paper": "the paper's written-out BN is the feed-forward nets'; the recurrent BN with per-step "
                   "statistics is norm=batch",
    "batch_renorm": "Batch Renorm's r and d corrections have no per-step form here",
    "ghost": "Ghost BN's virtual batches have no per-step form here",
    "noisy_batch": "noisy BN's noise is defined for feed-forward layers (Santurkar et al.)",
    "group": "an LSTM's terms are feature vectors without channel groups; norm=layer is the one-group case",
    "instance": "instance norm normalizes over spatial positions, which a recurrent cell's terms have none of",
}


def recurrent_norm(cfg: DictConfig) -> None:
    """A recurrent model takes the norms with a recurrent form; the recurrent settings take a recurrent model."""
    n = cfg.norm
    if cfg.model.name in RECURRENT_MODELS:
        _require(n.name not in NOT_RECURRENT,
                 f"norm={n.name} cannot normalize model={cfg.model.name}: {NOT_RECURRENT.get(n.name)}; "
                 "use norm=none, batch or layer")
        _require(n.get("position", "pre") == "pre",
                 f"norm.position=post places a norm after a feed-forward layer's nonlinearity; model={cfg.model.name} "
                 "places its norms by norm.where")
        _require(not n.get("sync", False), f"norm.sync=true is for data-parallel feed-forward nets; "
                 f"model={cfg.model.name}'s per-step BN has no synced form")
        _require(not cfg.probes.get("longer_rows") or cfg.model.sequence == "rows",
                 f"probes.longer_rows adds rows to the images, which lengthens the sequence only with "
                 f"model.sequence=rows (got {cfg.model.sequence})")
        _require(not (cfg.probes.ics_every or cfg.probes.variance_shift),
                 f"the ICS and variance-shift probes read a feed-forward net's layers; model={cfg.model.name} "
                 "has one set of statistics per step: set probes.ics_every=0 and probes.variance_shift=false")
        return
    from bnexp.models.lstm import PATHS

    _require(not cfg.probes.get("longer_rows"), f"probes.longer_rows tests a recurrent model on longer sequences; "
             f"model={cfg.model.name} reads images of one size (model=lstm reads rows)")
    _require(n.get("stats", "per_step") == "per_step",
             f"norm.stats=shared pools statistics over time steps; model={cfg.model.name} has none (model=lstm has)")
    _require(list(n.get("where", PATHS)) == list(PATHS),
             f"norm.where chooses the terms of a recurrent cell; model={cfg.model.name} normalizes every layer "
             "(model=lstm has terms)")


def check_replicable(cfg: DictConfig) -> None:
    """What trainer.replicas cannot train as the runs of its seeds would train alone, refused with the reason."""
    t, why = cfg.trainer, "trainer.replicas > 1 trains the seeds in one stacked computation"
    _require(cfg.model.get("dropout", 0) == 0,
             f"{why}; dropout draws its masks from the process's one random stream, so a replica's masks "
             "could not be those of its seed's run alone: set model.dropout=0, or run the seeds separately")
    _require(not cfg.model.get("h0_noise", 0),
             f"{why}; model.h0_noise draws its noise from the process's one random stream, so a replica's "
             "noise could not be that of its seed's run alone: set model.h0_noise=0, or run the seeds separately")
    _require(cfg.norm.name != "batch_renorm",
             f"{why}; norm=batch_renorm reads its step counter as a Python number to set rmax and dmax, "
             "which a vmapped computation cannot: run its seeds separately")
    _require(cfg.norm.name != "noisy_batch",
             f"{why}; norm=noisy_batch draws its noise from the process's one random stream, so a replica's "
             "noise could not be that of its seed's run alone: run its seeds separately")
    _require(not step_probes_on(cfg.probes),
             f"{why}; the ICS and landscape probes re-run one model's step on its own: run the seeds separately")
    _require(not cfg.norm.get("sync", False), f"{why} in one process; norm.sync=true is for data-parallel runs")
    _require(cfg.data.name != "imagefolder", f"{why} with the data on the device; data=imagefolder streams "
             "from disk: run its seeds separately")
    _require(not t.channels_last or cfg.model.name == "inception",
             f"{why}; trainer.channels_last applies to model=inception's wide twin only (set it false)")


def check_model(cfg: DictConfig) -> None:
    """Build the model and run one batch through it on the meta device (shapes only), so that an
    architecture that cannot be built, or a probe unit beyond a layer's width, is refused now."""
    import torch

    from bnexp import data, models

    shape = data.input_shape(cfg.data)
    widths = {}
    with torch.device("meta"):
        model = models.build(cfg.model, cfg.norm, shape, num_classes=2).eval()  # the classes change no check
        for name, module in model.probe_points().items():
            module.register_forward_pre_hook(lambda m, inputs, name=name: widths.__setitem__(name, inputs[0].shape[1]))
        try:
            model(torch.empty(2, *shape))
        except RuntimeError as e:
            raise UserError(f"model={cfg.model.name} cannot take {cfg.data.name}'s {tuple(shape)} inputs: "
                            f"{str(e).splitlines()[0]}") from None
    narrowest = min(widths.items(), key=lambda kv: kv[1], default=None)
    _require(narrowest is None or cfg.trainer.probe_unit < narrowest[1],
             f"trainer.probe_unit={cfg.trainer.probe_unit} is beyond the {narrowest and narrowest[1]} units of "
             f"layer {narrowest and narrowest[0]} (units are numbered from 0)")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
