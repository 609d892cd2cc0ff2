"""Evaluation of a network on the test set: plain functions of a model and its data."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.inference_mode()
def test_metrics(model: nn.Module, data, prepare=lambda x: x) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the inference network (eval mode) on the test set;
    `prepare` puts each batch in the model's memory layout."""
    model.eval()
    correct = loss_sum = n = 0
    for x, y in data.eval_batches():
        logits = model(prepare(x))
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        n += len(y)
    model.train()
    return correct.item() / n, loss_sum.item() / n


@torch.inference_mode()
def error_with_batch_statistics(model: nn.Module, batch_norms: list[nn.Module], data, batch_size: int,
                                prepare=lambda x: x) -> float:
    """Test error when BN normalizes each test batch (of the training batch size) with its own
    statistics, as in training: beside test/error it shows the train/inference gap. The running
    statistics are restored afterwards; a last partial batch is left out."""
    saved = [{k: b.clone() for k, b in m.named_buffers()} for m in batch_norms]
    model.eval()
    for m in batch_norms:
        m.train()
    wrong, n = 0, 0
    for x, y in data.eval_batches():
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            if len(yb) == batch_size:
                wrong += (model(prepare(xb)).argmax(1) != yb).sum()
                n += batch_size
    for m, buffers in zip(batch_norms, saved, strict=True):
        for k, b in m.named_buffers():
            b.copy_(buffers[k])
    model.train()
    return (wrong / max(n, 1)).item()
