"""Two-stage Deformable DETR (sec. 4.1, "Two-Stage Deformable DETR"): every encoder token
proposes a box; the top-scoring ones become the decoder's queries."""
from __future__ import annotations

import torch

from .padding import valid_sizes


def encoder_proposals(memory: torch.Tensor, padding_mask: torch.Tensor, spatial_shapes: torch.Tensor):
    """Base proposals: a box centred on each valid pixel, of side 0.05 * 2^level.

    memory (B, Lv, C); padding_mask (B, Lv) bool; spatial_shapes (L, 2).
    Returns (memory_masked (B, Lv, C), proposals (B, Lv, 4) in logit space, +inf where invalid).
    Proposals whose centre or size lies outside (0.01, 0.99), or that sit in padding, are
    marked invalid and their memory zeroed, exactly as official ``gen_encoder_output_proposals``.
    """
    B = memory.shape[0]
    proposals, cur = [], 0
    for lvl, (H, W) in enumerate(spatial_shapes.tolist()):
        valid_wh = valid_sizes(padding_mask[:, cur:cur + H * W].view(B, H, W))  # (B, 2) as (w, h)
        gy, gx = torch.meshgrid(
            torch.linspace(0, H - 1, H, dtype=torch.float32, device=memory.device),
            torch.linspace(0, W - 1, W, dtype=torch.float32, device=memory.device),
            indexing="ij",
        )
        grid = torch.cat([gx.unsqueeze(-1), gy.unsqueeze(-1)], -1)  # (H, W, 2)
        scale = valid_wh.view(B, 1, 1, 2)
        grid = (grid.unsqueeze(0).expand(B, -1, -1, -1) + 0.5) / scale  # (B, H, W, 2)
        wh = torch.ones_like(grid) * 0.05 * (2.0**lvl)
        proposals.append(torch.cat((grid, wh), -1).view(B, -1, 4))
        cur += H * W
    proposals = torch.cat(proposals, 1)  # (B, Lv, 4)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)  # (B, Lv, 1)
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(padding_mask.unsqueeze(-1), float("inf"))
    proposals = proposals.masked_fill(~valid, float("inf"))
    out = memory.masked_fill(padding_mask.unsqueeze(-1), 0.0)
    out = out.masked_fill(~valid, 0.0)
    return out, proposals
