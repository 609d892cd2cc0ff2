"""The paper's Inception variant (sec. 4.2 and its appendix table; "BN-Inception").

GoogLeNet with each 5x5 convolution replaced by two stacked 3x3 convolutions ("double 3x3"),
modules 3a-3c at 28x28, 4a-4e at 14x14, 5a-5b at 7x7, average or max pooling branches, and
stride-2 modules (3c, 4e) whose pooling branch passes its input through. No fully connected layer
but the classifier. Every convolution is z = g(norm(Wu)), the bias dropped where a norm follows.

Resolving the table's inconsistency: its output totals for 4c and 4d (576) do not match its own
filter counts (which sum to 608). We keep the filter counts as printed, so 4c and 4d output 608
channels and 4e outputs 1056; at width 1, 224 px and 1000 classes this gives 11.29M parameters
with BN (tests/test_inception.py; public BN-Inception ports report the same). The paper quotes
13.6M, which its own table does not add up to.

Knobs: `width` scales every filter count; `stem` is "imagenet" (7x7/2 conv, max pool, 1x1, 3x3,
max pool: 224 px -> 28x28 at 3a) or "small" (two 3x3 convolutions at stride 1, for 28-32 px
inputs, so that 3a also sees 28x28 on MNIST; with `stem_pool` a 3x3/2 max pool follows, 3a then sees
14x14 at a quarter of the compute), "auto" picks by input size.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from bnexp import norm
from bnexp.models.mlp import unit_layers

# name: (#1x1, #3x3 reduce, #3x3, #double-3x3 reduce, #double-3x3, pool, pool projection, stride)
MODULES = OrderedDict([
    ("3a", (64, 64, 64, 64, 96, "avg", 32, 1)),
    ("3b", (64, 64, 96, 64, 96, "avg", 64, 1)),
    ("3c", (0, 128, 160, 64, 96, "max", 0, 2)),
    ("4a", (224, 64, 96, 96, 128, "avg", 128, 1)),
    ("4b", (192, 96, 128, 96, 128, "avg", 128, 1)),
    ("4c", (160, 128, 160, 128, 160, "avg", 128, 1)),
    ("4d", (96, 128, 192, 160, 192, "avg", 128, 1)),
    ("4e", (0, 128, 192, 192, 256, "max", 0, 2)),
    ("5a", (352, 192, 320, 160, 224, "avg", 128, 1)),
    ("5b", (352, 192, 320, 192, 224, "max", 128, 1)),
])
PROBED = ("3a", "4c", "5b")  # modules whose last double-3x3 unit is probed (early, middle, late)


class LocalResponseNorm(nn.Module):
    """nn.LocalResponseNorm's function, y = x / (k + alpha/n * sum of x^2 over n neighbouring channels)^beta,
    computed as a 1x1 convolution of x^2 with a fixed band matrix and exp/log instead of pow: several
    times faster than torch's (a 3-D average pool and a fractional pow) on a CPU, where torch's took a
    third of the Inception baseline's training step at the CPU scale (scripts/bench_norm.py). Equal
    to nn.LocalResponseNorm to float rounding (tested)."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, replicas: int = 1):
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.replicas = size, alpha, beta, k, replicas

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Replicas: each one's window stays inside its own channels (one band per group).
        channel = torch.arange(x.shape[1] // self.replicas, device=x.device)
        offset = channel[None, :] - channel[:, None]  # [out, in]: input channel - output channel
        # torch's window for output channel c: channels c - size//2 .. c + (size-1)//2
        band = (offset >= -(self.size // 2)) & (offset <= (self.size - 1) // 2)
        weight = (band.to(x.dtype) * (self.alpha / self.size))[:, :, None, None].repeat(self.replicas, 1, 1, 1)
        denominator = F.conv2d(x * x, weight, groups=self.replicas) + self.k
        return x * torch.exp(-self.beta * torch.log(denominator))

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, replicas={self.replicas}"


class PointwiseConv(nn.Conv2d):
    """A 1x1 convolution (stride 1) that, on a channels_last input, is computed as one matrix product
    of the input's NHWC view (N*H*W x C_in) with the weight: the same function (to float rounding,
    tested), the same parameters and output layout, without the per-call overhead of oneDNN's
    convolution at this network's small channel counts (results/bench_inception.md)."""

    def __init__(self, c_in: int, c_out: int, bias: bool, groups: int = 1):
        super().__init__(c_in, c_out, 1, bias=bias, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last, read from the strides (a layout query is not allowed inside vmap, where
        # replicas run); NCHW, a 1x1 map where the layouts coincide, and grouped, take the convolution.
        c, h, w = x.shape[-3:]
        if x.dim() != 4 or x.stride() != (h * w * c, 1, w * c, c) or h * w == 1 or self.groups > 1:
            return super().forward(x)
        nhwc = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)
        return nhwc.permute(0, 3, 1, 2)  # an NCHW view of NHWC memory: channels_last, as the input


class ConvUnit(nn.Sequential):
    """conv -> norm -> nonlinearity (norm.position=pre, the paper's) or conv -> nonlinearity -> norm
    (post); the conv keeps its bias unless a norm follows it directly. Channels are per replica."""

    def __init__(self, c_in, c_out, kernel, stride, norm_builder, activation, norm_position="pre", replicas=1):
        def conv(bias: bool) -> nn.Conv2d:
            c_i, c_o = c_in * replicas, c_out * replicas
            if kernel == 1 and stride == 1:
                return PointwiseConv(c_i, c_o, bias, groups=replicas)
            return nn.Conv2d(c_i, c_o, kernel, stride, kernel // 2, bias=bias, groups=replicas)

        norm_layer = norm.for_replicas(norm_builder(c_out * replicas, "conv"), replicas)
        super().__init__(unit_layers("conv", conv, norm_layer, activation, norm_position))


class ReplicaLinear(nn.Linear):
    """R linear layers as one, weight [R * out, in]: replica r's features in, its outputs out."""

    def __init__(self, in_features: int, out_features: int, replicas: int):
        super().__init__(in_features, out_features * replicas)
        self.replicas = replicas

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.replicas
        x, weight = x.unflatten(1, (r, -1)), self.weight.unflatten(0, (r, -1))  # [B, R, in], [R, out, in]
        return (torch.einsum("bri,roi->bro", x, weight) + self.bias.unflatten(0, (r, -1))).flatten(1)


def concat_channels(branches: list[torch.Tensor], replicas: int) -> torch.Tensor:
    """The branches' channels side by side, within each replica: [B, R * sum(C_i), H, W], in the
    branches' memory layout (a channels_last input stays channels_last through the network)."""
    if replicas == 1:
        return torch.cat(branches, 1)
    if branches[0].is_contiguous(memory_format=torch.channels_last):  # concatenated in the NHWC view
        nhwc = [b.permute(0, 2, 3, 1).unflatten(3, (replicas, -1)) for b in branches]
        return torch.cat(nhwc, 4).flatten(3).permute(0, 3, 1, 2)
    return torch.cat([b.unflatten(1, (replicas, -1)) for b in branches], 2).flatten(1, 2)


class InceptionModule(nn.Module):
    def __init__(self, c_in, spec, width, norm_builder, activation, norm_position="pre", replicas=1):
        super().__init__()
        self.replicas = replicas
        n1, n3r, n3, nd3r, nd3, pool, proj, stride = (
            [max(1, round(n * width)) if isinstance(n, int) and n and i < 7 else n for i, n in enumerate(spec)])

        def unit(c_i, c_o, k, s=1):
            return ConvUnit(c_i, c_o, k, s, norm_builder, activation, norm_position, replicas)

        self.branch1 = unit(c_in, n1, 1) if n1 else None
        self.branch3 = nn.Sequential(unit(c_in, n3r, 1), unit(n3r, n3, 3, stride))
        self.double3 = nn.Sequential(unit(c_in, nd3r, 1), unit(nd3r, nd3, 3), unit(nd3, nd3, 3, stride))
        pooling = nn.AvgPool2d(3, stride, 1, count_include_pad=False) if pool == "avg" else nn.MaxPool2d(3, stride, 1)
        self.pool = nn.Sequential(pooling, unit(c_in, proj, 1)) if proj else pooling
        self.out_channels = (n1 or 0) + n3 + nd3 + (proj or c_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch3(x), self.double3(x), self.pool(x)]
        if self.branch1 is not None:
            branches.insert(0, self.branch1(x))
        return concat_channels(branches, self.replicas)


class Inception(nn.Module):
    def __init__(self, in_channels, num_classes, input_size, width, stem, activation, dropout, lrn, norm_builder,
                 stem_pool=False, norm_position="pre", replicas=1):
        super().__init__()
        if stem == "auto":
            stem = "small" if input_size <= 64 else "imagenet"

        def c(n):
            return max(1, round(n * width))

        def unit(c_i, c_o, k, s=1):
            return ConvUnit(c_i, c_o, k, s, norm_builder, activation, norm_position, replicas)

        # Local response normalization where GoogLeNet has it (the original Inception baseline only).
        def lrn_layer():
            return [LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0, replicas=replicas)] if lrn else []

        if stem == "imagenet":
            layers = [unit(in_channels, c(64), 7, 2), nn.MaxPool2d(3, 2, 1), *lrn_layer(), unit(c(64), c(64), 1),
                      unit(c(64), c(192), 3), *lrn_layer(), nn.MaxPool2d(3, 2, 1)]
        elif stem == "small":
            layers = [unit(in_channels, c(64), 3), unit(c(64), c(192), 3), *lrn_layer()]
            if stem_pool:  # 3a at half the input size: 4x less compute, for CPU-sized runs
                layers.append(nn.MaxPool2d(3, 2, 1))
        else:
            raise ValueError(f"unknown stem {stem!r}")
        self.stem = nn.Sequential(*layers)
        channels, modules = c(192), OrderedDict()
        for name, spec in MODULES.items():
            modules[name] = InceptionModule(channels, spec, width, norm_builder, activation, norm_position, replicas)
            channels = modules[name].out_channels
        self.blocks = nn.Sequential(modules)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(channels, num_classes) if replicas == 1
                                  else ReplicaLinear(channels, num_classes, replicas))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                # He init for ReLU, Glorot for sigmoid: the paper does not say; both keep the signal's scale.
                if activation == "relu":
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                else:
                    nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def probe_points(self) -> dict[str, nn.Module]:
        return {f"inception{name}": self.blocks.get_submodule(name).double3[-1].act for name in PROBED}

    def ics_layers(self) -> dict[str, tuple[str, list[str]]]:
        """The probed units' convolutions, for the ICS probe: {name: (its weight, the parameters
        upstream of it)}: the stem, the modules before, and the two units before it in its branch
        (not the parallel branches, which do not feed it)."""
        names, order = [n for n, _ in self.named_parameters()], list(MODULES)
        layers = {}
        for name in PROBED:
            upstream = ("stem.", *(f"blocks.{m}." for m in order[:order.index(name)]),
                        f"blocks.{name}.double3.0.", f"blocks.{name}.double3.1.")
            layers[f"inception{name}"] = (f"blocks.{name}.double3.2.conv.weight",
                                          [n for n in names if n.startswith(upstream)])
        return layers
