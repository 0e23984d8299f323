"""Run a ``transformers`` detector's deformable attention on our op (CPU and CUDA kernels).

``accelerate(model)`` replaces every ``MultiScaleDeformableAttention`` module (stateless: it
holds no parameters, only the grid_sample loop) with ``AcceleratedMultiScaleDeformableAttention``,
which takes the same arguments and calls ``ops.ms_deform_attn``. Replacing the module rather
than patching its ``forward`` keeps the model a plain module tree: ``print(model)`` shows what
runs, hooks (captures) see the same named inputs, and ``restore`` puts the originals back.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import KERNEL_CLASS


class AcceleratedMultiScaleDeformableAttention(nn.Module):
    """Drop-in for transformers' ``MultiScaleDeformableAttention``: same forward signature,
    same output (B, Lq, M * D), computed by ``ops.ms_deform_attn``."""

    def __init__(self, original: nn.Module | None = None):
        super().__init__()
        self._original = [original]  # a list, so the original is not registered as a submodule

    def forward(self, value: torch.Tensor, value_spatial_shapes: torch.Tensor, value_spatial_shapes_list,
                level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                attention_weights: torch.Tensor, im2col_step: int = 64) -> torch.Tensor:
        """value (B, Lv, M, D); value_spatial_shapes (L, 2); level_start_index (L,);
        sampling_locations (B, Lq, M, L, P, 2); attention_weights (B, Lq, M, L, P).
        ``value_spatial_shapes_list`` and ``im2col_step`` are accepted for the signature only."""
        import ops  # builds / loads the kernels on first use

        dtype = sampling_locations.dtype
        if value.dtype != dtype:  # as SamplingCore: sample in the locations' precision
            value = value.to(dtype)
        if attention_weights.dtype != dtype:
            attention_weights = attention_weights.to(dtype)
        shapes = value_spatial_shapes.to(device=value.device, dtype=torch.int64)
        if level_start_index is None:
            sizes = shapes.prod(1)
            level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
        start = level_start_index.to(device=value.device, dtype=torch.int64)
        return ops.ms_deform_attn(value, shapes, start, sampling_locations, attention_weights)


def _swap(model: nn.Module, match, make) -> int:
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if match(child):
                setattr(parent, name, make(child))
                n += 1
    return n


def accelerate(model: nn.Module) -> int:
    """Swap every ``MultiScaleDeformableAttention`` of ``model`` (a transformers model or a
    ``FamilyDetector``) for the op; returns how many modules were swapped (0 when none, e.g.
    already accelerated). Outputs stay equal (float32 CPU: <= 1e-5, tested)."""
    target = getattr(model, "hf", model)
    if not isinstance(target, nn.Module):
        raise TypeError(f"accelerate needs a torch module (a transformers detector), got {type(model).__name__}")
    return _swap(target, lambda m: type(m).__name__ == KERNEL_CLASS, AcceleratedMultiScaleDeformableAttention)


def restore(model: nn.Module) -> int:
    """Undo ``accelerate``: put the original modules back; returns how many."""
    target = getattr(model, "hf", model)
    return _swap(target, lambda m: isinstance(m, AcceleratedMultiScaleDeformableAttention),
                 lambda m: m._original[0])
