"""Class and box heads, built per decoder layer as the official code lays them out."""
from __future__ import annotations

import copy
import math

import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """Feed-forward net with ReLU between layers (official name ``layers.i``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


def build_heads(d_model: int, num_classes: int, num_pred: int, refine: bool, two_stage: bool):
    """The per-layer class and box heads.

    Without refinement every layer shares one class head and one box head (the same module
    repeated, so checkpoints list it num_pred times); with refinement each layer has its own
    copy. Initialization as officially: class bias for a prior of 0.01 (focal loss, Lin et al.
    2017), last box layer zero with size bias -2 (small initial boxes) except two-stage,
    where proposals already carry the size. Returns (class_embed, bbox_embed) ModuleLists.
    """
    class_head = nn.Linear(d_model, num_classes)
    nn.init.constant_(class_head.bias, -math.log((1 - 0.01) / 0.01))
    box_head = MLP(d_model, d_model, 4, 3)
    nn.init.constant_(box_head.layers[-1].weight, 0.0)
    nn.init.constant_(box_head.layers[-1].bias, 0.0)
    if refine:
        class_embed = nn.ModuleList(copy.deepcopy(class_head) for _ in range(num_pred))
        bbox_embed = nn.ModuleList(copy.deepcopy(box_head) for _ in range(num_pred))
        nn.init.constant_(bbox_embed[0].layers[-1].bias[2:], -2.0)
    else:
        nn.init.constant_(box_head.layers[-1].bias[2:], -2.0)
        class_embed = nn.ModuleList(class_head for _ in range(num_pred))
        bbox_embed = nn.ModuleList(box_head for _ in range(num_pred))
    if two_stage:
        for head in bbox_embed:
            nn.init.constant_(head.layers[-1].bias[2:], 0.0)
    return class_embed, bbox_embed
