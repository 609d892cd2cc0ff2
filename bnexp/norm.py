"""The normalization factory: what goes on Wu, immediately before each nonlinearity.

`make(cfg)` returns a builder; `builder(num_features, kind)` gives the layer for a fully connected
("fc", input N x C) or convolutional ("conv", input N x C x H x W) position, or None for no
normalization, in which case the layer before it keeps its bias (with a norm, beta replaces the
bias: paper sec. 3.2).

Momentum follows PyTorch everywhere: the weight of the NEW batch in a running average
(0.1 = 0.9 in the Caffe/TensorFlow convention, which weights the old value).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from omegaconf import DictConfig
from torch import nn

from bnexp.errors import UserError

NormBuilder = Callable[[int, str], "nn.Module | None"]


def make(cfg: DictConfig) -> NormBuilder:
    """The builder of norm `cfg` for a feed-forward model, its gain (gamma) starting at
    norm.gain_init where the config sets one (else the layer's own 1)."""
    build, gain = _builder(cfg), cfg.get("gain_init")
    if gain is None:
        return build

    def with_gain(c: int, kind: str) -> nn.Module | None:
        layer = build(c, kind)
        if layer is not None:
            nn.init.constant_(layer.weight, gain)
        return layer

    return with_gain


def for_replicas(layer: nn.Module | None, replicas: int) -> nn.Module | None:
    """The norm of R stacked replicas' R * C channels (bnexp/models/inception.py's `replicas`), built
    at R * C: a per-channel norm (every BN, instance norm) is already each replica's own; a group
    norm (layer norm is its one group) gets R times the groups, so no group spans two replicas."""
    if isinstance(layer, nn.GroupNorm) and replicas > 1:
        return nn.GroupNorm(layer.num_groups * replicas, layer.num_channels, layer.eps, layer.affine)
    return layer


def _builder(cfg: DictConfig) -> NormBuilder:
    name = cfg.name
    if name == "none":
        return lambda num_features, kind: None
    if name == "batch":
        if cfg.get("sync", False):
            return lambda c, kind: SyncBatchNorm(c, cfg.eps, cfg.momentum)
        return lambda c, kind: (nn.BatchNorm1d if kind == "fc" else nn.BatchNorm2d)(c, cfg.eps, cfg.momentum)
    if name == "batch_paper":
        return lambda c, kind: PaperBatchNorm(c, cfg.eps, cfg.momentum)
    if name == "batch_renorm":
        return lambda c, kind: BatchRenorm(c, cfg.eps, cfg.rate, cfg.warmup_steps, cfg.rmax, cfg.rmax_steps,
                                           cfg.dmax, cfg.dmax_steps)
    if name == "ghost":
        return lambda c, kind: GhostBatchNorm(c, cfg.eps, cfg.momentum, cfg.virtual_batch)
    if name == "noisy_batch":
        return lambda c, kind: NoisyBatchNorm(c, cfg.eps, cfg.momentum, cfg.scale_mean, cfg.scale_std,
                                              cfg.shift_mean, cfg.shift_std)
    if name == "layer":  # over all features of one example; GroupNorm(1) is that for N x C x H x W too
        return lambda c, kind: nn.GroupNorm(1, c, cfg.eps)
    if name == "group":
        def group(c: int, kind: str) -> nn.Module:
            if c % cfg.groups:
                raise UserError(f"norm=group with norm.groups={cfg.groups} does not divide {c} "
                                "channels; choose a divisor of every layer's width")
            return nn.GroupNorm(cfg.groups, c, cfg.eps)

        return group
    if name == "instance":
        def instance(c: int, kind: str) -> nn.Module:
            if kind == "fc":
                raise UserError("norm=instance normalizes each channel over its spatial positions; "
                                "after a fully connected layer there are none (use a conv model, or norm=layer)")
            return nn.InstanceNorm2d(c, cfg.eps, affine=True)

        return instance
    raise UserError(f"unknown norm.name {name!r}")


def _stats_dims(x: torch.Tensor) -> tuple[int, ...]:
    return (0,) if x.dim() == 2 else (0, 2, 3)  # per feature: over the batch, and all positions of a map


def _per_feature(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1) if x.dim() == 2 else v.view(1, -1, 1, 1)


class PaperBatchNorm(nn.Module):
    """Algorithms 1 and 2 of the paper, written out: biased batch variance in training, gradients
    through mean and variance; at inference a fixed affine map with population statistics.

    Population statistics are moving averages (PyTorch's convention and m/(m-1) correction, so this
    layer matches nn.BatchNorm exactly), or the paper's exact procedure: `finalize_population`
    averages the means and variances of N training batches and applies m/(m-1).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self._collect: list | None = None  # (mean, biased var, m) per batch while finalizing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self._collect is not None:  # Algorithm 1 (also while finalizing: the training network)
            dims = _stats_dims(x)
            var, mean = torch.var_mean(x, dims, unbiased=False)  # one pass for both
            m = x.numel() // x.shape[1]
            with torch.no_grad():
                if self._collect is not None:
                    self._collect.append((mean, var, m))
                else:
                    self.running_mean.lerp_(mean, self.momentum)
                    self.running_var.lerp_(var * m / max(m - 1, 1), self.momentum)
            xhat = (x - _per_feature(mean, x)) * _per_feature(torch.rsqrt(var + self.eps), x)
            return torch.addcmul(_per_feature(self.bias, x), xhat, _per_feature(self.weight, x))
        scale = self.weight / torch.sqrt(self.running_var + self.eps)  # Algorithm 2: y = scale * x + shift
        shift = self.bias - self.running_mean * scale
        return x * _per_feature(scale, x) + _per_feature(shift, x)


def population_layers(model: nn.Module) -> list[nn.Module]:
    """The BN layers whose inference statistics `finalize_population` can compute (not Batch Renorm's)."""
    return [m for m in model.modules() if isinstance(m, (PaperBatchNorm, nn.modules.batchnorm._BatchNorm))]


@torch.no_grad()
def finalize_population(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """The paper's inference statistics (Algorithm 2, steps 8-10) for every BN layer in `model`:
    E[x] = mean of the batch means, Var[x] = m/(m-1) * mean of the batch variances, over the given
    training batches, through the training network with its parameters frozen (dropout off).
    PaperBatchNorm collects them itself; torch's BN layers (and Ghost/Sync BN) get the same from
    their cumulative average mode (momentum=None), which averages batch means and unbiased
    variances. Returns how many batches were used."""
    layers = population_layers(model)
    papers = [m for m in layers if isinstance(m, PaperBatchNorm)]
    torch_bns = [m for m in layers if not isinstance(m, PaperBatchNorm)]
    momenta = [m.momentum for m in torch_bns]
    was_training = model.training
    model.eval()
    for layer in papers:
        layer._collect = []
    for layer in torch_bns:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()  # batch statistics, accumulated into the running ones
    count = 0
    try:
        for x in batches:
            model(x)
            count += 1
        for layer in papers:
            means, variances, sizes = zip(*layer._collect, strict=True)
            m = sizes[0]
            layer.running_mean.copy_(torch.stack(means).mean(0))
            layer.running_var.copy_(torch.stack(variances).mean(0) * m / max(m - 1, 1))
    finally:
        for layer in papers:
            layer._collect = None
        for layer, momentum in zip(torch_bns, momenta, strict=True):
            layer.momentum = momentum
        model.train(was_training)
    return count


@torch.no_grad()
def adapt_population(model: nn.Module, images: torch.Tensor, prior: float) -> None:
    """Statistics re-estimated on n unlabeled test images (AdaBN, Li et al. 2016) with a source
    prior (Schneider et al. 2020): every BN layer's inference statistics become N/(N+n) of those it
    holds plus n/(N+n) of the images' at its input (the mean, and m/(m-1) times the biased variance,
    as population statistics are), in one pass through the inference network, so that each layer
    meets its input with the layers before it already adapted. prior N=0: the images' alone."""
    weight = len(images) / (prior + len(images))

    def mix(layer, args):
        x = args[0]
        var, mean = torch.var_mean(x, _stats_dims(x), unbiased=False)
        m = x.numel() // x.shape[1]
        layer.running_mean.lerp_(mean, weight)
        layer.running_var.lerp_(var * m / max(m - 1, 1), weight)

    handles = [layer.register_forward_pre_hook(mix) for layer in population_layers(model)]
    was_training = model.training
    model.eval()
    try:
        model(images)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def batch_statistics_layers(model: nn.Module) -> list[nn.Module]:
    """The layers that normalize with batch statistics in training (BN and its variants)."""
    return [m for m in model.modules()
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, PaperBatchNorm, BatchRenorm, RecurrentBatchNorm))]


# --- recurrent models: a norm applied at every time step, called as norm(x, t) ---------------

class RecurrentBatchNorm(nn.Module):
    """BN of one term of a recurrent cell (Cooijmans et al. 2016, "Recurrent Batch Normalization"):
    in training each time step t is normalized with its own batch's statistics (the only causal
    choice: step t's hidden term does not exist before step t-1 is done), and each step keeps its
    own moving averages; gain and shift are shared by all steps. At inference, `per_step` uses
    step t's population statistics (Cooijmans'), steps beyond the training length those of the
    last step; otherwise (norm.stats=shared) one set for every step, pooled over the steps:
    mean = the steps' mean, var = the mean of their variances plus the variance of their means
    (the statistics of all steps' values together, "averaging statistics over time").
    Training is the same either way; only inference differs."""

    def __init__(self, num_features: int, steps: int, eps: float = 1e-5, momentum: float = 0.1, gain: float = 0.1,
                 shift: bool = True, per_step: bool = True):
        super().__init__()
        self.steps, self.eps, self.momentum, self.per_step = steps, eps, momentum, per_step
        self.weight = nn.Parameter(torch.full((num_features,), float(gain)))
        self.bias = nn.Parameter(torch.zeros(num_features)) if shift else None
        self.register_buffer("running_mean", torch.zeros(steps, num_features))
        self.register_buffer("running_var", torch.ones(steps, num_features))

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        s = min(t, self.steps - 1)
        if self.training:
            var, mean = torch.var_mean(x, 0, unbiased=False)
            with torch.no_grad():
                m, keep = x.shape[0], 1 - self.momentum  # lerp_ written out: vmap (replicas) batches these
                self.running_mean[s].mul_(keep).add_(mean * self.momentum)
                self.running_var[s].mul_(keep).add_(var * (self.momentum * m / max(m - 1, 1)))
        else:
            mean, var = self.population(s)
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight
        return y if self.bias is None else y + self.bias

    def all_steps(self, xs: torch.Tensor) -> torch.Tensor:
        """forward(xs[t], t) for every t of xs [T, B, C] at once: a term known for all steps
        ahead (the input's) pays for one normalization instead of T."""
        steps = xs.shape[0]
        if self.training and steps > self.steps:
            return torch.stack([self(x, t) for t, x in enumerate(xs)])
        if self.training:
            var, mean = torch.var_mean(xs, 1, unbiased=False, keepdim=True)
            with torch.no_grad():
                m, keep = xs.shape[1], 1 - self.momentum
                self.running_mean[:steps].mul_(keep).add_(mean[:, 0] * self.momentum)
                self.running_var[:steps].mul_(keep).add_(var[:, 0] * (self.momentum * m / max(m - 1, 1)))
        elif self.per_step:
            last = torch.arange(steps, device=xs.device).clamp(max=self.steps - 1)
            mean, var = self.running_mean[last].unsqueeze(1), self.running_var[last].unsqueeze(1)
        else:
            mean, var = self.population(0)
        y = (xs - mean) * torch.rsqrt(var + self.eps) * self.weight
        return y if self.bias is None else y + self.bias

    def population(self, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The inference statistics (mean, var) of step s."""
        if self.per_step:
            return self.running_mean[s], self.running_var[s]
        return self.running_mean.mean(0), self.running_var.mean(0) + self.running_mean.var(0, unbiased=False)


class RecurrentLayerNorm(nn.LayerNorm):
    """Layer Normalization of one term of a recurrent cell (Ba et al. 2016): over the features of
    each example at each step, so nothing depends on the batch or on the step."""

    def __init__(self, num_features: int, eps: float = 1e-5, gain: float = 1.0, shift: bool = True):
        super().__init__(num_features, eps, bias=shift)
        nn.init.constant_(self.weight, gain)

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return super().forward(x)

    def all_steps(self, xs: torch.Tensor) -> torch.Tensor:
        return super().forward(xs)  # per example: the steps are independent


class BatchRenorm(nn.Module):
    """Batch Renormalization (Ioffe 2017): xhat = (x - mu_B) / sigma_B * r + d, with
    r = clip(sigma_B / sigma, 1/rmax, rmax) and d = clip((mu_B - mu) / sigma, -dmax, dmax) held
    constant in backprop; moving averages of mu and sigma (not sigma^2) at `rate`. rmax = 1 and
    dmax = 0 (plain BN) for `warmup_steps`, then relaxed linearly to `rmax` by `rmax_steps` and to
    `dmax` by `dmax_steps`. Steps are this layer's training forward passes. Inference:
    gamma * (x - mu) / sigma + beta."""

    def __init__(self, num_features, eps=1e-5, rate=0.01, warmup_steps=5000, rmax=3.0, rmax_steps=40000,
                 dmax=5.0, dmax_steps=25000):
        super().__init__()
        self.eps, self.rate = eps, rate
        self.warmup_steps, self.rmax_final, self.rmax_steps = warmup_steps, rmax, rmax_steps
        self.dmax_final, self.dmax_steps = dmax, dmax_steps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_std", torch.ones(num_features))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def limits(self, step: int) -> tuple[float, float]:
        """(rmax, dmax) at a training step: plain BN during warm-up, then linear relaxation."""

        def ramp(final, start_value, end_step):
            if step <= self.warmup_steps:
                return start_value
            done = min(1.0, (step - self.warmup_steps) / max(end_step - self.warmup_steps, 1))
            return start_value + done * (final - start_value)

        return ramp(self.rmax_final, 1.0, self.rmax_steps), ramp(self.dmax_final, 0.0, self.dmax_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            xhat = (x - _per_feature(self.running_mean, x)) / _per_feature(self.running_std, x)
            return _per_feature(self.weight, x) * xhat + _per_feature(self.bias, x)
        dims = _stats_dims(x)
        mean = x.mean(dims)
        std = torch.sqrt(x.var(dims, unbiased=False) + self.eps)
        rmax, dmax = self.limits(int(self.steps))
        with torch.no_grad():
            r = (std / self.running_std).clamp(1 / rmax, rmax)
            d = ((mean - self.running_mean) / self.running_std).clamp(-dmax, dmax)
            self.running_mean.lerp_(mean, self.rate)
            self.running_std.lerp_(std, self.rate)
            self.steps += 1
        xhat = (x - _per_feature(mean, x)) / _per_feature(std, x) * _per_feature(r, x) + _per_feature(d, x)
        return _per_feature(self.weight, x) * xhat + _per_feature(self.bias, x)


class _AnyInputBatchNorm(nn.modules.batchnorm._BatchNorm):
    """torch's BN machinery for fc (N x C) and conv (N x C x H x W) inputs alike."""

    def _check_input_dim(self, x):
        if x.dim() not in (2, 4):
            raise ValueError(f"expected a 2D or 4D input, got {x.dim()}D")


class SyncBatchNorm(_AnyInputBatchNorm):
    """BN whose training statistics are over the global batch: the shards of all processes of a
    data-parallel run (norm.sync=true). Without a process group it is plain BN.

    torch's nn.SyncBatchNorm refuses CPU tensors; this one all-reduces through autograd
    (`all_reduce` below), so it runs on gloo (CPU) and NCCL (GPU) alike. Two all-reduces per
    layer: the global mean, then the global variance around it (better conditioned than E[x^2] - mean^2).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = _stats_dims(x)
        count = all_reduce(x.new_tensor(float(x.numel() // x.shape[1])))
        mean = all_reduce(x.sum(dims)) / count
        centered = x - _per_feature(mean, x)
        var = all_reduce((centered * centered).sum(dims)) / count  # biased, as in Algorithm 1
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / (count - 1), self.momentum)
        xhat = centered / torch.sqrt(_per_feature(var, x) + self.eps)
        return _per_feature(self.weight, x) * xhat + _per_feature(self.bias, x)


class _AllReduce(torch.autograd.Function):
    """Sum over processes, differentiable: the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduce.apply(grad)


all_reduce = _AllReduce.apply


class GhostBatchNorm(_AnyInputBatchNorm):
    """BN over virtual sub-batches of `virtual_batch` examples (Hoffer et al. 2017): each chunk of
    the batch is normalized with its own statistics; running statistics average over the chunks.
    Inference is plain BN with the population statistics."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, virtual_batch=32):
        super().__init__(num_features, eps, momentum)
        self.virtual_batch = virtual_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.virtual_batch:
            return super().forward(x)
        if x.shape[0] % self.virtual_batch:  # bnexp's validation refuses such batch sizes before a run starts
            raise ValueError(f"batch of {x.shape[0]} is not a multiple of virtual_batch={self.virtual_batch}")
        return torch.cat([super(GhostBatchNorm, self).forward(chunk) for chunk in x.split(self.virtual_batch)])


class NoisyBatchNorm(_AnyInputBatchNorm):
    """BN followed by Santurkar et al.'s non-stationary noise ("noisy BN", arXiv 1805.11604, their Figure 2):
    in training, every output of every example gets its own random scale and shift,
    y -> y * scale + shift, drawn from distributions with non-zero mean and non-unit variance that
    change every step. Per feature and step:

        scale ~ N(mu_s, sigma_s^2), mu_s ~ U(1 - scale_mean, 1 + scale_mean), sigma_s ~ U(0, scale_std)
        shift ~ N(mu_m, sigma_m^2), mu_m ~ U(-shift_mean, shift_mean),      sigma_m ~ U(0, shift_std)

    so a layer's output distribution moves from step to step far more than BN lets it (more
    "internal covariate shift"), by design. The noise comes from the process's random stream, as
    dropout's does (a run is still a function of its seed). At inference there is no noise; with all
    four ranges 0 the layer is plain BN."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, scale_mean=0.5, scale_std=0.5, shift_mean=0.5,
                 shift_std=0.5):
        super().__init__(num_features, eps, momentum)
        self.scale_mean, self.scale_std, self.shift_mean, self.shift_std = scale_mean, scale_std, shift_mean, shift_std

    def noise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's scale and shift for every element of x (distributions drawn anew per call)."""
        c = x.shape[1]

        def uniform(low: float, high: float) -> torch.Tensor:
            return _per_feature(torch.rand(c, device=x.device, dtype=x.dtype) * (high - low) + low, x)

        scale = uniform(1 - self.scale_mean, 1 + self.scale_mean) + uniform(0, self.scale_std) * torch.randn_like(x)
        shift = uniform(-self.shift_mean, self.shift_mean) + uniform(0, self.shift_std) * torch.randn_like(x)
        return scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if not self.training:
            return y
        scale, shift = self.noise(y)
        return torch.addcmul(shift, y, scale)
