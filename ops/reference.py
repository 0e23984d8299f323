"""Pure-PyTorch multi-scale deformable attention: the readable definition and the test oracle.

Eq. 3 of Zhu et al., "Deformable DETR" (arXiv 2010.04159): for every query q, head m,
level l and point p, bilinearly sample the level-l value map of head m at
``sampling_locations[q, m, l, p]`` and sum the samples weighted by ``attention_weights``.
This is the official ``ms_deform_attn_core_pytorch`` written against our shape vocabulary.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention sampling via ``grid_sample``.

    Args:
        value: (B, Lv, M, D), Lv = sum over levels of H_l * W_l.
        spatial_shapes: (L, 2) int64, rows (H_l, W_l).
        level_start_index: (L,) int64, offset of each level inside Lv (unused here beyond
            the split, kept so the signature matches the kernels).
        sampling_locations: (B, Lq, M, L, P, 2), x first, in [0, 1] of each level's map,
            pixel centres at (i + 0.5) / W; outside the map samples read zeros, and so do
            NaN or infinite locations.
        attention_weights: (B, Lq, M, L, P).

    Returns:
        (B, Lq, M * D).
    """
    B, _, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    value_list = value.split(sizes, dim=1)
    # grid_sample answers NaN for a NaN/inf grid point; the op defines such a point as lying
    # outside the map, so move it far outside (its gradient is then zero too).
    finite = torch.isfinite(sampling_locations).all(-1, keepdim=True)
    sampling_locations = torch.where(finite, sampling_locations, -2.0)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    samples = []
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        # (B, HW, M, D) -> (B*M, D, H, W)
        v = value_list[lvl].flatten(2).transpose(1, 2).reshape(B * M, D, int(h), int(w))
        # (B, Lq, M, P, 2) -> (B*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        samples.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (B*M, D, Lq, P)
    # (B, Lq, M, L, P) -> (B*M, 1, Lq, L*P)
    w = attention_weights.transpose(1, 2).reshape(B * M, 1, Lq, L * P)
    out = (torch.stack(samples, dim=-2).flatten(-2) * w).sum(-1)  # (B*M, D, Lq)
    return out.view(B, M * D, Lq).transpose(1, 2).contiguous()  # (B, Lq, M*D)
