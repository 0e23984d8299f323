"""The "v2" deformable attention of RT-DETRv2, D-FINE and DEIMv2, read by a capture.

These attentions call a *function* (``multi_scale_deformable_attention_v2``) instead of the
shared module, so there is no op call to hook. What that function receives is still
observable: the attention weights are the module's second output, and the locations are
rebuilt from the module's own inputs (``reference_points``, a pre-hook) and its raw
``sampling_offsets`` projection (a forward hook) with the module's formula, operation for
operation (tested bit-equal against the function's arguments). Points are laid out level-major
(``num_points_list`` splits the L * P axis per level), so with the same P on every level they
are (B, Lq, M, L, P); per-level point counts (a D-FINE option) do not fit that shape and are
refused with the reason.
"""
from __future__ import annotations

import torch

V2_CLASSES = ("RTDetrV2MultiscaleDeformableAttention", "DFineMultiscaleDeformableAttention",
              "Deimv2MultiscaleDeformableAttention")


def is_v2(module: torch.nn.Module) -> bool:
    return type(module).__name__ in V2_CLASSES


def points_per_level(module: torch.nn.Module) -> list[int]:
    return list(getattr(module, "n_points_list", None) or getattr(module, "num_points_list"))


def uniform_points(module: torch.nn.Module) -> bool:
    return len(set(points_per_level(module))) == 1


def v2_locations(module: torch.nn.Module, reference_points: torch.Tensor, raw_offsets: torch.Tensor,
                 spatial_shapes: torch.Tensor) -> torch.Tensor:
    """The locations the v2 function receives, (B, Lq, M, L * P, 2), from reference_points
    (B, Lq, L | 1, 2 | 4), the ``sampling_offsets`` output (B, Lq, M * L * P * 2) and
    spatial_shapes (L, 2); the module's own formula (box references: offsets scaled by
    1 / P_l, the box size and ``offset_scale``)."""
    B, Lq = raw_offsets.shape[:2]
    M, total = module.n_heads, sum(points_per_level(module))
    off = raw_offsets.reshape(B, Lq, M, total, 2)  # as the module: view / reshape are the same values
    if reference_points.shape[-1] == 4:
        scale = getattr(module, "n_points_scale", None)
        if scale is None:
            scale = module.num_points_scale
        scale = scale.to(dtype=raw_offsets.dtype).unsqueeze(-1)
        offset = off * scale * reference_points[:, :, None, :, 2:] * module.offset_scale
        return reference_points[:, :, None, :, :2] + offset
    raise ValueError("v2 attention with point references (encoder-style) is not captured; decoders use boxes")


def to_levels(t: torch.Tensor, n_levels: int) -> torch.Tensor:
    """(B, Lq, M, L * P[, 2]) level-major -> (B, Lq, M, L, P[, 2])."""
    B, Lq, M, LP = t.shape[:4]
    return t.reshape(B, Lq, M, n_levels, LP // n_levels, *t.shape[4:])
