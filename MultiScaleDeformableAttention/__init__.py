"""Drop-in replacement for the official Deformable DETR CUDA extension, backed by ``ops``.

Codebases that vendor the official op (Deformable-DETR's ``models/ops``, and its copies in
DINO, Grounding DINO, Mask2Former, DAB-/DN-Deformable-DETR, ...) import a compiled module of
this name from ``models/ops/functions/ms_deform_attn_func.py``::

    import MultiScaleDeformableAttention as MSDA
    output = MSDA.ms_deform_attn_forward(value, value_spatial_shapes, value_level_start_index,
                                         sampling_locations, attention_weights, im2col_step)
    grad_value, grad_sampling_loc, grad_attn_weight = MSDA.ms_deform_attn_backward(
        value, value_spatial_shapes, value_level_start_index, sampling_locations,
        attention_weights, grad_output, im2col_step)

With this project installed, that file runs unchanged, and nothing needs to be compiled by
``setup.py``: the C++ (CPU) and CUDA kernels of ``ops`` are built once on first import. Over
the official extension this adds a CPU path, float16 / bfloat16 (float32 accumulation, also
with float32 locations and weights), any batch size, int32 index tensors, any strides.
"""
from __future__ import annotations

import operator

import torch

from ops.ms_deform_attn import ms_deform_attn, ms_deform_attn_backward as _backward

__all__ = ["ms_deform_attn_forward", "ms_deform_attn_backward"]


def _check_im2col_step(im2col_step) -> int:
    """The official kernels process the batch in chunks of ``im2col_step`` and require it to
    divide the batch. Ours need no chunking, so any positive integer is accepted (and unused)."""
    if isinstance(im2col_step, bool):
        raise TypeError("MultiScaleDeformableAttention: im2col_step must be a positive integer, "
                        "got a bool")
    try:
        step = operator.index(im2col_step)  # int, numpy integer, 0-d integer tensor
    except TypeError:
        raise TypeError(f"MultiScaleDeformableAttention: im2col_step must be a positive integer, "
                        f"got {type(im2col_step).__name__}") from None
    if step < 1:
        raise ValueError(f"MultiScaleDeformableAttention: im2col_step must be >= 1, got {step} "
                         f"(the official configs use 64)")
    return step


def ms_deform_attn_forward(value: torch.Tensor, spatial_shapes: torch.Tensor,
                           level_start_index: torch.Tensor, sampling_loc: torch.Tensor,
                           attn_weight: torch.Tensor, im2col_step: int) -> torch.Tensor:
    """The official ``ms_deform_attn_forward``: value (N, S, M, D), spatial_shapes (L, 2) rows
    (H, W), level_start_index (L,), sampling_loc (N, Lq, M, L, P, 2) x first in [0, 1],
    attn_weight (N, Lq, M, L, P) -> output (N, Lq, M * D) in value's dtype."""
    _check_im2col_step(im2col_step)
    return ms_deform_attn(value, spatial_shapes, level_start_index, sampling_loc, attn_weight)


def ms_deform_attn_backward(value: torch.Tensor, spatial_shapes: torch.Tensor,
                            level_start_index: torch.Tensor, sampling_loc: torch.Tensor,
                            attn_weight: torch.Tensor, grad_output: torch.Tensor,
                            im2col_step: int) -> list[torch.Tensor]:
    """The official ``ms_deform_attn_backward``: arguments as for the forward plus grad_output
    (N, Lq, M * D) -> [grad_value (N, S, M, D), grad_sampling_loc (N, Lq, M, L, P, 2),
    grad_attn_weight (N, Lq, M, L, P)], each in its input's dtype (a list, as the extension's
    ``std::vector<at::Tensor>``)."""
    _check_im2col_step(im2col_step)
    return list(_backward(grad_output, value, spatial_shapes, level_start_index, sampling_loc,
                          attn_weight))
