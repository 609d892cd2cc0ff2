"""Models by name. Each model takes its norm from the norm factory and knows nothing of logging.

Every model exposes `probe_points()`: the modules whose *input* is the paper's probe (the input
to a nonlinearity, Figure 1 b/c), by a short layer name.
"""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from bnexp import norm
from bnexp.errors import UserError
from bnexp.models.inception import Inception
from bnexp.models.mlp import MLP


def build(cfg: DictConfig, norm_cfg: DictConfig, input_shape: tuple, num_classes: int) -> nn.Module:
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
                         cfg.dropout, cfg.lrn, norm_builder, cfg.stem_pool, position)
    raise UserError(f"unknown model.name {cfg.name!r}")
