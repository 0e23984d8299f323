"""The drop-in ``MultiScaleDeformableAttention`` module, called exactly as the official
``models/ops/functions/ms_deform_attn_func.py`` calls its compiled extension (and the copies
of that file in DINO, Mask2Former, ...): an ``autograd.Function`` around the two calls."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable

import MultiScaleDeformableAttention as MSDA
from ops import ms_deform_attn_reference

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda,
                                               pytest.mark.skipif(not HAS_CUDA, reason="no GPU")])]


class MSDeformAttnFunction(Function):
    """The official function, verbatim apart from formatting."""

    @staticmethod
    def forward(ctx, value, value_spatial_shapes, value_level_start_index, sampling_locations,
                attention_weights, im2col_step):
        ctx.im2col_step = im2col_step
        output = MSDA.ms_deform_attn_forward(
            value, value_spatial_shapes, value_level_start_index, sampling_locations,
            attention_weights, ctx.im2col_step)
        ctx.save_for_backward(value, value_spatial_shapes, value_level_start_index,
                              sampling_locations, attention_weights)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, value_spatial_shapes, value_level_start_index, sampling_locations, \
            attention_weights = ctx.saved_tensors
        grad_value, grad_sampling_loc, grad_attn_weight = MSDA.ms_deform_attn_backward(
            value, value_spatial_shapes, value_level_start_index, sampling_locations,
            attention_weights, grad_output, ctx.im2col_step)
        return grad_value, None, None, grad_sampling_loc, grad_attn_weight, None


def case(device, dtype=torch.float64, B=2, Lq=5, M=2, D=3, P=2, shapes=((6, 4), (3, 2)),
         seed=0, index_dtype=torch.long):
    """As the official ``test.py`` builds its inputs: value (B, S, M, D), shapes, starts,
    locations (B, Lq, M, L, P, 2) in [0, 1), weights normalized over L * P."""
    g = torch.Generator().manual_seed(seed)
    shapes_t = torch.as_tensor(shapes, dtype=torch.long)
    starts = torch.cat((shapes_t.new_zeros(1), shapes_t.prod(1).cumsum(0)[:-1]))
    L, S = len(shapes), int(shapes_t.prod(1).sum())
    value = torch.rand(B, S, M, D, generator=g, dtype=torch.float64) * 0.01
    loc = torch.rand(B, Lq, M, L, P, 2, generator=g, dtype=torch.float64)
    attn = torch.rand(B, Lq, M, L, P, generator=g, dtype=torch.float64) + 1e-5
    attn = attn / attn.sum(-1, keepdim=True).sum(-2, keepdim=True)
    return (value.to(device, dtype), shapes_t.to(device, index_dtype),
            starts.to(device, index_dtype), loc.to(device, dtype), attn.to(device, dtype))


def forward_backward(args, im2col_step, grad_output):
    """Output and the three gradients through the official Function."""
    leaves = [args[i].detach().clone().requires_grad_() for i in (0, 3, 4)]
    out = MSDeformAttnFunction.apply(leaves[0], args[1], args[2], leaves[1], leaves[2], im2col_step)
    out.backward(grad_output)
    return out.detach(), [t.grad for t in leaves]


def reference(args, grad_output):
    """The grid_sample reference in float64 (independent of the kernels)."""
    ref_args = [t.double() if t.is_floating_point() else t.long() for t in args]
    leaves = [ref_args[i].detach().clone().requires_grad_() for i in (0, 3, 4)]
    out = ms_deform_attn_reference(leaves[0], ref_args[1], ref_args[2], leaves[1], leaves[2])
    out.backward(grad_output.double())
    return out.detach(), [t.grad for t in leaves]


def assert_close(actual, expected, rel):
    """|actual - expected| <= rel * max|expected|."""
    scale = max(float(expected.abs().max()), 1e-12)
    torch.testing.assert_close(actual.double(), expected, rtol=0, atol=rel * scale)


@pytest.mark.parametrize("device", DEVICES)
def test_official_function_gradcheck_float64(device):
    """The official test.py's check: float64 gradcheck of the Function, im2col_step 2."""
    value, shapes, starts, loc, attn = case(device, seed=1)
    inputs = (value.requires_grad_(), shapes, starts, loc.requires_grad_(), attn.requires_grad_(), 2)
    # nondet_tol: the CUDA backward adds into grad_value with atomics, in no fixed order.
    assert torch.autograd.gradcheck(MSDeformAttnFunction.apply, inputs, eps=1e-6, atol=1e-8,
                                    rtol=1e-5, nondet_tol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,im2col_step", [(3, 2), (1, 64), (4, 4)])
def test_official_function_matches_reference_for_any_batch(device, B, im2col_step):
    """The official extension refuses a batch that im2col_step does not divide (3 and 2)."""
    args = case(device, torch.float32, B=B, Lq=7, M=4, D=8, P=4,
                shapes=((9, 7), (5, 4), (3, 2), (1, 1)), seed=B)
    grad_output = torch.randn(B, 7, 4 * 8, device=device)
    out, grads = forward_backward(args, im2col_step, grad_output)
    ref, ref_grads = reference(args, grad_output)
    assert out.shape == (B, 7, 32) and out.dtype == torch.float32
    assert_close(out, ref, 1e-5)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, 1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loc_dtype", ["same", torch.float32])
def test_half_precision_with_same_or_float32_locations(device, dtype, loc_dtype):
    """Half / bfloat16 value; locations and weights in the same dtype, or float32 (autocast)."""
    args = list(case(device, torch.float64, B=2, Lq=6, M=2, D=16, P=3, seed=5))
    ld = dtype if loc_dtype == "same" else loc_dtype
    args = [args[0].to(dtype), args[1], args[2], args[3].to(ld), args[4].to(ld)]
    grad_output = torch.randn(2, 6, 32, device=device, dtype=torch.float64).to(dtype)
    out, grads = forward_backward(args, 64, grad_output)
    ref, ref_grads = reference(args, grad_output)  # same rounded inputs, float64
    assert out.dtype == dtype
    assert [g.dtype for g in grads] == [dtype, ld, ld]
    rel = 1e-2 if dtype == torch.float16 else 2e-2  # one rounding of a float32 result
    assert_close(out, ref, rel)
    assert_close(grads[0], ref_grads[0], rel)
    assert_close(grads[2], ref_grads[2], rel)


@pytest.mark.parametrize("device", DEVICES)
def test_int32_index_tensors(device):
    """mmcv's NPU path and some exporters pass spatial_shapes / level_start_index as int32."""
    args64 = case(device, torch.float64, seed=7)
    args32 = case(device, torch.float64, seed=7, index_dtype=torch.int32)
    assert args32[1].dtype == torch.int32
    grad_output = torch.randn(2, 5, 6, device=device, dtype=torch.float64)
    out32, grads32 = forward_backward(args32, 64, grad_output)
    out64, grads64 = forward_backward(args64, 64, grad_output)
    assert torch.equal(out32, out64)
    assert all(torch.equal(a, b) for a, b in zip(grads32, grads64))


def test_backward_returns_a_list_of_three_and_matches_forward_shapes():
    value, shapes, starts, loc, attn = case("cpu")
    out = MSDA.ms_deform_attn_forward(value, shapes, starts, loc, attn, 64)
    grads = MSDA.ms_deform_attn_backward(value, shapes, starts, loc, attn, torch.ones_like(out), 64)
    assert isinstance(grads, list) and len(grads) == 3
    assert [g.shape for g in grads] == [value.shape, loc.shape, attn.shape]


@pytest.mark.parametrize("step,error,match", [
    (0, ValueError, ">= 1"), (-64, ValueError, ">= 1"), (2.0, TypeError, "float"),
    (True, TypeError, "bool"), ("64", TypeError, "str")])
def test_bad_im2col_step_is_refused(step, error, match):
    value, shapes, starts, loc, attn = case("cpu")
    with pytest.raises(error, match=match):
        MSDA.ms_deform_attn_forward(value, shapes, starts, loc, attn, step)
    with pytest.raises(error, match=match):
        MSDA.ms_deform_attn_backward(value, shapes, starts, loc, attn,
                                     torch.zeros(2, 5, 6, dtype=torch.float64), step)


def test_numpy_integer_im2col_step_and_bad_grad_output():
    value, shapes, starts, loc, attn = case("cpu")
    out = MSDA.ms_deform_attn_forward(value, shapes, starts, loc, attn, np.int64(64))
    with pytest.raises(ValueError, match=r"grad_output must have shape \(B, Lq, M \* D\) = \(2, 5, 6\)"):
        MSDA.ms_deform_attn_backward(value, shapes, starts, loc, attn, out[:, :-1], 64)
