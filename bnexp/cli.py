"""bnexp's command line: `bnexp <command> [args]`.

The life of a run, from `bnexp train norm=none` to summary.json, each module entered once:
  1. cli.main() takes `train` off argv (Hydra cannot sit under a sub-command parser) and hands
     the rest to Hydra, which composes configs/config.yaml with the overrides. CheckOutputDir
     (below, wired in config.yaml's hydra.callbacks) makes the run dir and locks it (rundir.py)
     before Hydra writes into it; then Hydra calls train_command().
  2. train_command(): config.validate(cfg) checks every setting, then train.run(cfg, run_dir).
  3. train.run(): locks the run's dirs (one per seed with trainer.replicas > 1), leaves ended runs
     alone, builds (builders.py) the device, data.build, one models.build per seed, the stepper
     (stepper.py: one module, or R stacked ones) and one RunRecord per run (record.py), restores
     checkpoints, and hands them to trainer.Trainer.
  4. Trainer.fit(): evaluates at step 0, then run_steps(): one stepper.step per step for all runs;
     each log window's end checks divergence, logs, evaluates and checkpoints through the records.
  5. RunRecord.conclude: the run's last scalars, RunLog.close, then summary.json (summary.py),
     written last, atomically. train_command() reports each run.
  In a sweep (-m) Hydra calls train_command() once per job; ListSweepOutcomes (below) lists them.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bnexp import distributed, rundir
from bnexp.config import config_dir, read_overrides
from bnexp.errors import RunDirInUse, RunFailed, UserError
from bnexp.summary import FAILURE, SUMMARY, Status, write_json_atomic
from bnexp.summary import read as read_summary

log = logging.getLogger("bnexp")

USAGE = """usage: bnexp <command> [args]

Reproduce the Batch Normalization paper (Ioffe & Szegedy, 2015) and go beyond it.

commands:
  train [overrides]   train one model (Hydra app: -m sweeps, --cfg job, --help, -sc install=bash)
                      e.g. bnexp train experiment=fig1_mnist norm=none
                           bnexp train -m norm=none,batch trainer.seed=0,1,2
  resume RUN_DIR      continue a stopped run from its newest checkpoint, with its own overrides
                      (what `bnexp train <its overrides> hydra.run.dir=RUN_DIR` does)
  finalize RUN_DIR    re-evaluate a run with the paper's population statistics (Algorithm 2)
                      instead of moving averages, on the same weights: RUN_DIR/finalized.json
  evaluate RUN_DIR    test accuracy on the clean and the corrupted test sets (data.shift), with BN's
                      moving averages, precise statistics, statistics re-estimated on test images
                      (AdaBN) or batch statistics: RUN_DIR/evaluate/step_<step>/evaluation.csv
  report PATH...      tables (markdown, csv) and figures from runs or sweeps: steps to the
                      baseline's best accuracy, speed-up, best accuracy over seeds, with 95%
                      intervals; runs.csv; with --claims, each claim's computed verdict
                      e.g. bnexp report ~/bnexp-runs/fig1_mnist --out report/

Data parallel: torchrun --nproc_per_node=N -m bnexp train [overrides] (norm.sync=true: SyncBN)
Parallel or Slurm sweeps: bnexp train -m hydra/launcher=joblib|submitit_slurm ...

Runs go to $BNEXP_RUNS (default ~/bnexp-runs); watch them with: tensorboard --logdir ~/bnexp-runs
"""


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def train_command(cfg: DictConfig) -> dict | float | str:
    """The Hydra task of `bnexp train`: one job, i.e. one config, its runs trained in its run dir.
    Returns the runs' summaries, or with optimized_metric set the number a sweeper optimizes."""
    from bnexp.config import validate
    from bnexp.train import run

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        validate(cfg)
        rank, _ = distributed.rank_and_world()
        owned = [run_dir] if rank == 0 else []  # rank 0 owns the dir for all of a run's processes
        with rundir.owned(*owned):
            (run_dir / FAILURE).unlink(missing_ok=True)  # from an earlier attempt
            results = run(cfg, run_dir)
    except Exception as e:
        if not in_sweep:
            if isinstance(e, (UserError, RunFailed)):  # one line; real bugs keep Hydra's traceback
                print(e if isinstance(e, UserError) else f"bnexp: error: {e}", file=sys.stderr)
                sys.exit(2 if isinstance(e, UserError) else 1)
            raise
        # In a sweep, one job's failure is recorded and the others go on; the sweep's end lists it.
        # Its own file: a refused job must not overwrite the summary of the run already in its dir,
        # and a job refused because another process owns its dir writes nothing there at all.
        log.error("failed: %s", e, exc_info=not isinstance(e, (UserError, RunFailed)))
        if not isinstance(e, RunDirInUse):
            try:
                write_json_atomic(run_dir / FAILURE, {"status": Status.FAILED, "error": str(e)})
            except OSError as why:
                log.error("%s could not be written either (%s)", run_dir / FAILURE, why)
        return f"failed: {e}" if cfg.get("optimized_metric") else {"status": Status.FAILED}
    for path, summary in results.items():
        log.info("%s: best test accuracy %s (step %s), final %s | %s", outcome_of(summary), summary["best_accuracy"],
                 summary["best_step"], summary["final_accuracy"], path)
    statuses = [summary["status"] for summary in results.values()]
    if Status.FAILED in statuses and not in_sweep:  # a sweep lists it at its end
        failed = next(s for s in results.values() if s["status"] == Status.FAILED)
        print(f"bnexp: error: {failed.get('error', 'the run failed')}", file=sys.stderr)
        sys.exit(1)
    if Status.INTERRUPTED in statuses:
        # 130 for Ctrl-C, 143 for SIGTERM, as the shell reports them; stops a sweep too.
        stopped = next(summary for summary in results.values() if summary["status"] == Status.INTERRUPTED)
        sys.exit(128 + signal.Signals[stopped.get("stopped_by", "SIGINT")].value)
    if cfg.optimized_metric:
        return objective(list(results.values()), cfg.optimized_metric, cfg.optimized_never or 2 * cfg.trainer.max_steps)
    return {str(path): summary for path, summary in results.items()}


def outcome_of(summary: dict) -> str:
    """How a run ended, in words: "completed", "diverged at step 812", "failed: <why>"."""
    at, error = summary.get("diverged_at_step"), summary.get("error")
    return str(summary["status"]) + (f" at step {at}" if at is not None else "") + (f": {error}" if error else "")


def objective(summaries: list[dict], metric: str, never: int) -> float | str:
    """What a sweeper optimizes: `metric` of the runs, mean over the seeds of a replicated run. Where
    a run failed, or diverged when the metric is an accuracy, the setting did not train: the task
    returns why, as text, which Optuna's sweeper records as a failed trial with that reason (and
    goes on). For steps to a target, a diverged run never got there: `never` steps."""
    values = []
    for summary in summaries:
        if metric.startswith("steps_to_target.") and summary["status"] != Status.FAILED:
            step = summary["steps_to_target"].get(metric.removeprefix("steps_to_target."))
            values.append(never if step is None else step)
        elif summary["status"] != Status.COMPLETED:
            return outcome_of(summary)
        else:
            values.append(summary[metric])
    log.info("%s = %s (%s)", metric, sum(values) / len(values), ", ".join(map(str, values)))
    return sum(values) / len(values)


class CheckOutputDir(Callback):
    """Before Hydra creates the run (or sweep) dir: make sure it can be created and written, and
    say why in one line if not; a single run's dir is locked for this process before Hydra writes
    into it (a sweep's jobs lock their own, in train_command). Hydra turns exceptions in callbacks
    into warnings, so this exits."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self.check(config.hydra.run.dir)
        if distributed.rank_and_world()[0] == 0:
            try:
                rundir.acquire(Path(config.hydra.run.dir))  # held until the process ends
            except RunDirInUse as e:
                print(e, file=sys.stderr)
                sys.exit(2)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.check(config.hydra.sweep.dir)

    @staticmethod
    def check(directory: str) -> None:
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=directory).close()
        except OSError as e:  # not a directory, no permission, a read-only disk, a name too long, ...
            print(UserError(f"output directory {directory} cannot be used ({e.strerror or e}); "
                            "set runs_root=... or $BNEXP_RUNS"), file=sys.stderr)
            sys.exit(2)


class CheckSweepDirection(Callback):
    """Before a sweep that optimizes a number starts: an accuracy is maximized, an error or a step
    count minimized. A sweeper set the other way (Optuna's default is minimize) is refused in one line."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        metric = config.get("optimized_metric")
        direction = str(OmegaConf.select(config, "hydra.sweeper.direction", default="") or "").lower()
        direction = direction.removeprefix("direction.")
        if metric and direction in ("minimize", "maximize"):
            wanted = "maximize" if metric.endswith("accuracy") else "minimize"
            if direction != wanted:
                print(UserError(f"optimized_metric={metric} is to {wanted}, but the sweeper is set to {direction}: "
                                f"set hydra.sweeper.direction={wanted}"), file=sys.stderr)
                sys.exit(2)


class ListSweepOutcomes(Callback):
    """At the end of a sweep, one line per job in its dir that did not complete (failed, interrupted,
    diverged, or never wrote a summary); exits 1 if any job failed, so scripts notice. Diverging is a
    result, and so is a job that another process is training now (another lane of the same sweep dir)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        outcomes = {}
        for hydra_dir in sorted(sweep.rglob(".hydra")):
            job = hydra_dir.parent
            if rundir.replica_dirs(job):
                continue  # a replicated job: its replicas' dirs are listed, each with its own .hydra
            elsewhere = rundir.holder(job)
            outcomes[job.relative_to(sweep)] = (read_summary(job / FAILURE) or read_summary(job / SUMMARY)
                                                or ({"status": "training elsewhere", "error": f"by {elsewhere}"}
                                                    if elsewhere else
                                                    {"status": "no summary", "error": f"see {job / 'train.log'}"}))
        counts: dict[str, int] = {}
        for summary in outcomes.values():
            counts[summary["status"]] = counts.get(summary["status"], 0) + 1
        print(f"bnexp: sweep {sweep}: {len(outcomes)} jobs: "
              + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())), file=sys.stderr)
        for job, summary in outcomes.items():
            if summary["status"] != Status.COMPLETED:
                detail = summary.get("error") or (f"at step {summary['diverged_at_step']}"
                                                  if summary.get("diverged_at_step") is not None else "")
                print(f"  {summary['status']}: {job} {detail}".rstrip(), file=sys.stderr)
        if any(s["status"] in (Status.FAILED, "no summary") for s in outcomes.values()):
            sys.exit(1)


def resume_arguments(args: list[str]) -> list[str]:
    """`bnexp resume RUN_DIR [overrides]` = `bnexp train <the run's own overrides> hydra.run.dir=RUN_DIR`."""
    if not args:
        raise UserError("usage: bnexp resume RUN_DIR [overrides]")
    run_dir = Path(args[0])
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        raise UserError(f"{run_dir} is not a bnexp run dir (no .hydra/overrides.yaml)")
    quoted = str(run_dir.resolve()).replace("\\", "\\\\").replace("'", "\\'")
    return [*read_overrides(overrides), f"hydra.run.dir='{quoted}'", *args[1:]]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in ("-sc", "--shell-completion"):
        # Hydra's completion script calls `bnexp -sc query=bash` with the whole line in COMP_LINE;
        # answer for `train`, whose word Hydra would otherwise read as an override.
        line = os.environ.get("COMP_LINE", "")
        os.environ["COMP_LINE"] = line.replace(" train", "", 1)
        command, rest = "train", argv
    if command in ("train", "resume"):
        rank, world = distributed.rank_and_world()
        data_parallel = world > 1  # under torchrun: one process per device, one run dir, rank 0 writes
        if data_parallel:
            if "-m" in rest or "--multirun" in rest:
                print(UserError("a sweep (-m) cannot run under torchrun; run each job with torchrun, or "
                                "sweep with one process per job"), file=sys.stderr)
                return 2
            distributed.start()
            if rank > 0:
                rest = [*rest, "hydra.output_subdir=null", "hydra/job_logging=disabled"]
        if command == "resume":
            try:
                rest = resume_arguments(rest)
            except UserError as e:
                print(e, file=sys.stderr)
                return 2
        sys.argv = [sys.argv[0], *rest]
        try:
            train_command()
        finally:
            if data_parallel:
                distributed.stop()
        return 0
    if command == "finalize":
        from bnexp.finalize import main as finalize

        return finalize(rest)
    if command == "evaluate":
        from bnexp.evaluate import main as evaluate

        return evaluate(rest)
    if command == "report":
        from bnexp.report import main as report

        return report(rest)
    print(f"bnexp: error: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
