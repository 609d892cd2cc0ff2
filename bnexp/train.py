"""`bnexp train`'s work: `run(cfg, run_dir)` turns a validated config into trained runs.

One config trains seeds trainer.seed .. seed+replicas-1: a single run (replicas=1) writes run_dir
itself; replicas write one ordinary run dir each, run_dir/seed_<seed>, that report, TensorBoard,
resume and finalize read like any run. In order: lock the run dirs (one owner each), leave alone
the runs that have ended, build (bnexp/builders.py) the device, data, one model per seed, the
stepper and one record per run, restore checkpoints, and hand them to the one loop
(bnexp/trainer.py). `bnexp resume RUN_DIR` continues every unfinished replica;
`bnexp resume RUN_DIR/seed_<s>` continues one of them alone, as a run of its seed.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from bnexp import builders, checkpoint, distributed, models, rundir
from bnexp import data as datasets
from bnexp.config import EXECUTION_SETTINGS, flatten, load_run_config, read_overrides, step_probes_on
from bnexp.errors import RunFailed, UserError, first_line
from bnexp.probes import GradientProbe, StepProbes
from bnexp.record import RunRecord
from bnexp.runlog import NullLog, RunLog
from bnexp.stepper import OneModel, StackedModels
from bnexp.summary import SUMMARY, Summary, ended
from bnexp.trainer import Trainer

log = logging.getLogger(__name__)

# What TensorBoard's HParams tab shows for each run (the whole config is in the run's config.yaml).
HPARAMS = ("name", "data.name", "model.name", "model.activation", "model.width", "norm.name", "optim.lr",
           "optim.lr_mult", "optim.momentum", "optim.weight_decay", "optim.weight_decay_mult", "schedule.name",
           "trainer.batch_size", "trainer.max_steps", "trainer.seed")


def run(cfg: DictConfig, run_dir: Path) -> dict[Path, Summary]:
    """Train the config's seeds in run_dir; {each run's dir: its summary}, in seed order."""
    rank, _ = distributed.rank_and_world()
    run_dir = Path(run_dir)
    seeds = list(range(cfg.trainer.seed, cfg.trainer.seed + cfg.trainer.replicas))
    dirs = {s: run_dir if len(seeds) == 1 else rundir.replica_dir(run_dir, s) for s in seeds}
    configs = {s: with_seed(cfg, s) for s in seeds}
    # Under torchrun, rank 0 owns the run dir for all the run's processes.
    with rundir.owned(*(dict.fromkeys([run_dir, *dirs.values()]) if rank == 0 else ())):
        summaries = {}
        for s in seeds:
            if cfg.trainer.resume == "auto" and (done := ended(dirs[s])):
                check_same_config(dirs[s], configs[s])
                log.info("%s already %s; nothing to do", dirs[s], done["status"])
                summaries[s] = done
        if todo := [s for s in seeds if s not in summaries]:
            try:
                trained = train_seeds(cfg, {s: configs[s] for s in todo}, {s: dirs[s] for s in todo}, run_dir)
            except OSError as e:  # a run dir that cannot be written as the run starts: full, vanished, read-only
                raise RunFailed(f"{run_dir}: {e}") from e
            summaries.update(zip(todo, trained, strict=True))
    return {dirs[s]: summaries[s] for s in seeds}


def with_seed(cfg: DictConfig, seed: int) -> DictConfig:
    """The config of the run of one seed; trainer.replicas records how it was trained."""
    one = copy.deepcopy(cfg)
    one.trainer.seed = seed
    return one


def train_seeds(cfg: DictConfig, configs: dict[int, DictConfig], dirs: dict[int, Path], run_dir: Path) -> list[Summary]:
    """Build what the seeds' runs need, restore their checkpoints, and train them together."""
    rank, world = distributed.rank_and_world()
    seeds = list(configs)
    device = builders.prepare_process(cfg.trainer)
    # One copy of the data; each replica of a group batches it as its seed's run alone would.
    group = cfg.trainer.replicas > 1
    data = datasets.build(cfg.data, configs[seeds[0]].trainer, device, shard=(rank, world))
    nets = []
    for s in seeds:
        torch.manual_seed(s)  # as the run of seed s alone: its initial weights
        nets.append(models.build(cfg.model, cfg.norm, data.input_shape, data.num_classes).to(device))
    states = resume_states(cfg.trainer.resume, configs, dirs, writes=rank == 0)
    if not group:  # the replicas of a group stay stacked, however many are left to train
        stepper = OneModel(nets[0], builders.make_optimizer(nets[0].parameters(), cfg.optim), cfg.trainer,
                           cfg.optim.clip_norm)
    else:
        wide = models.stacked(cfg.model, cfg.norm, data.input_shape, data.num_classes, len(nets))
        stepper = StackedModels(nets, lambda params: builders.make_optimizer(params, cfg.optim), cfg.trainer,
                                cfg.optim.clip_norm, wide)
    step_probes = StepProbes(cfg.probes, nets[0]) if step_probes_on(cfg.probes) else None
    overrides = run_overrides(run_dir) if group and rank == 0 else None
    records, longer_rows = [], cfg.probes.get("longer_rows", [])  # absent from configs saved before it
    for r, s in enumerate(seeds):
        if overrides is not None:
            write_overrides(dirs[s], overrides, s)
        runlog = open_runlog(configs[s], dirs[s], nets[r], states[r], step_probes) if rank == 0 else NullLog()
        record = RunRecord(configs[s].trainer, dirs[s], nets[r], stepper.optimizer_of(r),
                           data.reseeded(s) if group else data, runlog, writes_checkpoints=rank == 0,
                           population_batches=builders.population_batches(cfg.norm),
                           variance_shift=cfg.probes.variance_shift, longer_rows=longer_rows,
                           blank=datasets.blank(cfg.data) if longer_rows else None)
        if states[r] is not None:
            record.restore(states[r])
        records.append(record)
    if states[0] is not None:
        try:
            checkpoint.set_rng_states(states[0]["rng"])  # every draw after this is the uninterrupted run's
        except (TypeError, KeyError, ValueError, RuntimeError) as e:
            raise UserError(f"checkpoint {states[0]['file']} holds no random states this process can take "
                            f"({type(e).__name__}: {first_line(e)}); move it away, or set trainer.resume=never"
                            ) from None
    where = f"{device}" + (f" x {world} processes" if world > 1 else "")
    if device.type == "cpu":
        where += f" ({torch.get_num_threads()} threads)"
    what = cfg.model.name + (f" x {len(seeds)} replicas (seeds {', '.join(map(str, seeds))})" if group else "")
    log.info("run dir %s | %s on %s | %d parameters%s", run_dir, what, where,
             sum(p.numel() for p in nets[0].parameters()), " each" * group)
    start = 0 if states[0] is None else states[0]["step"]
    gradients = (GradientProbe(cfg.probes.grad_every, {k: w for k, (w, _) in nets[0].ics_layers().items()})
                 if cfg.probes.grad_every else None)
    return Trainer(cfg.trainer, stepper, records, builders.learning_rate(cfg), start, step_probes, gradients).fit()


def resume_states(resume: str, configs: dict[int, DictConfig], dirs: dict[int, Path], writes: bool) -> list:
    """Each run's checkpoint at one common step (the newest every run has), or None for all: runs
    train in lockstep, so they continue from the same step. resume=never starts over."""
    if resume == "never":
        for s in dirs if writes else ():
            checkpoint.remove_all(dirs[s])
        return [None] * len(dirs)
    newest = [checkpoint.load_latest(dirs[s], required=RunRecord.STATE) for s in dirs]
    if any(state is None for state in newest):
        if any(state is not None for state in newest):
            log.warning("some replicas have no checkpoint: all start from step 0")
            for s in dirs if writes else ():
                checkpoint.remove_all(dirs[s])
        return [None] * len(dirs)
    common = min(state["step"] for state in newest)
    states = [state if state["step"] == common else checkpoint.load_latest(dirs[s], common, RunRecord.STATE)
              for s, state in zip(dirs, newest, strict=True)]
    if any(state is None for state in states):
        raise UserError(f"the replicas in {', '.join(map(str, dirs.values()))} have no checkpoint in common at or "
                        f"before step {common}; resume them one by one, or set trainer.resume=never")
    for s in dirs:
        check_same_config(dirs[s], configs[s])
    return states


def check_same_config(run_dir: Path, cfg: DictConfig) -> None:
    """Refuse to continue a run dir made with a different config: its steps would mix two experiments.
    Options newer than the run (absent from its config.yaml) do not count: a new option's default
    is what bnexp did before it existed, so a run made earlier can be finished, or skipped, by
    today's bnexp."""
    if not (run_dir / "config.yaml").is_file():
        return
    saved = flatten(OmegaConf.to_container(load_run_config(run_dir)))
    config = flatten(OmegaConf.to_container(cfg, resolve=True))
    changed = sorted(k for k in saved.keys() | config.keys()
                     if k not in EXECUTION_SETTINGS and k in saved and saved[k] != config.get(k))
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in changed[:5])
        raise UserError(f"{run_dir} holds a run with a different config ({diff}); refusing to "
                        "resume it. Use the run's own overrides, another run dir, or trainer.resume=never.")


def open_runlog(cfg: DictConfig, run_dir: Path, model, state: dict | None, step_probes: StepProbes | None) -> RunLog:
    """The run dir's config.yaml (a resumed run keeps the one it was checked against) and its logs."""
    if state is None:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    (run_dir / SUMMARY).unlink(missing_ok=True)  # a resumed run is no longer finished
    config = flatten(OmegaConf.to_container(cfg, resolve=True))
    return RunLog(run_dir, {key: config[key] for key in HPARAMS if key in config}, list(model.probe_points()),
                  resume_step=None if state is None else state["step"],
                  ics_layers=list(step_probes.layers) if step_probes else [],
                  landscape=bool(step_probes and step_probes.landscape_every))


def run_overrides(run_dir: Path) -> list[str]:
    """The overrides a run dir was made with (Hydra's .hydra/overrides.yaml); none if it has no record."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    return read_overrides(path) if path.is_file() else []


def write_overrides(replica: Path, overrides: list[str], seed: int) -> None:
    """The replica's own .hydra/overrides.yaml: `bnexp resume RUN_DIR/seed_<s>` continues it alone."""
    own = [o for o in overrides if o.split("=")[0].lstrip("+~") not in ("trainer.seed", "trainer.replicas")]
    (replica / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(OmegaConf.create([*own, f"trainer.seed={seed}", "trainer.replicas=1"]),
                   replica / ".hydra" / "overrides.yaml")
