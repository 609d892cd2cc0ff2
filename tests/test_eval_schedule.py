"""The evaluation schedule: where the test set is evaluated, how precisely that places a
step-to-target, and that a resumed run evaluates at the same steps."""

import bisect
import csv
import signal

import pytest
from omegaconf import OmegaConf

from bnexp.builders import evaluation_steps
from bnexp.summary import first_step_reaching
from bnexp.train import run
from bnexp.trainer import Trainer

from conftest import only


def schedule(**trainer):
    return OmegaConf.create({"max_steps": 1000, "eval_schedule": "every", "eval_every": 300, "eval_first": 10,
                             "eval_ratio": 1.1, **trainer})


def test_every_n_steps_plus_the_first_and_the_last():
    assert sorted(evaluation_steps(schedule())) == [0, 300, 600, 900, 1000]
    assert sorted(evaluation_steps(schedule(max_steps=900))) == [0, 300, 600, 900]


def test_geometric_steps_are_dense_early_and_sparse_late():
    steps = sorted(evaluation_steps(schedule(eval_schedule="geometric", max_steps=20_000)))
    assert steps[:3] == [0, 10, 11] and steps[-1] == 20_000
    assert all(b > a for a, b in zip(steps, steps[1:], strict=False))
    gaps = [b - a for a, b in zip(steps[1:], steps[2:], strict=False)]
    assert gaps[0] == 1 and gaps[-1] > 1000
    assert len(steps) < 100  # 10 to 20,000 at ratio 1.1: about 80 evaluations, not 2,000


@pytest.mark.parametrize("ratio", [1.05, 1.1, 1.5])
def test_any_step_to_target_is_known_to_within_the_ratio(ratio):
    """Whatever step t a run first reaches its target at, the first evaluation at or after t
    (the step the summary reports) is at most ratio * t: a resolution that is a ratio."""
    evaluated = sorted(evaluation_steps(schedule(eval_schedule="geometric", eval_ratio=ratio, max_steps=50_000)))
    for t in range(10, 50_001):
        found = evaluated[bisect.bisect_left(evaluated, t)]
        assert t <= found <= ratio * t
    history = [(s, float(s >= 777)) for s in evaluated]  # as the summary finds it: accuracy 1 from step 777 on
    assert 777 <= first_step_reaching(history, 1.0) <= ratio * 777


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(int(r["step"]), r["tag"], r["value"]) for r in csv.DictReader(f) if r["tag"] != "perf/steps_per_s"]


GEOMETRIC = ["data=synthetic", "trainer.max_steps=300", "trainer.eval_schedule=geometric", "trainer.eval_first=5",
             "trainer.eval_ratio=1.3", "trainer.log_every=50", "trainer.checkpoint_every=100", "trainer.threads=1",
             "trainer.progress=false"]


def test_a_run_evaluates_on_its_schedule_and_a_resumed_run_on_the_same_steps(tmp_path, compose, monkeypatch):
    cfg = compose(*GEOMETRIC)
    (tmp_path / "whole").mkdir()
    (tmp_path / "resumed").mkdir()
    [summary] = run(cfg, tmp_path / "whole").values()
    whole = read_metrics(tmp_path / "whole")
    evaluated = sorted(s for s, tag, _ in whole if tag == "test/accuracy")
    assert evaluated == sorted(evaluation_steps(cfg.trainer))
    assert summary["steps_to_target"]["0.95"] in evaluated

    # The same run stopped (as by SIGTERM) at step 150, between checkpoints, then resumed.
    end_window = Trainer.end_window

    def stop_at_150(self, *window_and_lr):
        if self.step == 150:
            self.stop_signal = signal.SIGTERM
        return end_window(self, *window_and_lr)

    monkeypatch.setattr(Trainer, "end_window", stop_at_150)
    assert only(run(cfg, tmp_path / "resumed"))["status"] == "interrupted"
    monkeypatch.undo()
    assert only(run(cfg, tmp_path / "resumed"))["status"] == "completed"
    assert read_metrics(tmp_path / "resumed") == whole
