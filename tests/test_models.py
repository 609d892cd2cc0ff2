import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from bnexp import models
from bnexp.config import compose

MLP_CFG = compose(["model.hidden=[100,100,100]", "model.init_std=0.1"]).model
BATCH = OmegaConf.create({"name": "batch", "eps": 1e-5, "momentum": 0.1})
NONE = OmegaConf.create({"name": "none"})


def linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def test_paper_mlp_shapes():
    model = models.build(MLP_CFG, NONE, (1, 28, 28), 10)
    assert [(m.in_features, m.out_features) for m in linears(model)] == [(784, 100), (100, 100), (100, 100), (100, 10)]
    assert model(torch.rand(7, 1, 28, 28)).shape == (7, 10)


def test_bias_dropped_where_bn_follows():
    model = models.build(MLP_CFG, BATCH, (1, 28, 28), 10)
    hidden, classifier = linears(model)[:3], linears(model)[3]
    assert all(m.bias is None for m in hidden)
    assert classifier.bias is not None  # no BN before the softmax
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 3
    # BN sits between Wu and the sigmoid: linear -> norm -> act in every hidden block.
    assert [list(block._modules) for block in model.hidden] == [["linear", "norm", "act"]] * 3


def test_bias_kept_without_norm():
    assert all(m.bias is not None for m in linears(models.build(MLP_CFG, NONE, (1, 28, 28), 10)))


def test_initialization_is_small_gaussian_with_configured_std():
    """Every layer's weights N(0, init_std^2), not merely of that std: a uniform init of the same std
    fails the tail and kurtosis checks below; biases start at zero."""
    torch.manual_seed(0)
    cfg = OmegaConf.merge(MLP_CFG, {"init_std": 0.05})
    model = models.build(cfg, NONE, (1, 28, 28), 10)
    for layer in linears(model):
        w = layer.weight.detach().flatten()
        z = w / 0.05
        assert w.std().item() == pytest.approx(0.05, rel=0.1 if w.numel() < 5000 else 0.05)
        assert w.mean().abs().item() < 4 * 0.05 / w.numel() ** 0.5
        assert (z ** 4).mean().item() == pytest.approx(3.0, rel=0.25)  # a Gaussian's kurtosis; uniform's is 1.8
        assert (z.abs() > 2).float().mean().item() == pytest.approx(0.0455, abs=0.02)  # uniform(+-sqrt 3) has none
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    uniform = (torch.rand(100_000) * 2 - 1) * 3 ** 0.5  # the same mean and std, another shape: the checks see it
    assert (uniform ** 4).mean().item() == pytest.approx(1.8, rel=0.05) and (uniform.abs() > 2).sum() == 0


@pytest.mark.parametrize("activation, cls", [("sigmoid", nn.Sigmoid), ("relu", nn.ReLU)])
def test_activation_is_configurable(activation, cls):
    model = models.build(OmegaConf.merge(MLP_CFG, {"activation": activation}), NONE, (1, 28, 28), 10)
    assert all(isinstance(p, cls) for p in model.probe_points().values())


def test_probe_points_are_the_sigmoid_inputs():
    model = models.build(MLP_CFG, BATCH, (1, 28, 28), 10)
    seen = {}
    model.probe_points()["hidden3"].register_forward_pre_hook(lambda m, inp: seen.setdefault("x", inp[0]))
    x = torch.rand(5, 1, 28, 28)
    model(x)
    last = model.hidden[2]
    expected = last.norm(last.linear(model.hidden[1](model.hidden[0](x.flatten(1)))))
    assert torch.allclose(seen["x"], expected)


def mlp(norm_cfg=NONE, **model):
    return models.build(OmegaConf.merge(MLP_CFG, model), norm_cfg, (1, 28, 28), 10)


def test_depth_repeats_the_width():
    model = mlp(hidden=[64], depth=7)
    assert [(m.in_features, m.out_features) for m in linears(model)] == [(784, 64)] + [(64, 64)] * 6 + [(64, 10)]


def test_norm_after_the_nonlinearity_keeps_the_bias():
    post = models.build(MLP_CFG, OmegaConf.merge(BATCH, {"position": "post"}), (1, 28, 28), 10)
    assert [list(block._modules) for block in post.hidden] == [["linear", "act", "norm"]] * 3
    assert all(block.linear.bias is not None for block in post.hidden)
    x = torch.rand(8, 1, 28, 28)
    inner = post.hidden[0]
    torch.testing.assert_close(inner(x.flatten(1)), inner.norm(torch.sigmoid(inner.linear(x.flatten(1)))))


@pytest.mark.parametrize("where, blocks", [("every", [0, 1, 2]), ("last", [2])])
def test_dropout_goes_after_the_nonlinearity_of_every_or_the_last_block(where, blocks):
    model = mlp(BATCH, dropout=0.3, dropout_at=where)
    assert [i for i, block in enumerate(model.hidden) if "dropout" in block._modules] == blocks
    assert all(list(model.hidden[i]._modules)[-1] == "dropout" and model.hidden[i].dropout.p == 0.3 for i in blocks)
    model.eval()  # inference: dropout off, the network deterministic
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(model(x), model(x))
    assert not any(isinstance(m, nn.Dropout) for m in mlp(BATCH).modules())  # none by default


def test_residual_blocks_add_their_input_and_skipinit_starts_as_the_identity():
    torch.manual_seed(0)
    plain, residual = mlp(hidden=[32], depth=4), mlp(hidden=[32], depth=4, residual=True)
    residual.load_state_dict(plain.state_dict())
    # the first block (784 -> 32) cannot add its input; the other three do
    assert [type(b).__name__ for b in residual.hidden] == ["Sequential"] + ["ResidualBlock"] * 3
    h = torch.rand(5, 784)
    first = plain.hidden[0](h)
    torch.testing.assert_close(residual.hidden[1](first), first + plain.hidden[1](first))
    skip = mlp(hidden=[32], depth=4, residual=True, skipinit=True)
    scales = sorted(n for n, _ in skip.named_parameters() if n.endswith("scale"))
    assert scales == [f"hidden.{i}.scale" for i in (1, 2, 3)]
    torch.testing.assert_close(skip.hidden(h), skip.hidden[0](h))  # every branch scaled by 0 at the start
    loss = skip(torch.rand(5, 1, 28, 28)).logsumexp(1).mean()
    loss.backward()
    assert skip.hidden[1].scale.grad.abs() > 0  # the scales learn from the first step
