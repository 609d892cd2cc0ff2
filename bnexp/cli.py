"""bnexp's command line: `bnexp <command> [args]`.

  bnexp train [hydra overrides]     one run; `-m` sweeps; --cfg job, --help, -sc as in any Hydra app
  torchrun --nproc_per_node=N -m bnexp train ...   one data-parallel run (bnexp/distributed.py)
  bnexp report RUN_OR_SWEEP_DIR...  paper-shaped tables and figures from run directories

Hydra cannot sit under a sub-command parser, so the sub-command is taken off argv before
Hydra sees the rest.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import bnexp
from bnexp import distributed
from bnexp.config import UserError

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
  report PATH...      tables (markdown, csv) and figures from runs or sweeps: steps to the
                      baseline's best accuracy, speed-up, best accuracy over seeds
                      e.g. bnexp report ~/bnexp-runs/fig1_mnist --out report/

Data parallel: torchrun --nproc_per_node=N -m bnexp train [overrides] (norm.sync=true: SyncBN)
Parallel or Slurm sweeps: bnexp train -m hydra/launcher=joblib|submitit_slurm ...

Runs go to $BNEXP_RUNS (default ~/bnexp-runs); watch them with: tensorboard --logdir ~/bnexp-runs
"""


def config_dir() -> str:
    """configs/ ships inside the wheel as bnexp/configs; in a source checkout it sits beside bnexp/."""
    package = Path(bnexp.__file__).resolve().parent
    for candidate in (package / "configs", package.parent / "configs"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"bnexp's configs/ not found beside {package}")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def train(cfg: DictConfig) -> dict:
    from bnexp.config import validate
    from bnexp.runlog import write_json_atomic
    from bnexp.train import run

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    (run_dir / "failure.json").unlink(missing_ok=True)  # from an earlier attempt
    try:
        validate(cfg)
        summary = run(cfg, run_dir)
    except Exception as e:
        if not in_sweep:
            raise
        # In a sweep, one job's failure is recorded and the others go on; the sweep's end lists it.
        # Its own file: a refused job must not overwrite the summary of the run already in its dir.
        log.error("failed: %s", e, exc_info=not isinstance(e, UserError))
        write_json_atomic(run_dir / "failure.json", {"status": "failed", "error": str(e)})
        return {"status": "failed"}
    outcome = summary["status"]
    if summary["diverged_at_step"] is not None:
        outcome += f" at step {summary['diverged_at_step']}"
    log.info("%s: best test accuracy %s (step %s), final %s | %s", outcome, summary["best_accuracy"],
             summary["best_step"], summary["final_accuracy"], run_dir)
    if summary["status"] == "failed" and not in_sweep:  # a sweep lists it at its end
        sys.exit(1)
    if summary["status"] == "interrupted":
        # 130 for Ctrl-C, 143 for SIGTERM, as the shell reports them; stops a sweep too.
        sys.exit(128 + signal.Signals[summary.get("stopped_by", "SIGINT")].value)
    return summary


def resume_arguments(args: list[str]) -> list[str]:
    """`bnexp resume RUN_DIR [overrides]` = `bnexp train <the run's own overrides> hydra.run.dir=RUN_DIR`."""
    from omegaconf import OmegaConf

    if not args:
        raise ValueError("usage: bnexp resume RUN_DIR [overrides]")
    run_dir = Path(args[0])
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        raise ValueError(f"{run_dir} is not a bnexp run dir (no .hydra/overrides.yaml)")
    quoted = str(run_dir.resolve()).replace("\\", "\\\\").replace("'", "\\'")
    return [*OmegaConf.load(overrides), f"hydra.run.dir='{quoted}'", *args[1:]]


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
        if world > 1:  # under torchrun: one process per device, one run dir, rank 0 writes
            if "-m" in rest or "--multirun" in rest:
                print("bnexp: error: a sweep (-m) cannot run under torchrun; run each job with torchrun, or "
                      "sweep with one process per job", file=sys.stderr)
                return 2
            distributed.start()
            if rank > 0:
                rest = [*rest, "hydra.output_subdir=null", "hydra/job_logging=disabled"]
        if command == "resume":
            try:
                rest = resume_arguments(rest)
            except ValueError as e:
                print(f"bnexp: error: {e}", file=sys.stderr)
                return 2
        sys.argv = [sys.argv[0], *rest]
        try:
            train()
        finally:
            distributed.stop()
        return 0
    if command == "finalize":
        from bnexp.finalize import main as finalize

        return finalize(rest)
    if command == "report":
        from bnexp.report import main as report

        return report(rest)
    print(f"bnexp: error: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
