"""The speed flags (bf16 autocast, channels_last, torch.compile) run on CPU and change results only
by numerical noise: at a tolerance far below what another seed changes, wherever the network is
smooth enough for rounding not to compound (the small Inception net is chaotic within a few steps:
there, one step is compared)."""

import copy

import pytest
import torch

from bnexp import data, models
from bnexp.builders import make_optimizer
from bnexp.stepper import OneModel
from bnexp.train import run

from conftest import only

BASE = ["data=synthetic", "data.n_train=256", "data.n_test=64", "trainer.max_steps=20", "trainer.eval_every=20",
        "trainer.log_every=10", "trainer.progress=false", "trainer.batch_size=16"]
INCEPTION = ["model=inception", "model.width=0.0625", "model.stem_pool=true", "norm=batch", "optim.lr=0.05"]


def train(tmp_path, compose, name, *overrides, base=BASE):
    cfg = compose(*base, *overrides)
    (tmp_path / name).mkdir()
    return only(run(cfg, tmp_path / name)), (tmp_path / name / "metrics.csv").read_text()


def train_losses(csv_text):
    return [float(line.split(",")[2]) for line in csv_text.splitlines() if ",train/loss," in line]


def relative(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def test_fp32_channels_last_takes_the_plain_step(compose):
    """One SGD step of the Inception net in fp32, NHWC against NCHW: the same loss and logits to float
    rounding, and an update within a percent of the exact one (the step in float64), where a layout
    mix-up is off by its whole size. How close each layout comes depends on the CPU's kernels (off by
    1e-3 of the update on one CPU and 1e-6 on another, mostly in the stem's BN gradients, which are
    ill-conditioned), so neither is held to the other's error; and one step, not a run: the net is
    chaotic under any change of rounding."""
    cfg = compose(*BASE, *INCEPTION, "optim.momentum=0.9", "model.dropout=0")  # no masks to tell apart
    source = data.build(cfg.data, cfg.trainer, torch.device("cpu"))
    torch.manual_seed(0)
    plain = models.build(cfg.model, cfg.norm, source.input_shape, source.num_classes)
    nets = {"plain": plain, "channels_last": copy.deepcopy(plain), "float64": copy.deepcopy(plain).double()}
    initial = {k: v.double() for k, v in plain.state_dict().items() if v.is_floating_point()}
    x, y = source.next_batch(0)
    out = {}
    for name, model in nets.items():
        flags = compose(*BASE, f"trainer.channels_last={name == 'channels_last'}").trainer
        stepper = OneModel(model, make_optimizer(model.parameters(), cfg.optim), flags)
        out[name] = stepper.step((x.double() if name == "float64" else x)[None], y[None], 0.05)
    assert nets["channels_last"].stem[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out["channels_last"][0], out["plain"][0], rtol=1e-6, atol=0)  # loss
    torch.testing.assert_close(out["channels_last"][1], out["plain"][1], rtol=1e-4, atol=1e-4)  # logits, O(1)

    def update(name):
        state = nets[name].state_dict()
        return torch.cat([(state[k].double() - w0).flatten() for k, w0 in initial.items()])

    exact = update("float64")
    error = {name: ((update(name) - exact).norm() / exact.norm()).item() for name in ("plain", "channels_last")}
    assert max(error.values()) < 1e-2, error


def test_amp_follows_the_fp32_run_of_the_paper_mlp(tmp_path, compose):
    """bf16 autocast: 300 steps of the MLP with BN, whose loss falls 50-fold; each window's loss within
    0.2% of the fp32 run's, where another seed's run differs by more than 2%."""
    base = ["data=synthetic", "trainer.max_steps=300", "trainer.eval_every=300", "trainer.log_every=50",
            "trainer.progress=false", "trainer.checkpoint_every=0", "norm=batch", "optim.lr=0.5"]
    fp32, fp32_csv = train(tmp_path, compose, "fp32", base=base)
    amp, amp_csv = train(tmp_path, compose, "amp", "trainer.amp=true", base=base)
    _, other_seed_csv = train(tmp_path, compose, "seed1", "trainer.seed=1", base=base)
    losses = train_losses(fp32_csv)
    assert amp["status"] == "completed" and losses[-1] < losses[0] / 20
    assert relative(train_losses(amp_csv), losses) < 2e-3
    assert relative(train_losses(other_seed_csv), losses) > 2e-2
    assert amp["final_accuracy"] == pytest.approx(fp32["final_accuracy"], abs=2 / 512)


def test_amp_and_channels_last_run_the_inception_net(tmp_path, compose):
    """Both flags at once, 20 steps of a net that is chaotic under any change of rounding: the run
    completes and its losses stay within a few percent of fp32's (bf16 keeps 8 bits of mantissa)."""
    plain, plain_csv = train(tmp_path, compose, "plain", *INCEPTION)
    fast, fast_csv = train(tmp_path, compose, "fast", *INCEPTION, "trainer.amp=true", "trainer.channels_last=true")
    assert fast["status"] == plain["status"] == "completed"
    assert train_losses(fast_csv) == pytest.approx(train_losses(plain_csv), rel=0.05)


def test_compile_matches_eager(tmp_path, compose):
    eager, eager_csv = train(tmp_path, compose, "eager", "norm=batch")
    compiled, compiled_csv = train(tmp_path, compose, "compiled", "norm=batch", "trainer.compile=true")
    assert compiled["status"] == "completed"
    assert train_losses(compiled_csv) == pytest.approx(train_losses(eager_csv), rel=1e-4, abs=1e-5)
    assert compiled["final_accuracy"] == pytest.approx(eager["final_accuracy"], abs=1 / 64)
