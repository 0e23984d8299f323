"""Sine position encodings: of feature-map pixels (DETR, with Deformable DETR's -0.5 shift)
and of two-stage proposal boxes."""
from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """2-D sine/cosine encoding of normalized pixel positions inside the valid (unpadded) area.

    ``forward(mask (B, H, W) bool, True at padding) -> (B, 2 * num_pos_feats, H, W)``;
    the first half encodes y, the second x. Positions are cumulative counts of valid pixels
    minus 0.5 (pixel centres), normalized by the valid extent and scaled to [0, 2*pi].
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)  # (B, H, W)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        eps = 1e-6
        y_embed = (y_embed - 0.5) / (y_embed[:, -1:, :] + eps) * self.scale
        x_embed = (x_embed - 0.5) / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[..., None] / dim_t  # (B, H, W, F)
        pos_y = y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # (B, 2F, H, W)


def proposal_position_embedding(proposals: torch.Tensor, num_pos_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine encoding of unnormalized (logit-space) proposal boxes for the two-stage decoder.

    ``proposals (B, S, 4) -> (B, S, 4 * num_pos_feats)``; official ``get_proposal_pos_embed``
    (which fixes num_pos_feats = 128 for d_model 256: we use d_model // 2 in general).
    """
    scale = 2 * math.pi
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos = proposals.sigmoid() * scale
    pos = pos[:, :, :, None] / dim_t  # (B, S, 4, F)
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(2)  # (B, S, 4F)
