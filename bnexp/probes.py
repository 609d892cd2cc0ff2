"""Probes: what a run measures about itself beyond loss and accuracy.

`PercentileProbe` is the paper's Figure 1 (b, c) probe: how the input to one nonlinearity is
distributed over time. `StepProbes` takes Santurkar et al.'s measurements (internal covariate shift,
the loss landscape along the gradient) on a training step's own batch, without changing the run.

The percentile probe:
At every evaluation the trainer runs the test set through the inference network (eval mode, so BN
uses its population statistics) and this probe records, for one fixed unit of each probed layer,
the input to its nonlinearity; the 15th, 50th and 85th percentiles are logged as
probe/<layer>/p15|p50|p85. For a convolutional layer every spatial position of the unit counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.func import functional_call

PERCENTILES = (15, 50, 85)


@contextmanager
def input_hooks(points: dict[str, nn.Module], make_hook):
    """make_hook(name) sees the input of module points[name] in every forward pass run inside;
    the hooks exist only there, so training steps pay nothing for them."""
    handles = [module.register_forward_pre_hook(make_hook(name)) for name, module in points.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class PercentileProbe:
    def __init__(self, points: dict[str, nn.Module], unit: int):
        self.points, self.unit = points, unit
        self._values: dict[str, list[torch.Tensor]] = {name: [] for name in points}

    def _hook(self, name: str):
        def record(module, inputs):
            # A copy, not a view: in the inference network the ReLU then overwrites its input in place.
            self._values[name].append(inputs[0][:, self.unit].detach().flatten().to(torch.float32, copy=True))

        return record

    @contextmanager
    def recording(self, points: dict[str, nn.Module] | None = None):
        """Hooks exist only while recording: training steps pay nothing for the probe. points: the
        same units in another copy of the network (the inference network with BN folded)."""
        for values in self._values.values():
            values.clear()
        with input_hooks(points or self.points, self._hook):
            yield

    def percentiles(self) -> dict[str, float]:
        q = torch.tensor([p / 100 for p in PERCENTILES])
        out = {}
        for name, values in self._values.items():
            if values:
                found = torch.quantile(torch.cat(values).cpu(), q).tolist()
                out.update({f"probe/{name}/p{p}": v for p, v in zip(PERCENTILES, found, strict=True)})
        return out


@contextmanager
def replica_recording(probes: dict[int, PercentileProbe], points: dict[str, nn.Module], replicas: int):
    """The probes of replicas (by their place r in a stack of R) recorded in one pass of the wide
    network, whose probed layers (`points`, the same names) hold the replicas' channels side by
    side: replica r's unit u is channel r * C + u of a layer of R * C."""
    for probe in probes.values():
        for values in probe._values.values():
            values.clear()

    def hook(name: str):
        def record(module, inputs):
            per_replica = inputs[0].detach().unflatten(1, (replicas, -1))
            for r, probe in probes.items():
                probe._values[name].append(per_replica[:, r, probe.unit].flatten().to(torch.float32, copy=True))

        return record

    with input_hooks(points, hook):
        yield


# --- Santurkar et al. 2018: internal covariate shift and the loss landscape --------------------

Params = dict[str, torch.Tensor]
LossAt = Callable[[Params], torch.Tensor]  # parameters -> the loss on one fixed batch


def gradient(loss_at: LossAt, params: Params, wrt: list[str]) -> tuple[float, Params]:
    """The loss at `params` and its gradient w.r.t. the parameters named in `wrt`."""
    leaves = {k: v.detach().requires_grad_(k in wrt) for k, v in params.items()}
    with torch.enable_grad():
        loss = loss_at(leaves)
        grads = torch.autograd.grad(loss, [leaves[k] for k in wrt])
    return loss.item(), dict(zip(wrt, grads, strict=True))


def internal_covariate_shift(loss_at: LossAt, before: Params, after: Params,
                             layers: dict[str, tuple[str, list[str]]]) -> dict[str, float]:
    """Santurkar et al.'s Definition 2.1 for each layer {name: (its weight, the parameters upstream of
    it)}: G = the gradient w.r.t. the weight at `before`; G' = the same with the upstream parameters
    moved to `after` (their update of this step), everything else as before."""
    _, G = gradient(loss_at, before, [weight for weight, _ in layers.values()])
    out = {}
    for name, (weight, upstream) in layers.items():
        shifted = G[weight]  # nothing upstream: G' is G
        if upstream:
            _, moved = gradient(loss_at, {**before, **{k: after[k] for k in upstream}}, [weight])
            shifted = moved[weight]
        out[f"ics/{name}/l2"] = (G[weight] - shifted).norm().item()
        # in float64: float32 puts the cosine of a vector with itself at 1 + 2e-6
        out[f"ics/{name}/cos"] = F.cosine_similarity(G[weight].flatten().double(), shifted.flatten().double(),
                                                     dim=0).item()
    return out


def landscape(loss_at: LossAt, params: Params, etas: list[float]) -> dict[str, float]:
    """Santurkar et al.'s loss-landscape probe: with g the gradient at w, the loss and the gradient
    at w - eta * g for each step size eta. loss_range is max - min of those losses; grad_change the
    largest ||grad(w - eta g) - g||; beta_smoothness the largest ||grad(w - eta g) - g|| / ||eta g||."""
    names = list(params)
    _, g = gradient(loss_at, params, names)
    g_norm = math.sqrt(sum(float(v.square().sum()) for v in g.values()))
    losses, changes, betas = [], [], []
    for eta in etas:
        loss, g_there = gradient(loss_at, {k: params[k] - eta * g[k] for k in names}, names)
        change = math.sqrt(sum(float((g_there[k] - g[k]).square().sum()) for k in names))
        losses.append(loss)
        changes.append(change)
        betas.append(change / (eta * g_norm) if g_norm > 0 else math.nan)
    return {"landscape/loss_range": _largest(losses) - min(losses), "landscape/grad_change": _largest(changes),
            "landscape/beta_smoothness": _largest(betas)}


def _largest(values: list[float]) -> float:
    """max, but NaN if any value is NaN (a diverging point must not hide behind max's comparisons)."""
    return math.nan if any(math.isnan(v) for v in values) else max(values)


class VarianceShift:
    """Li et al. 2019's "variance shift" (arXiv 1801.05134): for each BN layer, the variance of its
    input over the test set in the inference network (dropout off) divided by the moving variance
    it learned in training (where dropout upstream of it was on), averaged over the layer's units.
    1 means no shift; dropout before a BN layer makes the two differ. Logged at every evaluation:
    varshift/<layer> (the layer's module name, e.g. hidden.1.norm)."""

    def __init__(self, model: nn.Module):
        self.layers = {name: m for name, m in model.named_modules()
                       if isinstance(getattr(m, "running_var", None), torch.Tensor)}
        self._sums: dict[str, list] = {}

    def _hook(self, name: str):
        def record(module, inputs):
            x = inputs[0].detach().double()
            dims = [d for d in range(x.dim()) if d != 1]  # per unit (channel): over examples and positions
            n, total, squares = self._sums.setdefault(name, [0, 0.0, 0.0])
            self._sums[name] = [n + x.numel() // x.shape[1], total + x.sum(dims), squares + (x * x).sum(dims)]

        return record

    @contextmanager
    def recording(self):
        self._sums.clear()
        with input_hooks(self.layers, self._hook):
            yield

    def ratios(self) -> dict[str, float]:
        out = {}
        for name, (n, total, squares) in self._sums.items():
            variance = (squares - total * total / n) / (n - 1)  # unbiased, as the moving variance
            ratio = variance / self.layers[name].running_var.double()
            out[f"varshift/{name}"] = ratio.mean().item()
        return out


@torch.inference_mode()
def longer_sequences(model: nn.Module, data, rows: list[int], blank: torch.Tensor, accuracy: float,
                     prepare=lambda x: x) -> dict[str, float]:
    """The variable-length test of a recurrent model reading rows (probes.longer_rows): the test set
    again with k blank rows (intensity 0, as the data normalize it: `blank`, one value per channel)
    before each image and after it, so the sequence is k steps longer than in training. Logged:
    longer/<prepend|append><k>/accuracy, and .../drop = `accuracy` (the test set as trained) minus it."""
    model.eval()
    correct, n = {(side, k): 0 for k in rows for side in ("prepend", "append")}, 0
    for x, y in data.eval_batches():
        for k in rows:
            pad = blank.to(x).view(1, -1, 1, 1).expand(x.shape[0], x.shape[1], k, x.shape[3])
            for side, longer in (("prepend", torch.cat([pad, x], 2)), ("append", torch.cat([x, pad], 2))):
                correct[side, k] += (model(prepare(longer)).argmax(1) == y).sum().item()
        n += len(y)
    model.train()
    out = {}
    for (side, k), right in correct.items():
        out[f"longer/{side}{k}/accuracy"] = right / n
        out[f"longer/{side}{k}/drop"] = accuracy - right / n
    return out


class GradientProbe:
    """The norm of each weight layer's gradient, ||dL/dW||, on a training step's own batch: on the
    first step (the gradient at the initial weights, for the vanishing and exploding gradient
    claims) and every `every` steps. Read from the gradients the step has just left on the
    parameters (the loss's alone: SGD adds weight decay inside its update), so it costs nothing of
    note and cannot change the run. Logged at the step just taken: grad/<layer>/norm."""

    def __init__(self, every: int, weights: dict[str, str]):
        """weights: {layer name: its weight's parameter name} (the model's ics_layers)."""
        self.every, self.weights = every, weights

    def due(self, step: int) -> bool:
        """Whether step `step` (0-based, just taken) is measured."""
        return step == 0 or (step + 1) % self.every == 0

    def measure(self, stepper) -> list[dict[str, float]]:
        """Each run's {grad/<layer>/norm: value}, in the stepper's order of runs."""
        norms = stepper.gradient_norms(list(self.weights.values()))  # {weight: [R]}
        per_layer = {layer: norms[w].tolist() for layer, w in self.weights.items()}
        runs = len(next(iter(per_layer.values())))
        return [{f"grad/{layer}/norm": values[r] for layer, values in per_layer.items()} for r in range(runs)]


class StepProbes:
    """The ICS and landscape probes on chosen training steps. The trainer calls `before_step` ahead
    of a due step's forward pass (the weights, buffers and random state the step starts from) and
    `measure` after its update. Every measurement runs the training network on the step's batch
    through functional calls on copies: the model's parameters, gradients, BN statistics and the
    optimizer are untouched, and the random stream is replayed (the step's own dropout masks and
    noise) and then put back where the step left it, so the run goes on exactly as without probes.
    Measured in float32, without autocast or compile."""

    def __init__(self, cfg: DictConfig, model: nn.Module):
        """cfg: the probes group (configs/probes); at least one of them on (config.step_probes_on)."""
        self.model, self.ics_every, self.landscape_every = model, int(cfg.ics_every), int(cfg.landscape_every)
        self.etas = [float(e) for e in cfg.landscape_steps]
        self.layers = model.ics_layers() if self.ics_every else {}
        self.points = model.probe_points() if self.ics_every else {}
        self.start: tuple[Params, Params, list] | None = None

    def due(self, step: int) -> bool:
        """Whether step `step` (0-based) is probed: every Nth, so its results land on step N, 2N, ..."""
        return any(every and (step + 1) % every == 0 for every in (self.ics_every, self.landscape_every))

    def before_step(self) -> None:
        params = {k: p.detach().clone() for k, p in self.model.named_parameters()}
        buffers = {k: b.clone() for k, b in self.model.named_buffers()}
        self.start = (params, buffers, _random_states())

    @torch.no_grad()
    def measure(self, step: int, x: torch.Tensor, y: torch.Tensor, lr: float) -> dict[str, float]:
        """The probes due at `step` (1-based: the step just taken), on that step's batch (x, y)."""
        before, buffers, random_states = self.start
        self.start = None
        next_states = _random_states()  # where the next step's dropout masks and noise come from

        def logits_at(params: Params, states: list) -> torch.Tensor:
            _set_random_states(states)
            copies = {k: b.clone() for k, b in buffers.items()}  # BN statistics move in these copies only
            return functional_call(self.model, (params, copies), (x,))

        def loss_at(params: Params) -> torch.Tensor:  # the step's own dropout masks and noise
            return F.cross_entropy(logits_at(params, random_states).float(), y)

        out = {}
        with torch.random.fork_rng(devices=_cuda_devices(x)):  # the step's random state comes back after
            if self.ics_every and step % self.ics_every == 0:
                after = {k: p.detach() for k, p in self.model.named_parameters()}
                out.update(internal_covariate_shift(loss_at, before, after, self.layers))
                with self.inputs_of_nonlinearities() as this_step:
                    logits_at(before, random_states)
                with self.inputs_of_nonlinearities() as next_step:
                    logits_at(after, next_states)
                out.update(activation_shift(this_step, next_step))
            if self.landscape_every and step % self.landscape_every == 0:
                out.update(landscape(loss_at, before, [eta * lr for eta in self.etas]))
        return out

    @contextmanager
    def inputs_of_nonlinearities(self):
        """{layer: the input to its nonlinearity} for the forward passes run inside."""
        found: dict[str, torch.Tensor] = {}

        def keep(name: str):
            return lambda module, inputs: found.__setitem__(name, inputs[0].detach())

        with input_hooks(self.points, keep):
            yield found


def activation_shift(now: dict[str, torch.Tensor], later: dict[str, torch.Tensor]) -> dict[str, float]:
    """How far each unit's input distribution moves from one step to the next, on the same examples:
    the mean over units of |change of its mean| and |change of its std| over the batch (and the
    positions of a feature map), as the training network computes it, with each step's own dropout
    and noise. The distributional side of covariate shift, beside the gradient side above."""
    out = {}
    for name, h in now.items():
        dims = [d for d in range(h.dim()) if d != 1]
        std_now, mean_now = torch.std_mean(h.double(), dims)
        std_later, mean_later = torch.std_mean(later[name].double(), dims)
        out[f"shift/{name}/mean"] = (mean_later - mean_now).abs().mean().item()
        out[f"shift/{name}/std"] = (std_later - std_now).abs().mean().item()
    return out


def _cuda_devices(x: torch.Tensor) -> list[int]:
    return [x.device.index or 0] if x.device.type == "cuda" else []


def _random_states() -> list:
    return [torch.get_rng_state(), *(torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [])]


def _set_random_states(states: list) -> None:
    torch.set_rng_state(states[0])
    if len(states) > 1:
        torch.cuda.set_rng_state_all(states[1:])
