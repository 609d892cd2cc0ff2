"""The normalization factory: what goes on Wu, immediately before each nonlinearity.

`make(cfg)` returns a builder; `builder(num_features, kind)` gives the layer for a fully connected
("fc") or convolutional ("conv") position, or None for no normalization, in which case the layer
before it keeps its bias (with a norm, beta replaces the bias: paper sec. 3.2).
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig
from torch import nn

from bnexp.config import UserError

NormBuilder = Callable[[int, str], "nn.Module | None"]


def make(cfg: DictConfig) -> NormBuilder:
    if cfg.name == "none":
        return lambda num_features, kind: None
    if cfg.name == "batch":
        # momentum follows PyTorch: the weight of the new batch in the running averages.
        def batch(num_features: int, kind: str) -> nn.Module:
            cls = nn.BatchNorm1d if kind == "fc" else nn.BatchNorm2d
            return cls(num_features, eps=cfg.eps, momentum=cfg.momentum)

        return batch
    raise UserError(f"bnexp: error: unknown norm.name {cfg.name!r}")
