"""The paper's MNIST network (sec. 4.1): fully connected hidden layers, then a linear classifier.

Each hidden layer is a block linear -> norm -> nonlinearity (norm.position=pre, the paper's
BN(Wu)), or linear -> nonlinearity -> norm (post), then dropout where asked for: in every block
(dropout_at=every: each dropout then feeds the next block's norm) or in the last only (last:
after every norm, just before the classifier). With `residual`, a block whose input and output
widths agree computes x + scale * block(x); `skipinit` makes scale a learnable scalar that starts
at zero (De & Smith 2020), the normalization-free way to train deep residual nets.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from torch import nn

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}


def unit_layers(name: str, make_layer, norm: nn.Module | None, activation: str, position: str) -> OrderedDict:
    """One unit of a bnexp model: layer -> norm -> nonlinearity (position pre, the paper's BN(Wu)) or
    layer -> nonlinearity -> norm (post). make_layer(bias=...) builds the linear or conv layer, named
    `name`: it keeps its bias unless a norm follows it directly (the norm's shift, beta, replaces it)."""
    layers = OrderedDict([(name, make_layer(bias=norm is None or position == "post"))])
    if norm is not None and position == "pre":
        layers["norm"] = norm
    layers["act"] = ACTIVATIONS[activation]()
    if norm is not None and position == "post":
        layers["norm"] = norm
    return layers


class ResidualBlock(nn.Sequential):
    """x + scale * block(x), with the block's layers as its own children (linear, norm, act,
    dropout: the same names as a plain block's, so probes and folding find them)."""

    def __init__(self, layers: OrderedDict, skipinit: bool):
        super().__init__(layers)
        self.skipinit = skipinit
        if skipinit:
            self.scale = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = super().forward(x)
        return x + (self.scale * branch if self.skipinit else branch)


class MLP(nn.Module):
    def __init__(self, in_features, num_classes, hidden, activation, init_std, norm_builder, norm_position="pre",
                 dropout=0.0, dropout_at="every", residual=False, skipinit=False):
        super().__init__()
        layers, width = [], in_features
        for i, out in enumerate(hidden):
            block = unit_layers("linear", partial(nn.Linear, width, out),
                                norm_builder(out, "fc"), activation, norm_position)
            if dropout > 0 and (dropout_at == "every" or i == len(hidden) - 1):
                block["dropout"] = nn.Dropout(dropout)
            layers.append(ResidualBlock(block, skipinit) if residual and width == out else nn.Sequential(block))
            width = out
        self.hidden = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)
        for m in self.modules():  # "small random Gaussian values"; biases start at zero
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(x.flatten(1)))

    def probe_points(self) -> dict[str, nn.Module]:
        return {f"hidden{i + 1}": block.act for i, block in enumerate(self.hidden)}

    def ics_layers(self) -> dict[str, tuple[str, list[str]]]:
        """Every weight layer, for the ICS probe: {name: (its weight, the parameters upstream of it)}."""
        names = [n for n, _ in self.named_parameters()]
        weights = {**{f"hidden{i + 1}": f"hidden.{i}.linear.weight" for i in range(len(self.hidden))},
                   "output": "classifier.weight"}
        return {layer: (w, names[:names.index(w)]) for layer, w in weights.items()}  # a chain: all before it
