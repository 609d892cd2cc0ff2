"""Santurkar et al.'s probes (internal covariate shift, the loss landscape) and noisy BN.

The probes are checked against plainly written computations (a 3-layer network by hand, a
quadratic with closed forms), and against the run itself: with probes on, the trajectory is
bitwise the one without them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnexp import checkpoint
from bnexp.config import validate
from bnexp.errors import UserError
from bnexp.models.mlp import MLP
from bnexp.norm import NoisyBatchNorm
from bnexp.probes import StepProbes, landscape
from bnexp.runs import load_run
from bnexp.train import run

from conftest import FAST

# --- ICS: the probe inside a training loop against the definition computed by hand -------------

def by_hand(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The 3-layer sigmoid network written out: W1, b1, W2, b2, W3, b3."""
    w1, b1, w2, b2, w3, b3 = params
    h1 = torch.sigmoid(x @ w1.T + b1)
    h2 = torch.sigmoid(h1 @ w2.T + b2)
    return F.cross_entropy(h2 @ w3.T + b3, y)


def grad_of(params: list[torch.Tensor], i: int, x, y) -> torch.Tensor:
    leaves = [p.detach().clone().requires_grad_(j == i) for j, p in enumerate(params)]
    return torch.autograd.grad(by_hand(leaves, x, y), leaves[i])[0]


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 1e-2)])
def test_ics_equals_definition_2_1_computed_by_hand(momentum, weight_decay):
    torch.manual_seed(0)
    model = MLP(6, 3, [5, 4], "sigmoid", 0.5, lambda c, kind: None)
    lr = 0.5
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    probes = StepProbes(_probe_cfg(ics_every=1), model)
    hand = [p.detach().clone() for p in model.parameters()]  # the same network, kept by hand
    velocity = [torch.zeros_like(p) for p in hand]
    for step in range(3):  # step 0 has no momentum yet; 1 and 2 do
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        probes.before_step()
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        measured = probes.measure(step + 1, x, y, lr)

        grads = [grad_of(hand, i, x, y) for i in range(len(hand))]
        for i, g in enumerate(grads):  # SGD as torch defines it: d = g + wd * w; v = mu * v + d; w -= lr * v
            d = g + weight_decay * hand[i]
            velocity[i] = momentum * velocity[i] + d if step else d.clone()
        updated = [w - lr * v for w, v in zip(hand, velocity, strict=True)]
        for layer, index in (("hidden1", 0), ("hidden2", 2), ("output", 4)):
            G = grads[index]
            shifted = grad_of(updated[:index] + hand[index:], index, x, y)  # layers before it moved, only
            assert measured[f"ics/{layer}/l2"] == pytest.approx((G - shifted).norm().item(), rel=1e-4, abs=1e-7)
            cos = torch.dot(G.flatten().double(), shifted.flatten().double()) / (G.norm() * shifted.norm())
            assert measured[f"ics/{layer}/cos"] == pytest.approx(cos.item(), abs=1e-5)
        assert measured["ics/hidden1/l2"] == 0  # nothing comes before the first layer
        assert measured["ics/output/l2"] > 0
        hand = updated
        for p, w in zip(model.parameters(), hand, strict=True):
            torch.testing.assert_close(p.detach(), w, rtol=1e-5, atol=1e-6)


def test_inception_ics_layers_are_upstream_of_their_convolution(compose):
    from bnexp import models

    cfg = compose("model=inception", "model.width=0.0625", "model.stem=small", "data=synthetic")
    model = models.build(cfg.model, cfg.norm, (1, 28, 28), 10)
    layers = model.ics_layers()
    assert list(layers) == ["inception3a", "inception4c", "inception5b"]
    weight, upstream = layers["inception4c"]
    assert weight == "blocks.4c.double3.2.conv.weight"
    assert "blocks.4b.branch1.conv.weight" in upstream and "stem.0.conv.weight" in upstream
    assert "blocks.4c.double3.1.conv.weight" in upstream
    # The parallel branches of 4c do not feed its double-3x3 branch; 4c's own unit and later ones are not upstream.
    assert not any(n.startswith(("blocks.4c.branch", "blocks.4c.pool", "blocks.4c.double3.2", "blocks.4d"))
                   for n in upstream)


# --- the landscape probe on a quadratic, where everything has a closed form ----------------------

def test_landscape_on_a_quadratic_has_its_closed_forms():
    h = torch.tensor([[3.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.5]], dtype=torch.float64)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def loss_at(params):
        v = params["w"]
        return 0.5 * v @ h @ v

    etas = [0.05, 0.1, 0.2, 0.3]
    got = landscape(loss_at, {"w": w}, etas)
    g = h @ w  # the gradient at w; at w - eta g it is g - eta H g
    losses = [float(loss_at({"w": w}) - eta * g @ g + 0.5 * eta**2 * g @ h @ g) for eta in etas]
    assert got["landscape/loss_range"] == pytest.approx(max(losses) - min(losses), rel=1e-9)
    assert got["landscape/grad_change"] == pytest.approx(max(etas) * (h @ g).norm().item(), rel=1e-9)
    # beta: the curvature along g, ||H g|| / ||g||, the same at every step size
    assert got["landscape/beta_smoothness"] == pytest.approx(((h @ g).norm() / g.norm()).item(), rel=1e-9)


def test_landscape_of_a_diverging_point_is_nan_not_hidden_by_max():
    def loss_at(params):
        v = params["w"]
        return torch.where(v.abs().max() > 2, torch.tensor(float("nan"), dtype=v.dtype), (v**2).sum())

    got = landscape(loss_at, {"w": torch.tensor([1.0], dtype=torch.float64)}, [0.1, 2.0])
    assert math.isnan(got["landscape/loss_range"])


# --- probes observe, never steer ------------------------------------------------------------------

def final_state(run_dir: Path) -> dict:
    return torch.load(checkpoint.checkpoints(run_dir)[0], weights_only=False)


@pytest.mark.parametrize("case", [
    ["norm=none", "optim.momentum=0.9"],
    ["norm=batch", "optim.momentum=0.9"],
    ["norm=noisy_batch", "optim.momentum=0.9"],
    # dropout in play, and noise: a small Inception with BN
    ["model=inception", "model.width=0.0625", "model.stem=small", "model.dropout=0.4", "norm=noisy_batch",
     "data.shape=[1,16,16]", "optim.lr=0.05", "optim.momentum=0.9", "trainer.max_steps=20", "trainer.log_every=5",
     "trainer.eval_every=10"],
], ids=["mlp-none", "mlp-batch", "mlp-noisy_batch", "inception-dropout-noisy_batch"])
def test_probes_leave_the_trajectory_bitwise_unchanged(compose, tmp_path, case):
    overrides = [*FAST, "trainer.checkpoint_every=0", "trainer.threads=1", *case]
    every = "5" if "model=inception" in case else "20"
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()
    [off] = run(compose(*overrides), tmp_path / "off").values()
    [on] = run(compose(*overrides, f"probes.ics_every={every}", f"probes.landscape_every={every}"),
               tmp_path / "on").values()
    assert off["status"] == on["status"] == "completed"
    a, b = final_state(tmp_path / "off"), final_state(tmp_path / "on")
    for name, value in a["model"].items():  # parameters and BN running statistics
        assert torch.equal(b["model"][name], value), name
    for i, s in a["optimizer"]["state"].items():
        assert torch.equal(b["optimizer"]["state"][i]["momentum_buffer"], s["momentum_buffer"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])  # the random stream where it would be
    run_off, run_on = load_run(tmp_path / "off"), load_run(tmp_path / "on")
    assert run_on.curves["train/loss"] == run_off.curves["train/loss"]
    assert run_on.curves["test/accuracy"] == run_off.curves["test/accuracy"]
    probed = sorted(run_on.curves["landscape/beta_smoothness"])
    assert probed == list(range(int(every), on["steps"] + 1, int(every)))
    assert any(tag.startswith("ics/") for tag in run_on.curves)
    assert not any(tag.startswith(("ics/", "landscape/")) for tag in run_off.curves)


def test_probed_runs_are_seeds_of_one_variant_and_appear_in_the_dashboard(compose, tmp_path):
    from bnexp.config import EXECUTION_SETTINGS

    assert {"probes.ics_every", "probes.landscape_every", "probes.landscape_steps"} <= EXECUTION_SETTINGS
    (tmp_path / "r").mkdir()
    run(compose(*FAST, "trainer.max_steps=50", "trainer.eval_every=50", "probes.ics_every=25",
                "probes.landscape_every=25"), tmp_path / "r")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "r"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"ics/hidden2/l2", "ics/output/cos", "landscape/loss_range", "landscape/grad_change"} <= set(tags)


@pytest.mark.parametrize("override, message", [
    (["probes.ics_every=-1"], "probes.ics_every must be a whole number >= 0"),
    (["probes.landscape_every=1.5"], "probes.landscape_every must be a whole number"),
    (["probes.landscape_steps=[0.5,0]"], "probes.landscape_steps must be a number > 0"),
    (["probes.ics_every=10", "trainer.replicas=2"], "run the seeds separately"),
    (["norm=noisy_batch", "trainer.replicas=2"], "norm=noisy_batch draws its noise"),
    (["norm=noisy_batch", "norm.scale_mean=1.5"], "norm.scale_mean must be a number [0, 1]"),
    (["norm=noisy_batch", "trainer.batch_size=1"], "norm=noisy_batch needs more than one example"),
])
def test_bad_probe_and_noise_settings_are_refused(compose, override, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(compose(*override))


def test_probes_are_refused_under_torchrun(compose, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="without torchrun"):
        validate(compose("probes.landscape_every=10"))


# --- noisy BN -------------------------------------------------------------------------------------

def test_noisy_batch_noise_follows_its_configured_distributions():
    torch.manual_seed(0)
    layer = NoisyBatchNorm(64, scale_mean=0.4, scale_std=0.3, shift_mean=0.6, shift_std=0.2)
    x = torch.zeros(2000, 64)
    per_step = {"scale_mean": [], "scale_std": [], "shift_mean": [], "shift_std": []}
    for _ in range(50):  # 50 steps x 64 features: one distribution per feature and step
        scale, shift = layer.noise(x)
        for name, noise in (("scale", scale), ("shift", shift)):
            std, mean = torch.std_mean(noise, 0)  # over the 2,000 examples: that step's distribution
            per_step[f"{name}_mean"].append(mean)
            per_step[f"{name}_std"].append(std)
    stats = {k: torch.cat(v) for k, v in per_step.items()}

    def uniform(values, low, high):
        # within the range (2,000 draws estimate a mean to ~0.01), uniform: its mean and spread
        assert values.min() > low - 0.03 and values.max() < high + 0.03
        assert values.mean().item() == pytest.approx((low + high) / 2, abs=0.01)
        assert values.std().item() == pytest.approx((high - low) / math.sqrt(12), rel=0.05)

    uniform(stats["scale_mean"], 0.6, 1.4)
    uniform(stats["scale_std"], 0.0, 0.3)
    uniform(stats["shift_mean"], -0.6, 0.6)
    uniform(stats["shift_std"], 0.0, 0.2)
    # redrawn every step: a feature's mean shift differs from one step to the next
    assert not torch.allclose(per_step["shift_mean"][0], per_step["shift_mean"][1], atol=0.05)


@pytest.mark.parametrize("shape", [(16, 8), (16, 8, 5, 5)])
def test_noisy_batch_without_noise_is_batch_and_has_no_noise_at_inference(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 3 + 1
    bn = (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d)(8)
    quiet = NoisyBatchNorm(8, scale_mean=0, scale_std=0, shift_mean=0, shift_std=0)
    noisy = NoisyBatchNorm(8)
    assert torch.equal(quiet(x), bn(x))
    assert torch.equal(quiet.running_mean, bn.running_mean) and torch.equal(quiet.running_var, bn.running_var)
    assert not torch.allclose(noisy(x), bn(x), atol=0.1)
    for m in (bn, noisy):
        m.eval()
    noisy.load_state_dict(bn.state_dict())
    assert torch.equal(noisy(x), bn(x))  # inference: the population statistics, no noise


def _probe_cfg(ics_every=0, landscape_every=0):
    from omegaconf import OmegaConf

    return OmegaConf.create({"ics_every": ics_every, "landscape_every": landscape_every,
                             "landscape_steps": [0.5, 1.0]})


def test_report_draws_each_probe_per_variant_with_mean_and_band_over_seeds(compose, tmp_path):
    import csv
    import statistics

    from bnexp import report

    for norm in ("none", "batch"):
        for seed in (0, 1):
            (tmp_path / "runs" / f"{norm}_{seed}").mkdir(parents=True)
            run(compose(*FAST, "trainer.max_steps=40", "trainer.eval_every=20", f"norm={norm}", f"trainer.seed={seed}",
                        "probes.ics_every=20", "probes.landscape_every=40"), tmp_path / "runs" / f"{norm}_{seed}")
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "ics.png").stat().st_size > 0 and (tmp_path / "out" / "landscape.png").stat().st_size > 0
    with open(tmp_path / "out" / "probes.csv") as f:
        rows = {(r["tag"], r["variant"], int(r["step"])): r for r in csv.DictReader(f)}
    row = rows["ics/hidden3/l2", "norm=batch", 40]
    values = [load_run(tmp_path / "runs" / f"batch_{s}").curves["ics/hidden3/l2"][40] for s in (0, 1)]
    assert int(row["runs"]) == 2
    assert float(row["mean"]) == pytest.approx(statistics.fmean(values))
    assert float(row["min"]) == pytest.approx(min(values)) and float(row["max"]) == pytest.approx(max(values))
    assert ("landscape/beta_smoothness", "norm=none", 40) in rows
    assert ("landscape/beta_smoothness", "norm=none", 20) not in rows  # taken every 40 steps only


# --- the gradient probe: the step's own gradient norms, free and without effect ------------------

def scalars_of(run_dir: Path, prefix: str) -> dict[tuple[int, str], float]:
    rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    return {(int(step), tag): float(v) for step, tag, v in rows if tag.startswith(prefix)}


def test_gradient_norms_are_the_steps_own_and_change_nothing(compose, tmp_path):
    from bnexp import data, models

    overrides = [*FAST, "model.hidden=[20,20]", "trainer.max_steps=100", "optim.weight_decay=0.01"]
    with_probe, without = tmp_path / "with", tmp_path / "without"
    run(compose(*overrides, "probes.grad_every=40"), with_probe)
    run(compose(*overrides), without)
    grads = scalars_of(with_probe, "grad/")
    assert sorted({s for s, _ in grads}) == [1, 40, 80]  # the first step (initial weights), then every 40
    assert {t for _, t in grads} == {"grad/hidden1/norm", "grad/hidden2/norm", "grad/output/norm"}
    assert all(math.isfinite(v) and v > 0 for v in grads.values())
    # The first step's value is the gradient of the loss on batch 0 at the initial weights, by hand.
    cfg = compose(*overrides)
    source = data.build(cfg.data, cfg.trainer, torch.device("cpu"))
    torch.manual_seed(cfg.trainer.seed)
    model = models.build(cfg.model, cfg.norm, source.input_shape, source.num_classes)
    x, y = source.next_batch(0)
    F.cross_entropy(model(x), y).backward()
    assert grads[(1, "grad/hidden1/norm")] == pytest.approx(model.hidden[0].linear.weight.grad.norm().item(), rel=1e-5)
    # and the run is bitwise the one without the probe
    assert scalars_of(with_probe, "t") == scalars_of(without, "t")  # train/..., test/...


def test_replicas_log_each_seeds_own_gradient_norms(compose, tmp_path):
    overrides = [*FAST, "model.hidden=[20,20]", "trainer.max_steps=100", "probes.grad_every=50"]
    run(compose(*overrides, "trainer.replicas=2"), tmp_path / "group")
    run(compose(*overrides, "trainer.seed=1"), tmp_path / "alone")
    stacked, alone = scalars_of(tmp_path / "group" / "seed_1", "grad/"), scalars_of(tmp_path / "alone", "grad/")
    assert stacked.keys() == alone.keys() and len(alone) == 3 * 3
    assert all(stacked[k] == pytest.approx(alone[k], rel=1e-4) for k in alone)
    assert stacked != scalars_of(tmp_path / "group" / "seed_0", "grad/")


# --- the variance shift (Li et al. 2019): test-time input variance / BN's moving variance ----------

def test_variance_shift_is_the_test_variance_over_the_moving_variance():
    from bnexp.probes import VarianceShift

    bn = nn.BatchNorm1d(3)
    bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25]))
    net = nn.Sequential(bn).eval()
    shift = VarianceShift(net)
    x = torch.randn(1000, 3, dtype=torch.float64)
    with shift.recording():
        for part in x.split(300):  # over batches, as the test set is evaluated
            net(part.float())
    expected = (x.float().double().var(0) / bn.running_var.double()).mean().item()
    assert shift.ratios() == {"varshift/0": pytest.approx(expected, rel=1e-9)}


def test_dropout_before_bn_shifts_its_variance_and_dropout_after_every_bn_does_not(compose, tmp_path):
    base = [*FAST, "model.activation=relu", "model.dropout=0.5", "probes.variance_shift=true", "trainer.max_steps=300"]
    for where in ("every", "last"):
        run(compose(*base, f"model.dropout_at={where}"), tmp_path / where)
    final = {where: {t: v for (s, t), v in scalars_of(tmp_path / where, "varshift/").items() if s == 300}
             for where in ("every", "last")}
    assert set(final["every"]) == {"varshift/hidden.0.norm", "varshift/hidden.1.norm", "varshift/hidden.2.norm"}
    # The first BN has no dropout before it; the later ones do when dropout is in every block.
    assert final["every"]["varshift/hidden.0.norm"] == pytest.approx(1, abs=0.15)
    assert all(final["every"][f"varshift/hidden.{i}.norm"] < 0.85 for i in (1, 2))
    assert all(v == pytest.approx(1, abs=0.15) for v in final["last"].values())
