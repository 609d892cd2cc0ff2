"""Tuning the way Hydra users do it: `optimized_metric` makes the task return one number, so that
Hydra's Optuna sweeper can drive `bnexp train -m`; diverged and failed trials are reported as such."""

import math

import pytest
from omegaconf import OmegaConf

from bnexp.cli import objective
from bnexp.config import validate
from bnexp.errors import UserError

from conftest import summaries

SWEEP = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.sampler.seed=0", "hydra.sweeper.n_trials=2",
         "hydra.sweeper.n_jobs=1", "data=synthetic", "trainer.max_steps=50", "trainer.eval_every=50",
         "trainer.progress=false", "norm=none", "model.activation=relu"]


def test_a_real_optuna_sweep_completes_and_reports_its_diverged_trial(bnexp, runs_root):
    """Two trials, one at lr 1e30 (diverges at once): a failed trial with its reason, not a crash;
    the best is the other one, with the best accuracy its own summary holds."""
    done = bnexp("train", *SWEEP, "hydra.sweeper.direction=maximize", "optim.lr=choice(0.05,1e30)",
                 "optimized_metric=best_accuracy", f"hydra.sweep.dir={runs_root / 'sweep'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Failed experiment: Return value must be float-castable. Got 'diverged at step" in done.stdout
    assert "2 jobs: 1 completed, 1 diverged" in done.stderr
    result = OmegaConf.load(runs_root / "sweep" / "optimization_results.yaml")
    [completed] = [s for s in summaries(runs_root) if s["status"] == "completed"]
    assert result.best_params["optim.lr"] == 0.05 and result.best_value == completed["best_accuracy"]


def test_a_sweeper_set_to_minimize_an_accuracy_is_refused_before_any_trial(bnexp, runs_root):
    done = bnexp("train", *SWEEP, "optim.lr=choice(0.05,0.1)", "optimized_metric=best_accuracy")
    assert done.returncode == 2
    assert done.stderr.strip() == ("bnexp: error: optimized_metric=best_accuracy is to maximize, but the sweeper is "
                                   "set to minimize: set hydra.sweeper.direction=maximize")
    assert not summaries(runs_root)


def summary(status="completed", best=0.9, steps=None, diverged_at=None, error=None):
    return {"status": status, "best_accuracy": best, "final_accuracy": best, "steps_to_target": {"0.98": steps},
            "diverged_at_step": diverged_at, **({"error": error} if error else {})}


def test_the_objective_is_the_mean_over_seeds_and_says_why_a_setting_did_not_train():
    assert objective([summary(best=0.9), summary(best=0.8)], "best_accuracy", 100) == pytest.approx(0.85)
    assert objective([summary(steps=40), summary(steps=None)], "steps_to_target.0.98", 100) == 70  # never: 100
    diverged = summary("diverged", diverged_at=12, steps=None)
    assert objective([summary(steps=40), diverged], "steps_to_target.0.98", 100) == 70  # it never got there
    assert objective([summary(), diverged], "best_accuracy", 100) == "diverged at step 12"
    assert objective([summary("failed", error="disk full")], "steps_to_target.0.98", 100) == "failed: disk full"
    assert not isinstance(objective([summary()], "final_accuracy", 100), str)
    assert math.isfinite(objective([summary()], "final_accuracy", 100))


@pytest.mark.parametrize("override, message", [
    ("optimized_metric=accuracy", "optimized_metric must be null or one of best_accuracy, final_accuracy"),
    ("optimized_metric=steps_to_target.0.5", "steps_to_target.0.95, steps_to_target.0.97, steps_to_target.0.98"),
    ("optimized_never=0", "optimized_never must be a whole number > 0 or null"),
])
def test_bad_objectives_are_refused(compose, override, message):
    with pytest.raises(UserError, match=message):
        validate(compose("data=synthetic", override))


def test_the_learning_rate_search_preset_composes(compose):
    cfg = compose("hparams_search=fig1_lr", "norm=none")
    assert cfg.optimized_metric == "best_accuracy" and cfg.name == "fig1_mnist" and cfg.trainer.max_steps == 50000
    validate(cfg)
