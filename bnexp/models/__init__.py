"""Models by name. Each model takes its norm from the norm factory and knows nothing of logging.

Every model exposes `probe_points()`: the modules whose *input* is the paper's probe (the input
to a nonlinearity, Figure 1 b/c), by a short layer name.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from bnexp import norm
from bnexp.errors import UserError
from bnexp.models.inception import Inception
from bnexp.models.lstm import LSTM
from bnexp.models.mlp import MLP

# Recurrent BN's gain starts at 0.1 (Cooijmans et al. 2016: at 1 the gradient vanishes through time).
RECURRENT_BN_GAIN = 0.1


def build(cfg: DictConfig, norm_cfg: DictConfig, input_shape: tuple, num_classes: int, replicas: int = 1) -> nn.Module:
    """The model; with replicas=R (model=inception only: see stacked), R of them as one wide network."""
    if replicas > 1 and cfg.name != "inception":
        raise ValueError(f"model={cfg.name} has no wide form for replicas (models.stacked vmaps it)")
    norm_builder = norm.make(norm_cfg)
    position = norm_cfg.get("position", "pre")  # norm=none has none
    if cfg.name == "mlp":
        in_features = 1
        for d in input_shape:
            in_features *= d
        hidden = list(cfg.hidden) if cfg.depth is None else [cfg.hidden[0]] * cfg.depth
        return MLP(in_features, num_classes, hidden, cfg.activation, cfg.init_std, norm_builder, position,
                   cfg.dropout, cfg.dropout_at, cfg.residual, cfg.skipinit)
    if cfg.name == "inception":
        if len(input_shape) != 3:
            raise UserError(f"model=inception needs images (channels, height, width), got {input_shape}")
        return Inception(input_shape[0], num_classes, input_shape[-1], cfg.width, cfg.stem, cfg.activation,
                         cfg.dropout, cfg.lrn, norm_builder, cfg.stem_pool, position, replicas)
    if cfg.name == "lstm":
        return LSTM(input_shape, num_classes, cfg.sequence, cfg.hidden, cfg.layers, cfg.forget_bias,
                    recurrent_norm(norm_cfg), tuple(norm_cfg.get("where", ())), cfg.get("h0_noise", 0.0))
    raise UserError(f"unknown model.name {cfg.name!r}")


def stacked(cfg: DictConfig, norm_cfg: DictConfig, input_shape: tuple, num_classes: int,
            replicas: int) -> nn.Module | None:
    """R networks of the model as one wide network, on the meta device (an architecture without
    tensors: the R networks' stacked tensors, reshaped, are its parameters; bnexp/stepper.py), for
    the models that have one: model=inception, whose small convolutions cost per call, not per
    channel. None for the others (the MLP's and the LSTM's matrix products batch well under vmap)."""
    if cfg.name != "inception":
        return None
    with torch.device("meta"):
        return build(cfg, norm_cfg, input_shape, num_classes, replicas)


def recurrent_norm(cfg: DictConfig):
    """make(features, steps, shift): the norm of one path of a recurrent cell, called as norm(x, t).
    Only these norms have a recurrent form here; bnexp/config.py refuses the others by name."""
    if cfg.name == "batch":
        gain = RECURRENT_BN_GAIN if cfg.gain_init is None else cfg.gain_init
        return lambda c, steps, shift: norm.RecurrentBatchNorm(c, steps, cfg.eps, cfg.momentum, gain, shift,
                                                               per_step=cfg.stats == "per_step")
    if cfg.name == "layer":
        gain = 1.0 if cfg.gain_init is None else cfg.gain_init
        return lambda c, steps, shift: norm.RecurrentLayerNorm(c, cfg.eps, gain, shift)
    return lambda c, steps, shift: None
