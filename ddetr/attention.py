"""Multi-scale deformable attention (MSDeformAttn, eq. 3 of arXiv 2010.04159).

The module is split so that instrumentation sees exactly what the op consumes:
``MSDeformAttn`` computes offsets, weights and locations and hands them to ``SamplingCore``, a
small stateless module whose only job is to call the op. A forward hook on the core (see
``ddetr.capture``) therefore records the very tensors the kernel read.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import ops

from .frames import sampling_locations
from .linear import Linear
from .precision import dense


class SamplingCore(nn.Module):
    """Calls ``ops.ms_deform_attn``; stateless, so hooks see the op's exact inputs.

    ``reference_points`` and ``offsets`` are passed only so that observers can record them;
    the op reads ``sampling_locations`` and ``attention_weights``.
    """

    def forward(
        self,
        value: torch.Tensor,  # (B, Lv, M, D)
        spatial_shapes: torch.Tensor,  # (L, 2)
        level_start_index: torch.Tensor,  # (L,)
        sampling_locations: torch.Tensor,  # (B, Lq, M, L, P, 2)
        attention_weights: torch.Tensor,  # (B, Lq, M, L, P)
        *,
        reference_points: torch.Tensor | None = None,  # (B, Lq, L, 2 or 4)
        offsets: torch.Tensor | None = None,  # (B, Lq, M, L, P, 2), raw projection output
    ) -> torch.Tensor:
        if value.dtype != sampling_locations.dtype:
            # In bfloat16 (ddetr.precision) the value projection is bfloat16 while locations
            # stay float32: a bf16 location is off by up to 0.4 pixel on a 100-pixel map, so the
            # sampling runs in the locations' precision (the upcast of value is exact).
            value = value.to(sampling_locations.dtype)
            attention_weights = attention_weights.to(sampling_locations.dtype)
        return ops.ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


# The official location formula lives in ddetr/frames.py, importable without the op, so a
# saved capture is decoded with the very function the model used.
sampling_locations_from = sampling_locations


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with the official parameter names and initialization.

    ``forward(query (B, Lq, C), reference_points (B, Lq, L, 2|4), input_flatten (B, Lv, C),
    spatial_shapes (L, 2), level_start_index (L,), padding_mask (B, Lv) | None) -> (B, Lq, C)``.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = Linear(d_model, d_model)
        self.output_proj = Linear(d_model, d_model)
        self.core = SamplingCore()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Heads start looking in M evenly spread directions, point k at distance k (sec. 4.1).
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query, reference_points, input_flatten, spatial_shapes, level_start_index, padding_mask=None):
        B, Lq, _ = query.shape
        Lv = input_flatten.shape[1]
        M, L, P = self.n_heads, self.n_levels, self.n_points
        with dense(input_flatten):  # bfloat16 under precision.use("bf16"); the op reads it as float32
            value = self.value_proj(input_flatten)
        if padding_mask is not None:  # in place: a fresh tensor, and Linear's backward does not need it
            value = value.masked_fill_(padding_mask[..., None], 0.0)
        value = value.view(B, Lv, M, self.d_model // M)  # (B, Lv, M, D)
        offsets = self.sampling_offsets(query).view(B, Lq, M, L, P, 2)
        weights = self.attention_weights(query).view(B, Lq, M, L * P)
        weights = F.softmax(weights, -1).view(B, Lq, M, L, P)  # softmax jointly over L * P
        locations = sampling_locations_from(reference_points, offsets, spatial_shapes, P)
        out = self.core(
            value, spatial_shapes, level_start_index, locations, weights,
            reference_points=reference_points, offsets=offsets,
        )  # (B, Lq, C)
        with dense(out):
            return self.output_proj(out)
