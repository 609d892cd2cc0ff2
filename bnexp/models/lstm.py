"""An LSTM classifier over an image read as a sequence: rows (28 steps of 28 pixels on MNIST),
columns, pixels (784 steps of 1), or N equal chunks of the flattened image; the classifier reads
the top layer's last hidden state.

The cell is written out, since a fused nn.LSTM cannot normalize inside the recurrence. Each step
of a layer computes

    gates = N_in(W_x x_t) + N_hid(W_h h_{t-1}) + b            (i, f, g, o, as nn.LSTM orders them)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(N_cell(c_t))

with each N the norm (bnexp/norm.py: per-step BN as Cooijmans et al. 2016, or LN as Ba et al.
2016) on the paths of norm.where, the identity elsewhere. The two gate terms' norms have no
shift (b is the shift); the cell's has one. Weights start as nn.LSTM's (uniform within
1/sqrt(hidden)), the forget gate's bias at model.forget_bias. With norm=none the cell is nn.LSTM's
function exactly (tested), so the two can be timed against each other (scripts/bench_lstm.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bnexp.errors import UserError

PATHS = ("input", "hidden", "cell")  # where a norm can go: W_x x_t, W_h h_{t-1}, c_t
SEQUENCES = ("rows", "columns", "pixels")


def sequence_shape(input_shape: tuple, sequence) -> tuple[int, int]:
    """(steps, features per step) of an example of `input_shape` read as `sequence`."""
    size = math.prod(input_shape)
    if sequence in SEQUENCES:
        if len(input_shape) != 3:
            raise UserError(f"model.sequence={sequence} reads images (channels, height, width), got inputs of "
                            f"shape {tuple(input_shape)}: set model.sequence to a number of steps")
        channels, height, width = input_shape
        return {"rows": (height, channels * width), "columns": (width, channels * height),
                "pixels": (height * width, channels)}[sequence]
    if size % sequence:
        raise UserError(f"model.sequence={sequence} steps do not divide an example's {size} values "
                        f"(shape {tuple(input_shape)}) into equal parts: choose a divisor of {size}")
    return sequence, size // sequence


def as_sequence(x: torch.Tensor, sequence) -> torch.Tensor:
    """Inputs [B, ...] as a sequence [T, B, F]. Images may be taller or wider than in training
    (rows or columns added): the sequence is then longer."""
    if sequence == "rows":
        return x.permute(2, 0, 1, 3).flatten(2)
    if sequence == "columns":
        return x.permute(3, 0, 1, 2).flatten(2)
    if sequence == "pixels":
        return x.permute(2, 3, 0, 1).flatten(0, 1)
    return x.flatten(1).unflatten(1, (sequence, -1)).transpose(0, 1)


class LSTMLayer(nn.Module):
    def __init__(self, input_size: int, hidden: int, make_norm, where: tuple, forget_bias: float,
                 h0_noise: float = 0.0):
        """make_norm(features, shift): the norm of one path, called as norm(x, t) (the input term's
        as norm.all_steps(xs), all steps at once). h0_noise: model.h0_noise."""
        super().__init__()
        self.hidden, self.h0_noise = hidden, h0_noise
        self.input_weights = nn.Linear(input_size, 4 * hidden, bias=False)
        self.hidden_weights = nn.Linear(hidden, 4 * hidden, bias=False)
        self.bias = nn.Parameter(torch.zeros(4 * hidden))
        bound = 1 / math.sqrt(hidden)  # nn.LSTM's initialization
        for weight in (self.input_weights.weight, self.hidden_weights.weight):
            nn.init.uniform_(weight, -bound, bound)
        with torch.no_grad():
            self.bias[hidden:2 * hidden] = forget_bias
        self.input_norm = make_norm(4 * hidden, False) if "input" in where else None
        self.hidden_norm = make_norm(4 * hidden, False) if "hidden" in where else None
        self.cell_norm = make_norm(hidden, True) if "cell" in where else None

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        """xs [T, B, F] -> the hidden states [T, B, H]."""
        input_terms = self.input_terms(xs)
        h, c = self.initial_state(xs)
        hs = []
        for t, x_term in enumerate(input_terms):
            h, c = self.step(x_term, h, c, t)
            hs.append(h)
        return torch.stack(hs)

    def initial_state(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_0, c_0): zeros, as nn.LSTM's; in training h_0 is Gaussian noise of std h0_noise where it
        is set. Noise makes the examples' first hidden terms differ: over steps whose input is the
        same in every example (MNIST's blank first rows and pixels), BN's batch variance would
        otherwise be 0 (Cooijmans et al. 2016 add such noise for sequential MNIST)."""
        h = c = xs.new_zeros(xs.shape[1], self.hidden)
        if self.training and self.h0_noise:
            h = torch.randn_like(h) * self.h0_noise
        return h, c

    def input_terms(self, xs: torch.Tensor) -> torch.Tensor:
        """Every step's N_in(W_x x_t) [T, B, 4H]: one product, normalized in one call."""
        terms = self.input_weights(xs)
        return terms if self.input_norm is None else self.input_norm.all_steps(terms)

    def step(self, x_term: torch.Tensor, h: torch.Tensor, c: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step t: (h_t, c_t) from its input term and (h_{t-1}, c_{t-1})."""
        h_term = self.hidden_weights(h)
        if self.hidden_norm is not None:
            h_term = self.hidden_norm(h_term, t)
        i, f, g, o = (x_term + h_term + self.bias).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c if self.cell_norm is None else self.cell_norm(c, t)), c


class LSTM(nn.Module):
    def __init__(self, input_shape: tuple, num_classes: int, sequence, hidden: int, layers: int, forget_bias: float,
                 make_norm, where: tuple, h0_noise: float = 0.0):
        """make_norm(features, steps, shift): a norm for one path of a layer (None: no norm)."""
        super().__init__()
        self.sequence = sequence
        steps, features = sequence_shape(input_shape, sequence)
        self.layers = nn.ModuleList()
        for _ in range(layers):
            self.layers.append(LSTMLayer(features, hidden, lambda c, shift: make_norm(c, steps, shift), where,
                                         forget_bias, h0_noise))
            features = hidden
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hs = as_sequence(x, self.sequence)
        for layer in self.layers:
            hs = layer(hs)
        return self.classifier(hs[-1])

    def probe_points(self) -> dict[str, nn.Module]:
        return {}  # the gates' nonlinearities are functions called once per step, not modules

    def ics_layers(self) -> dict[str, tuple[str, list[str]]]:
        """Every weight matrix, for the gradient and ICS probes: {name: (its weight, the parameters upstream)}."""
        names = [n for n, _ in self.named_parameters()]
        weights = {f"layer{i + 1}.{path}": f"layers.{i}.{path}_weights.weight"
                   for i in range(len(self.layers)) for path in ("input", "hidden")}
        weights["output"] = "classifier.weight"
        return {layer: (w, names[:names.index(w)]) for layer, w in weights.items()}
