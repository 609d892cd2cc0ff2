"""One training step for R >= 1 runs: the one thing a single run and a replicated run do differently.

`step(x, y, lr)` takes the R runs' batches stacked, inputs [R, B, ...] and labels [R, B], makes one
SGD step for each run, and returns their losses [R] and logits [R, B, C], on the device and unread
(the trainer reads them once per log window). `optimizer_of(r)` is run r's optimizer, as its
checkpoints hold it.

- `OneModel` (R = 1): the module itself, in its memory layout, under DistributedDataParallel in a
  torchrun process group, compiled where asked for.
- `StackedModels` (R > 1, "replicas"): small networks train at a rate set by per-operation overhead,
  not arithmetic; stacking the R networks' parameters along a new leading dimension and computing
  them in one call pays that overhead once per step for all. The call is the model's wide twin where
  it has one (models.stacked: the Inception net R times as wide, its convolutions grouped by R, whose
  parameters are the stacked ones reshaped), else one vmapped call of the module. Each module's
  parameters and buffers become views of the stacked tensors, so evaluating the plain module sees
  every update.
  SGD over the stacked parameters is elementwise: each replica's update is the one its run alone
  would make. Results equal the runs alone to float tolerance, not bitwise: batched kernels sum in
  another order.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from bnexp.builders import autocast, in_layout
from bnexp.evaluation import fold_batch_norms


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class OneModel:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: DictConfig, clip_norm: float = 0.0):
        """cfg: the trainer group's speed flags (amp, channels_last, compile). clip_norm: optim.clip_norm."""
        self.model, self.optimizer, self.lr, self.clip_norm = model, optimizer, None, float(clip_norm)
        self.device = next(model.parameters()).device
        self.amp, self.channels_last = bool(cfg.amp), bool(cfg.channels_last)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        # Evaluation runs the plain module, where the probes' hooks live; training may run it wrapped.
        self.forward = model
        if torch.distributed.is_initialized():
            from torch.nn.parallel import DistributedDataParallel

            on_gpu = self.device.type == "cuda"
            self.forward = DistributedDataParallel(model, device_ids=[self.device] if on_gpu else None)
        if cfg.compile:
            self.forward = torch.compile(self.forward)

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        if lr != self.lr:
            set_lr(self.optimizer, lr)
            self.lr = lr
        with autocast(self.device, self.amp):
            logits = self.forward(in_layout(x[0], self.channels_last))
            loss = F.cross_entropy(logits.float(), y[0])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_norm:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.optimizer.step()
        return loss.unsqueeze(0), logits.unsqueeze(0)

    def optimizer_of(self, r: int) -> torch.optim.SGD:
        return self.optimizer

    def inference_network(self, fold_bn: bool) -> None:
        """None: one run's record evaluates its own module (RunRecord.evaluate)."""
        return None

    def gradient_norms(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The last step's gradient norm of each named parameter, [1] each (0 where it got none)."""
        grads = {name: self.model.get_parameter(name).grad for name in names}
        return {name: (g.norm() if g is not None else torch.zeros((), device=self.device)).reshape(1)
                for name, g in grads.items()}


class StackedModels:
    def __init__(self, modules: list[nn.Module], make_optimizer, cfg: DictConfig, clip_norm: float = 0.0,
                 wide: nn.Module | None = None):
        """make_optimizer(parameters): the optimizer as the config sets it, here over the stacked
        parameters (SGD's and Adam's updates are elementwise: each replica's is its own).
        wide: the modules' wide twin (models.stacked), or None to vmap them."""
        self.stack, self.clip_norm = Stack(modules, wide, bool(cfg.channels_last)), float(clip_norm)
        self.optimizer, self.lr = make_optimizer(self.stack.params.values()), None
        self.device = next(iter(self.stack.params.values())).device
        self.amp = bool(cfg.amp)
        # torch.compile fuses the vmapped step's layout copies and small ops: ~1.6-1.9x on a CPU.
        self.forward = torch.compile(self.stack.forward) if cfg.compile else self.stack.forward

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        if lr != self.lr:
            set_lr(self.optimizer, lr)
            self.lr = lr
        with autocast(self.device, self.amp):
            losses, logits = self.forward(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # replica r's gradient is its own loss's: the replicas never mix
        if self.clip_norm:
            clip_each(list(self.stack.params.values()), self.clip_norm)
        self.optimizer.step()
        return losses, logits

    def inference_network(self, fold_bn: bool) -> nn.Module | None:
        """The R networks' inference network as one wide module with their current weights, in eval
        mode (with fold_bn, each replica's BN folded into its convolution), for evaluating them in one
        pass (record.evaluate_together); None for vmapped models, whose replicas evaluate one by one."""
        if self.stack.wide is None:
            return None
        wide = copy.deepcopy(self.stack.wide).to_empty(device=self.device)
        wide.load_state_dict(self.stack.wide_state())
        return fold_batch_norms(wide) if fold_bn else wide.eval()

    def optimizer_of(self, r: int) -> ReplicaOptimizer:
        return ReplicaOptimizer(self.optimizer, r)

    def gradient_norms(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The last step's gradient norm of each named parameter, per replica: [R] each."""
        norms = {}
        for name in names:
            stacked = self.stack.params[name]
            g = stacked.grad if stacked.grad is not None else torch.zeros_like(stacked)
            norms[name] = g.flatten(1).norm(dim=1)
        return norms


@torch.no_grad()
def clip_each(stacked: list[torch.Tensor], max_norm: float) -> None:
    """clip_grad_norm_ for each replica of stacked parameters [R, ...]: replica r's gradient is
    scaled by min(1, max_norm / (its global norm + 1e-6)), as its run alone would be."""
    grads = [p.grad for p in stacked if p.grad is not None]
    if not grads:
        return
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()  # [R]
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))


class Stack:
    """R modules of one architecture as stacked tensors, [R, ...] each, computed in one call: of their
    wide twin, or vmapped. The modules keep working on their own: their parameters and buffers
    become views of the stacks."""

    def __init__(self, modules: list[nn.Module], wide: nn.Module | None = None, channels_last: bool = False):
        """channels_last: the wide twin's input in that layout (config.check_replicable allows it only
        with a twin); its weights stay views of the stacked tensors, which the convolutions accept."""
        self.params, self.buffers = stack_module_state(modules)  # parameters: leaves that require grad
        self.channels_last = channels_last
        self.base = copy.deepcopy(modules[0]).to("meta").train()  # the architecture, without tensors
        self.wide = wide.train() if wide is not None else None
        if wide is not None:  # each stacked tensor's shape in the wide twin
            self.wide_shapes = {**{n: p.shape for n, p in wide.named_parameters()},
                                **{n: b.shape for n, b in wide.named_buffers()}}
            # A buffer of each replica's shape is its slice of the wide one (BN's running statistics
            # update in place, in the stack). A counter (BN's num_batches_tracked: [R] here, one in
            # the wide layer) is the lockstep replicas' one number: replica 0's counts, the others copy.
            self.counters = [n for n, t in self.buffers.items() if self.wide_shapes[n] == t.shape[1:]]
        for r, module in enumerate(modules):
            for name, stacked in self.params.items():
                owner, attr = _owner(module, name)
                owner._parameters[attr] = nn.Parameter(stacked[r].detach(), requires_grad=False)
            for name, stacked in self.buffers.items():
                owner, attr = _owner(module, name)
                owner._buffers[attr] = stacked[r]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each replica's mean cross-entropy on its batch, [R], and its logits, [R, B, C]."""
        if self.wide is not None:
            return self.wide_forward(x, y)

        def one(params, buffers, x, y):
            logits = functional_call(self.base, (params, buffers), (x,))
            return F.cross_entropy(logits.float(), y), logits

        return vmap(one)(self.params, self.buffers, x, y)

    def wide_state(self) -> dict[str, torch.Tensor]:
        """The wide twin's parameters and buffers: views of the stacked tensors in its shapes."""
        state = {name: t.view(self.wide_shapes[name]) for name, t in self.params.items()}
        return state | {name: t[0] if name in self.counters else t.view(self.wide_shapes[name])
                        for name, t in self.buffers.items()}

    def wide_forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The wide twin on the replicas' batches side by side in the channels: [R, B, C, H, W] in as
        [B, R * C, H, W], replica r's images in its channels; logits [B, R * K] out as [R, B, K]."""
        replicas, batch = y.shape
        side_by_side = in_layout(x.transpose(0, 1).flatten(1, 2), self.channels_last)
        logits = functional_call(self.wide, self.wide_state(), (side_by_side,))
        logits = logits.unflatten(1, (replicas, -1)).transpose(0, 1)
        with torch.no_grad():
            for name in self.counters:
                self.buffers[name][1:] = self.buffers[name][0]
        losses = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none")
        return losses.view(replicas, batch).mean(1), logits


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (module.get_submodule(path) if path else module), attr


class ReplicaOptimizer:
    """Replica r's part of the stacked optimizer, as its checkpoints hold it: the state_dict that
    torch.optim.SGD over that replica's own parameters would have."""

    def __init__(self, stacked: torch.optim.SGD, r: int):
        self.stacked, self.r = stacked, r

    def state_dict(self) -> dict:
        full = self.stacked.state_dict()
        # Per-element state is [R, ...]; a scalar one (Adam's step count) is every replica's.
        state = {i: {k: (v[self.r] if v.dim() else v).clone() if isinstance(v, torch.Tensor) else v
                     for k, v in s.items()}
                 for i, s in full["state"].items()}
        return {"state": state, "param_groups": full["param_groups"]}

    @torch.no_grad()
    def load_state_dict(self, saved: dict) -> None:
        params = self.stacked.param_groups[0]["params"]
        for i, s in saved["state"].items():
            for k, v in s.items():
                own = self.stacked.state[params[int(i)]]
                if isinstance(v, torch.Tensor) and v.dim() == 0:
                    own[k] = v.clone()  # the lockstep replicas' one count
                elif isinstance(v, torch.Tensor):
                    if k not in own:
                        own[k] = torch.zeros_like(params[int(i)])
                    own[k][self.r].copy_(v)
