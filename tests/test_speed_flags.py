"""The speed flags (bf16 autocast, channels_last, torch.compile) run on CPU and change results only
by numerical noise."""

import pytest

from bnexp.train import run

from conftest import only

BASE = ["data=synthetic", "data.n_train=256", "data.n_test=64", "trainer.max_steps=20", "trainer.eval_every=20",
        "trainer.log_every=10", "trainer.progress=false", "trainer.batch_size=16"]


def train(tmp_path, compose, name, *overrides):
    cfg = compose(*BASE, *overrides)
    (tmp_path / name).mkdir()
    return only(run(cfg, tmp_path / name)), (tmp_path / name / "metrics.csv").read_text()


def train_losses(csv_text):
    return [float(line.split(",")[2]) for line in csv_text.splitlines() if ",train/loss," in line]


def test_amp_and_channels_last_match_the_plain_run(tmp_path, compose):
    inception = ["model=inception", "model.width=0.0625", "model.stem_pool=true", "norm=batch", "optim.lr=0.05"]
    plain, plain_csv = train(tmp_path, compose, "plain", *inception)
    fast, fast_csv = train(tmp_path, compose, "fast", *inception, "trainer.amp=true", "trainer.channels_last=true")
    assert fast["status"] == plain["status"] == "completed"
    # bf16 keeps 8 bits of mantissa: losses agree to about a percent, not bitwise.
    assert train_losses(fast_csv) == pytest.approx(train_losses(plain_csv), rel=0.05)


def test_compile_matches_eager(tmp_path, compose):
    eager, eager_csv = train(tmp_path, compose, "eager", "norm=batch")
    compiled, compiled_csv = train(tmp_path, compose, "compiled", "norm=batch", "trainer.compile=true")
    assert compiled["status"] == "completed"
    assert train_losses(compiled_csv) == pytest.approx(train_losses(eager_csv), rel=1e-4, abs=1e-5)
    assert compiled["final_accuracy"] == pytest.approx(eager["final_accuracy"], abs=1 / 64)
