"""Evaluation of a network on the test set: plain functions of a model and its data."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """The inference network with each BatchNorm folded into the convolution or linear layer before
    it (the standard deployment step): a copy in eval mode where conv -> BN is one conv with
    W' = W * gamma / sqrt(var + eps) and b' = beta + (b - mean) * gamma / sqrt(var + eps), the BN an
    Identity. The same function as `model.eval()` to float rounding (tested), one pass over each
    activation less. Folded: a layer and the nn.BatchNorm1d/2d right after it in an nn.Sequential
    (the units of bnexp's models); any other norm, and a BN elsewhere, is kept as it is.
    Its ReLUs, but one that opens a Sequential, compute in place: no backward pass needs their
    inputs, which the layer before has just made (1.04-1.09x faster evaluation of the Inception-style
    net at the studies' width, results/bench_inception.md)."""
    folded = copy.deepcopy(model).eval()
    for parent in folded.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for before, after in zip(names, names[1:], strict=False):
            layer, norm = parent._modules[before], parent._modules[after]
            if isinstance(layer, nn.Conv2d) and type(norm) is nn.BatchNorm2d and norm.track_running_stats:
                parent._modules[before], parent._modules[after] = fuse_conv_bn_eval(layer, norm), nn.Identity()
            elif isinstance(layer, nn.Linear) and type(norm) is nn.BatchNorm1d and norm.track_running_stats:
                parent._modules[before], parent._modules[after] = fuse_linear_bn_eval(layer, norm), nn.Identity()
        for module in list(parent)[1:]:
            if isinstance(module, nn.ReLU):
                module.inplace = True
    return folded


@torch.inference_mode()
def metrics(model: nn.Module, batches, prepare=lambda x: x) -> tuple[float, float, int]:
    """(accuracy, mean cross-entropy, examples) of `model` over (x, y) batches, in the modes its
    layers are in (the caller sets them); `prepare` puts each batch in the model's memory layout."""
    correct = loss_sum = n = 0
    for x, y in batches:
        logits = model(prepare(x))
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        n += len(y)
    if n == 0:
        return float("nan"), float("nan"), 0
    return correct.item() / n, loss_sum.item() / n, n


@torch.inference_mode()
def replica_metrics(wide: nn.Module, batches, replicas: int, prepare=lambda x: x) -> list[tuple[float, float]]:
    """(accuracy, mean cross-entropy) of each of R replicas over (x, y) batches, in one pass of their
    wide network (models.stacked, in eval mode): every replica sees each batch, side by side in
    the channels, and its logits are its K of the R * K."""
    correct = loss_sum = 0
    n = 0
    for x, y in batches:
        logits = wide(prepare(x.repeat(1, replicas, *[1] * (x.dim() - 2)))).unflatten(1, (replicas, -1))  # [B, R, K]
        losses = F.cross_entropy(logits.flatten(0, 1).float(), y.repeat_interleave(replicas), reduction="none")
        loss_sum = loss_sum + losses.view(-1, replicas).sum(0)
        correct = correct + (logits.argmax(-1) == y[:, None]).sum(0)
        n += len(y)
    if n == 0:
        return [(float("nan"), float("nan"))] * replicas
    return [(c / n, total / n) for c, total in zip(correct.tolist(), loss_sum.tolist(), strict=True)]


def test_metrics(model: nn.Module, data, prepare=lambda x: x, split: str = "test") -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the inference network (eval mode) on the test set, or on
    the training set with split="train"."""
    model.eval()
    try:
        accuracy, loss, _ = metrics(model, data.eval_batches(split), prepare)
    finally:
        model.train()
    return accuracy, loss


def saved_buffers(layers: list[nn.Module]) -> list[dict]:
    """A copy of each layer's buffers (BN's running statistics), for restore_buffers."""
    return [{k: b.clone() for k, b in layer.named_buffers()} for layer in layers]


@torch.no_grad()
def restore_buffers(layers: list[nn.Module], saved: list[dict]) -> None:
    for layer, buffers in zip(layers, saved, strict=True):
        for k, b in layer.named_buffers():
            b.copy_(buffers[k])


@contextmanager
def batch_statistics(model: nn.Module, batch_norms: list[nn.Module]):
    """The inference network but for `batch_norms`, which normalize each batch with its own
    statistics, as in training; their running statistics are restored afterwards (and the model
    left in train mode, as test_metrics leaves it)."""
    saved = saved_buffers(batch_norms)
    model.eval()
    for m in batch_norms:
        m.train()
    try:
        yield model
    finally:
        restore_buffers(batch_norms, saved)
        model.train()


def error_with_batch_statistics(model: nn.Module, batch_norms: list[nn.Module], data, batch_size: int,
                                prepare=lambda x: x) -> float:
    """Test error when BN normalizes each test batch (of the training batch size) with its own
    statistics, as in training: beside test/error it shows the train/inference gap. A last
    partial batch is left out."""
    def full_batches():
        for x, y in data.eval_batches():
            for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
                if len(yb) == batch_size:
                    yield xb, yb

    with batch_statistics(model, batch_norms):
        accuracy, _, n = metrics(model, full_batches(), prepare)
    return 1 - accuracy if n else 0.0
