"""Every normalization variant against a reference, and in every model."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from bnexp import models, norm
from bnexp.config import compose
from bnexp.errors import UserError

CFG = {
    "batch": {"eps": 1e-5, "momentum": 0.1},
    "batch_paper": {"eps": 1e-5, "momentum": 0.1},
    "batch_renorm": {"eps": 1e-5, "rate": 0.01, "warmup_steps": 5, "rmax": 3.0, "rmax_steps": 40, "dmax": 5.0,
                     "dmax_steps": 25},
    "ghost": {"eps": 1e-5, "momentum": 0.1, "virtual_batch": 4},
    "noisy_batch": {"eps": 1e-5, "momentum": 0.1, "scale_mean": 0.5, "scale_std": 0.5, "shift_mean": 0.5,
                    "shift_std": 0.5},
    "layer": {"eps": 1e-5},
    "group": {"eps": 1e-5, "groups": 2},
    "instance": {"eps": 1e-5},
}


def builder(name, **overrides):
    return norm.make(OmegaConf.create({"name": name, **CFG[name], **overrides}))


@pytest.mark.parametrize("shape, kind, reference",
                         [((16, 6), "fc", nn.BatchNorm1d), ((8, 6, 5, 5), "conv", nn.BatchNorm2d)])
def test_paper_bn_equals_torch_bn(shape, kind, reference):
    torch.manual_seed(0)
    ours, theirs = builder("batch_paper")(6, kind).double(), reference(6).double()
    with torch.no_grad():
        for layer in (ours, theirs):
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.uniform_(-0.5, 0.5)
        theirs.weight.copy_(ours.weight)
        theirs.bias.copy_(ours.bias)
    for _ in range(3):  # training mode: outputs, gradients and running statistics
        x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        g = torch.randn(shape, dtype=torch.float64)
        (ours(x) * g).sum().backward()
        (theirs(x2) * g).sum().backward()
        assert torch.allclose(ours(x), theirs(x2))
        assert torch.allclose(x.grad, x2.grad)
    assert torch.allclose(ours.weight.grad, theirs.weight.grad) and torch.allclose(ours.bias.grad, theirs.bias.grad)
    # Ours ran twice per step above (the comparison updates running statistics too), so match the
    # statistics before comparing inference; the next test compares the running statistics themselves.
    ours.running_mean.copy_(theirs.running_mean)
    ours.running_var.copy_(theirs.running_var)
    ours.eval(), theirs.eval()
    x = torch.randn(shape, dtype=torch.float64)
    assert torch.allclose(ours(x), theirs(x))


def test_paper_bn_running_statistics_follow_torch():
    torch.manual_seed(1)
    ours, theirs = builder("batch_paper")(3, "fc"), nn.BatchNorm1d(3)
    for _ in range(5):
        x = torch.randn(10, 3) * 2 + 3
        ours(x), theirs(x)
    assert torch.allclose(ours.running_mean, theirs.running_mean, atol=1e-6)
    assert torch.allclose(ours.running_var, theirs.running_var, atol=1e-6)


def test_paper_bn_gradcheck():
    layer = builder("batch_paper")(3, "conv").double()
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


@pytest.mark.parametrize("name", ["batch_paper", "batch"])
def test_finalize_gives_the_unbiased_population_variance(name):
    layer = builder(name)(1, "fc")
    batches = [torch.tensor([[2.0], [4.0], [6.0], [8.0]]), torch.tensor([[1.0], [1.0], [3.0], [3.0]])]
    model = nn.Sequential(layer)
    assert norm.finalize_population(model, batches) == 2
    # batch means 5 and 2, biased variances 5 and 1: E[x] = 3.5, Var[x] = 4/3 * 3 = 4
    assert layer.running_mean.item() == pytest.approx(3.5)
    assert layer.running_var.item() == pytest.approx(4.0)
    assert model.training  # restored
    assert getattr(layer, "momentum", 0.1) == 0.1  # torch BN's momentum too


def test_batch_renorm_with_rmax_1_dmax_0_is_bn():
    torch.manual_seed(2)
    renorm = builder("batch_renorm", rmax=1.0, dmax=0.0, eps=1e-5)(4, "conv")
    bn = nn.BatchNorm2d(4)
    for _ in range(60):  # past warm-up: the limits stay 1 and 0
        x = torch.randn(8, 4, 3, 3) * 2 + 1
        assert torch.allclose(renorm(x), bn(x), atol=1e-5)


def test_batch_renorm_corrects_towards_the_moving_averages():
    renorm = builder("batch_renorm", warmup_steps=0, rmax_steps=1, dmax_steps=1)(1, "fc")
    renorm.running_mean.fill_(1.0)
    renorm.running_std.fill_(2.0)
    renorm.steps.fill_(10)
    x = torch.tensor([[2.0], [4.0], [6.0], [8.0]])  # mean 5, std sqrt(5)
    y = renorm(x).squeeze(1)
    xhat = (x.squeeze(1) - 5) / 5 ** 0.5
    r, d = 5 ** 0.5 / 2, min((5 - 1) / 2, 5.0)
    assert y.tolist() == pytest.approx((xhat * r + d).tolist(), abs=1e-4)


def test_batch_renorm_schedule():
    layer = builder("batch_renorm")(1, "fc")  # warm-up 5, rmax 3 by 40, dmax 5 by 25
    assert layer.limits(5) == (1.0, 0.0)
    assert layer.limits(40) == pytest.approx((3.0, 5.0))
    assert layer.limits(15) == pytest.approx((1 + 2 * 10 / 35, 5 * 10 / 20))


@pytest.mark.parametrize("shape, kind", [((8, 6), "fc"), ((8, 6, 3, 3), "conv")])
def test_ghost_with_virtual_batch_equal_to_the_batch_is_bn(shape, kind):
    ghost = builder("ghost", virtual_batch=8)(6, kind)
    bn = (nn.BatchNorm1d if kind == "fc" else nn.BatchNorm2d)(6)
    x = torch.randn(shape)
    assert torch.allclose(ghost(x), bn(x), atol=1e-6)
    assert torch.allclose(ghost.running_var, bn.running_var)


def test_ghost_normalizes_each_virtual_batch():
    ghost = builder("ghost", virtual_batch=4)(2, "fc")
    # Virtual batches of different location and scale: normalizing the whole batch would leave each
    # one off zero mean and unit variance.
    x = torch.cat([torch.randn(4, 2) * (k + 1) * 5 + 3 * k for k in range(3)])
    y = ghost(x)
    for chunk in y.split(4):
        assert chunk.mean(0).abs().max() < 1e-5
        torch.testing.assert_close(chunk.var(0, unbiased=False), torch.ones(2), atol=1e-3, rtol=0)


def test_layer_group_instance_match_torch_functional():
    x = torch.randn(4, 6, 5, 5)
    layer, group, instance = builder("layer")(6, "conv"), builder("group")(6, "conv"), builder("instance")(6, "conv")
    assert torch.allclose(layer(x), F.layer_norm(x, x.shape[1:], eps=1e-5), atol=1e-5)
    assert torch.allclose(group(x), F.group_norm(x, 2, eps=1e-5), atol=1e-5)
    assert torch.allclose(instance(x), F.instance_norm(x, eps=1e-5), atol=1e-5)
    fc = torch.randn(4, 6)
    assert torch.allclose(builder("layer")(6, "fc")(fc), F.layer_norm(fc, (6,), eps=1e-5), atol=1e-5)


def test_meaningless_placements_are_config_errors():
    with pytest.raises(UserError, match="instance normalizes each channel over its spatial positions"):
        builder("instance")(6, "fc")
    with pytest.raises(UserError, match="does not divide"):
        builder("group", groups=4)(6, "conv")


MLP = compose(["model.hidden=[16,16]", "model.init_std=0.1"]).model
INCEPTION = OmegaConf.create({"name": "inception", "width": 0.0625, "stem": "small", "stem_pool": True,
                              "activation": "relu", "dropout": 0.0, "lrn": False})


@pytest.mark.parametrize("name", list(CFG))
@pytest.mark.parametrize("model_cfg", [MLP, INCEPTION], ids=["mlp", "inception"])
def test_every_variant_trains_three_steps_in_every_model(name, model_cfg):
    cfg = OmegaConf.create({"name": name, **CFG[name], **({"groups": 1} if name == "group" else {})})
    if name == "instance" and model_cfg.name == "mlp":
        with pytest.raises(UserError):
            models.build(model_cfg, cfg, (1, 28, 28), 10)
        return
    torch.manual_seed(0)
    model = models.build(model_cfg, cfg, (1, 28, 28), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    model.eval()
    assert model(x).shape == (8, 10)


def newest_state(run_dir) -> dict:
    from bnexp import checkpoint

    return torch.load(checkpoint.checkpoints(run_dir)[0], weights_only=False)


def rebuilt(cfg, run_dir):
    """The run's model with its newest checkpoint's weights and statistics, and its data."""
    from bnexp import data, models

    source = data.build(cfg.data, cfg.trainer, torch.device("cpu"))
    model = models.build(cfg.model, cfg.norm, source.input_shape, source.num_classes)
    model.load_state_dict(newest_state(run_dir)["model"])
    return model, source


def test_population_statistics_at_the_end_of_a_run(tmp_path, caplog, compose):
    """With norm.inference=population, the run's last evaluation uses Algorithm 2's statistics over
    the 5 training batches after its last step, and only those: the weights are the moving-average
    run's, the statistics are not, and recomputing them from those batches gives them exactly."""
    from bnexp.evaluation import test_metrics
    from bnexp.train import run

    common = ["data=synthetic", "norm=batch_paper", "trainer.max_steps=30", "trainer.eval_every=10",
              "trainer.progress=false", "trainer.checkpoint_every=0"]
    cfg = compose(*common, "norm.inference=population", "norm.population_batches=5")
    (tmp_path / "population").mkdir()
    (tmp_path / "moving").mkdir()
    with caplog.at_level("INFO", logger="bnexp.record"):
        [summary] = run(cfg, tmp_path / "population").values()
    assert summary["status"] == "completed" and summary["final_step"] == 30
    assert caplog.text.count("population statistics over 5 training batches") == 1  # once, at the end
    [moving] = run(compose(*common), tmp_path / "moving").values()
    population, averages = newest_state(tmp_path / "population")["model"], newest_state(tmp_path / "moving")["model"]
    statistics = [k for k in population if k.endswith(("running_mean", "running_var"))]
    assert statistics
    for name, value in population.items():
        if name in statistics:
            assert not torch.allclose(value, averages[name]), name
        else:
            assert torch.equal(value, averages[name]), name  # population statistics change no weight

    model, source = rebuilt(cfg, tmp_path / "population")
    accuracy, _ = test_metrics(model, source)
    assert accuracy == summary["final_accuracy"]
    norm.finalize_population(model, (source.next_batch(30 + i)[0] for i in range(5)))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, population[name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("name, logged", [("batch", True), ("batch_renorm", True), ("none", False)])
def test_test_error_with_batch_statistics(tmp_path, compose, name, logged):
    """test/error_batchstats: the test set in batches of the training batch size, each normalized with
    its own statistics (training mode), computed here by hand from the run's final weights."""
    from bnexp.train import run

    cfg = compose("data=synthetic", f"norm={name}", "trainer.max_steps=20", "trainer.eval_every=10",
                  "trainer.progress=false", "trainer.eval_batchstats=true", "trainer.batch_size=30")
    run(cfg, tmp_path)
    rows = [line.split(",") for line in (tmp_path / "metrics.csv").read_text().splitlines()[1:]]
    values = {int(step): float(v) for step, tag, v in rows if tag == "test/error_batchstats"}
    assert (sorted(values) == [0, 10, 20]) is logged
    if not logged:
        return
    model, source = rebuilt(cfg, tmp_path)  # its step-20 weights and running statistics
    model.train()
    wrong = n = 0
    with torch.no_grad():
        x, y = torch.cat([x for x, _ in source.eval_batches()]), torch.cat([y for _, y in source.eval_batches()])
        for start in range(0, len(y) - 29, 30):  # full batches of 30 only
            wrong += (model(x[start:start + 30]).argmax(1) != y[start:start + 30]).sum().item()
            n += 30
    assert len(y) % 30 != 0 and n == len(y) // 30 * 30  # the partial last batch is left out
    assert values[20] == pytest.approx(wrong / n, abs=1e-7)


def test_batch_statistics_pass_leaves_the_run_unchanged(tmp_path, compose):
    """The extra pass must restore BN's running statistics: the same run with and without it."""
    from bnexp.train import run

    curves = []
    for flag in ("true", "false"):
        cfg = compose("data=synthetic", "norm=batch_renorm", "trainer.max_steps=20", "trainer.eval_every=10",
                      "trainer.progress=false", f"trainer.eval_batchstats={flag}")
        (tmp_path / flag).mkdir()
        run(cfg, tmp_path / flag)
        rows = (tmp_path / flag / "metrics.csv").read_text().splitlines()
        curves.append([r for r in rows if ",test/loss," in r or ",train/loss," in r])
    assert curves[0] == curves[1]
