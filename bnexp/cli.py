"""bnexp's command line: `bnexp <command> [args]`.

  bnexp train [hydra overrides]     one run; `-m` sweeps; --cfg job, --help, -sc as in any Hydra app
  bnexp report RUN_OR_SWEEP_DIR...  paper-shaped tables and figures from run directories

Hydra cannot sit under a sub-command parser, so the sub-command is taken off argv before
Hydra sees the rest.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import bnexp

log = logging.getLogger("bnexp")

USAGE = """usage: bnexp <command> [args]

Reproduce the Batch Normalization paper (Ioffe & Szegedy, 2015) and go beyond it.

commands:
  train [overrides]   train one model (Hydra app: -m sweeps, --cfg job, --help, -sc install=bash)
                      e.g. bnexp train experiment=fig1_mnist norm=none
                           bnexp train -m norm=none,batch trainer.seed=0,1,2
  report PATH...      tables (markdown, csv) and figures from runs or sweeps: steps to the
                      baseline's best accuracy, speed-up, best accuracy over seeds
                      e.g. bnexp report ~/bnexp-runs/fig1_mnist --out report/

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
    from bnexp.train import run

    validate(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = run(cfg, run_dir)
    outcome = summary["status"]
    if summary["diverged_at_step"] is not None:
        outcome += f" at step {summary['diverged_at_step']}"
    log.info("%s: best test accuracy %s (step %s), final %s | %s", outcome, summary["best_accuracy"],
             summary["best_step"], summary["final_accuracy"], run_dir)
    if summary["status"] == "interrupted":
        sys.exit(130)  # the shell's code for Ctrl-C; stops a sweep too
    return summary


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
    if command == "train":
        sys.argv = [sys.argv[0], *rest]
        train()
        return 0
    if command == "report":
        from bnexp.report import main as report

        return report(rest)
    print(f"bnexp: error: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
