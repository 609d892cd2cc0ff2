"""BN's arithmetic against the worked example of PAPER.md sec. 1 (Algorithms 1 and 2)."""

import pytest
import torch
from omegaconf import OmegaConf

from bnexp import norm

EXAMPLE = torch.tensor([[2.0], [4.0], [6.0], [8.0]])  # one feature, a batch of four


def batch_norm(**overrides):
    cfg = OmegaConf.create({"name": "batch", "eps": 1e-12, "momentum": 0.1, **overrides})
    return norm.make(cfg)(1, "fc")


def test_training_transform_matches_worked_example():
    bn = batch_norm()
    with torch.no_grad():
        bn.weight.fill_(1.5)
        bn.bias.fill_(0.3)
    y = bn(EXAMPLE).squeeze(1)
    # mean 5, biased var 5: xhat = [-1.342, -0.447, 0.447, 1.342]
    assert y.tolist() == pytest.approx([-1.713, -0.371, 0.971, 2.313], abs=1e-3)


def test_gradients_flow_through_batch_statistics():
    bn = batch_norm()
    x = EXAMPLE.clone().requires_grad_()
    bn(x).sum().backward()
    # sum of xhat does not depend on x once mean and var are differentiated: the gradient is 0.
    # Treating mean/var as constants would give gamma / sqrt(var) = 0.447 per example instead.
    assert x.grad.abs().max() < 1e-6


def test_inference_uses_unbiased_population_variance():
    # momentum 1.0: the running statistics are exactly the last batch's (PyTorch's convention:
    # momentum is the weight of the new batch).
    bn = batch_norm(momentum=1.0)
    bn(EXAMPLE)
    assert bn.running_mean.item() == pytest.approx(5.0)
    assert bn.running_var.item() == pytest.approx(5.0 * 4 / 3)  # m/(m-1) * biased var
    bn.eval()
    y = bn(torch.tensor([[5.0], [7.0]])).squeeze(1)
    assert y.tolist() == pytest.approx([0.0, 2.0 / (5.0 * 4 / 3) ** 0.5], abs=1e-6)


def test_momentum_is_the_weight_of_the_new_batch():
    bn = batch_norm(momentum=0.1)
    bn(EXAMPLE)
    assert bn.running_mean.item() == pytest.approx(0.9 * 0.0 + 0.1 * 5.0)


def test_conv_positions_normalize_each_map_over_batch_and_space():
    layer = norm.make(OmegaConf.create({"name": "batch", "eps": 1e-5, "momentum": 0.1}))(3, "conv")
    y = layer(torch.randn(4, 3, 5, 5) * 7 + 2)
    assert y.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert y.var(dim=(0, 2, 3), unbiased=False).sub(1).abs().max() < 1e-3


def test_none_means_no_layer():
    assert norm.make(OmegaConf.create({"name": "none"}))(10, "fc") is None
