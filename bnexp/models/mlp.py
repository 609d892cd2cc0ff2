"""The paper's MNIST network (sec. 4.1): fully connected hidden layers, then a linear classifier."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}


class MLP(nn.Module):
    def __init__(self, in_features, num_classes, hidden, activation, init_std, norm_builder):
        super().__init__()
        layers, width = [], in_features
        for out in hidden:
            norm = norm_builder(out, "fc")
            block = OrderedDict(linear=nn.Linear(width, out, bias=norm is None))
            if norm is not None:
                block["norm"] = norm
            block["act"] = ACTIVATIONS[activation]()
            layers.append(nn.Sequential(block))
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
