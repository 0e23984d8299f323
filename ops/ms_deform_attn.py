"""The public op: argument checks, dispatch to a kernel or the reference, fake and autograd.

``torch.ops.ddetr_ops.ms_deform_attn_forward`` / ``..._backward`` are defined in C++
(``csrc/ms_deform_attn_cpu.cpp``, ``TORCH_LIBRARY``) with CPU and CUDA implementations
(``TORCH_LIBRARY_IMPL``). This module adds what torch.compile and autograd need
(``register_fake``, ``register_autograd``) and the user-facing ``ms_deform_attn``, which
checks its arguments and falls back to the pure-PyTorch reference on devices without a
kernel (warning once, at import, about which implementation runs and why).
"""
from __future__ import annotations

import warnings
import weakref
from collections import deque
from typing import NamedTuple

import torch

from ops import build
from ops.reference import ms_deform_attn_reference


class KernelUnavailableWarning(UserWarning):
    """A kernel could not be built or loaded; the (slower) reference runs instead."""


def _load_kernels() -> dict[str, build.BuildResult]:
    results = {"cpu": build.load_kernel("cpu")}
    if not torch.cuda.is_available():
        results["cuda"] = build.BuildResult("cuda", False, "no CUDA device visible to torch")
    elif not results["cpu"].ok:
        results["cuda"] = build.BuildResult(
            "cuda", False, "needs the C++ library that defines the op (see the cpu entry)")
    else:
        results["cuda"] = build.load_kernel("cuda")
    return results


KERNELS = _load_kernels()


def _warn_fallbacks() -> None:
    used = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    missing = [d for d in used if not KERNELS[d].ok]
    if missing:
        warnings.warn(
            f"ops.ms_deform_attn runs the pure-PyTorch reference implementation "
            f"(ms_deform_attn_reference, grid_sample; some 20x slower) on "
            f"{' and '.join(missing)} tensors because the kernel is unavailable: "
            + "; ".join(f"{d}: {KERNELS[d].detail}" for d in missing)
            + ". `python -m ops` shows what is available.",
            KernelUnavailableWarning,
            stacklevel=3,
        )


_warn_fallbacks()


def implementation(device: torch.device | str = "cpu") -> str:
    """Which implementation ``ms_deform_attn`` runs for tensors on ``device``:
    ``"cpu-kernel"``, ``"cuda-kernel"`` or ``"reference"``."""
    kind = torch.device(device).type
    if kind in ("cpu", "cuda") and KERNELS[kind].ok:
        return f"{kind}-kernel"
    return "reference"


# int32 index tensors are what mmcv's NPU path and some exporters pass; the kernels read int64.
INDEX_DTYPES = (torch.int64, torch.int32)
# A half-precision value may come with float32 locations and weights: code ported from mmcv
# runs the op under autocast, which leaves the (float32) offsets and softmax in float32.
HALF_DTYPES = (torch.float16, torch.bfloat16)


def _compute_dtype(value, sampling_locations, attention_weights) -> torch.dtype:
    """The dtype the kernel runs in: value's, or float32 when a half-precision value comes with
    float32 locations or weights. Upcasting the value (rather than rounding the locations to
    half, as mmcv does) keeps the sub-pixel positions exact; the kernels accumulate half in
    float32 anyway, so only the result is rounded, once."""
    if torch.float32 in (sampling_locations.dtype, attention_weights.dtype):
        return torch.promote_types(value.dtype, torch.float32)
    return value.dtype


def _shape_error(name: str, expected: str, t: torch.Tensor) -> ValueError:
    return ValueError(f"ms_deform_attn: {name} must have shape {expected}, got {tuple(t.shape)}")


def _check_arguments(value, spatial_shapes, level_start_index, sampling_locations,
                     attention_weights) -> None:
    """Raises ValueError naming the argument, what was expected and what was given."""
    args = dict(value=value, spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                sampling_locations=sampling_locations, attention_weights=attention_weights)
    for name, t in args.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"ms_deform_attn: {name} must be a torch.Tensor, got {type(t)}")
    if value.dim() != 4:
        raise _shape_error("value", "(B, Lv, M, D)", value)
    B, Lv, M, D = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2 or spatial_shapes.shape[0] < 1:
        raise _shape_error("spatial_shapes", "(L, 2) with L >= 1", spatial_shapes)
    L = spatial_shapes.shape[0]
    if level_start_index.shape != (L,):
        raise _shape_error("level_start_index", f"(L,) = ({L},)", level_start_index)
    loc = sampling_locations
    if loc.dim() != 6 or loc.shape[0] != B or loc.shape[2] != M or loc.shape[3] != L \
            or loc.shape[5] != 2:
        raise _shape_error("sampling_locations", f"(B, Lq, M, L, P, 2) = ({B}, Lq, {M}, {L}, P, 2)",
                           loc)
    Lq, P = loc.shape[1], loc.shape[4]
    if attention_weights.shape != (B, Lq, M, L, P):
        raise _shape_error("attention_weights", f"(B, Lq, M, L, P) = ({B}, {Lq}, {M}, {L}, {P})",
                           attention_weights)
    for name in ("spatial_shapes", "level_start_index"):
        if args[name].dtype not in INDEX_DTYPES:
            raise ValueError(f"ms_deform_attn: {name} must be int64 (torch.long) or int32, got "
                             f"{args[name].dtype}; use .long()")
    if not value.is_floating_point():
        raise ValueError(f"ms_deform_attn: value must be a floating-point tensor, got {value.dtype}")
    for name in ("sampling_locations", "attention_weights"):
        dtype = args[name].dtype
        if dtype != value.dtype and not (value.dtype in HALF_DTYPES and dtype == torch.float32):
            raise ValueError(f"ms_deform_attn: {name} has dtype {dtype} but value has "
                             f"{value.dtype}; cast with .to(value.dtype) (only a float16/bfloat16 "
                             f"value may come with float32 {name})")
    for name, t in args.items():
        if t.device != value.device:
            raise ValueError(f"ms_deform_attn: {name} is on {t.device} but value is on "
                             f"{value.device}; all five tensors must be on one device")
    if torch.compiler.is_compiling() or spatial_shapes.device.type == "meta" or isinstance(
            spatial_shapes, torch._subclasses.FakeTensor):
        return  # values are unknown while tracing; the kernels bound every index by Lv
    if _layout_checked_before(spatial_shapes, level_start_index, Lv):
        return
    # One small device-to-host copy (a synchronization on CUDA) to check the level layout.
    hw_starts = torch.cat([spatial_shapes.flatten(), level_start_index]).tolist()
    shapes, starts = hw_starts[:2 * L], hw_starts[2 * L:]
    total = 0
    for lvl in range(L):
        h, w = shapes[2 * lvl], shapes[2 * lvl + 1]
        if h < 1 or w < 1:
            raise ValueError(f"ms_deform_attn: spatial_shapes[{lvl}] = ({h}, {w}) must be positive")
        if starts[lvl] != total:
            raise ValueError(f"ms_deform_attn: level_start_index[{lvl}] = {starts[lvl]} is "
                             f"inconsistent with spatial_shapes: the levels before it hold {total} "
                             f"tokens")
        total += h * w
    if total != Lv:
        raise ValueError(f"ms_deform_attn: spatial_shapes describe sum(H * W) = {total} tokens but "
                         f"value has Lv = {Lv} (value.shape[1])")
    if spatial_shapes.is_inference() or level_start_index.is_inference():
        return  # inference tensors have no version counter to key the cache on
    _CHECKED_LAYOUTS.append((weakref.ref(spatial_shapes), spatial_shapes._version,
                             weakref.ref(level_start_index), level_start_index._version, Lv))


# Level layouts already validated, so that a model passing the same index tensors to all its
# layers synchronizes with the GPU once per forward, not once per layer. Weak references: a
# live tensor's identity cannot be reused, and an in-place change bumps its _version.
_CHECKED_LAYOUTS: deque = deque(maxlen=8)


def _layout_checked_before(spatial_shapes, level_start_index, Lv) -> bool:
    if spatial_shapes.is_inference() or level_start_index.is_inference():
        return False
    return any(ss() is spatial_shapes and ss_v == spatial_shapes._version
               and lsi() is level_start_index and lsi_v == level_start_index._version and lv == Lv
               for ss, ss_v, lsi, lsi_v, lv in _CHECKED_LAYOUTS)


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention sampling (Deformable DETR, Eq. 3).

    Args:
        value: (B, Lv, M, D) float16/bfloat16/float32/float64, Lv = sum_l H_l * W_l.
        spatial_shapes: (L, 2) int64 (or int32), rows (H_l, W_l).
        level_start_index: (L,) int64 (or int32), offset of each level inside Lv (exclusive
            cumsum).
        sampling_locations: (B, Lq, M, L, P, 2), x first, in [0, 1] of each level's map,
            pixel centres at (i + 0.5) / W; points outside the map (and NaN) read zeros.
        attention_weights: (B, Lq, M, L, P).

    All tensors on one device; any strides. Locations and weights share value's dtype, or
    are float32 with a float16/bfloat16 value (as under autocast); float16/bfloat16
    accumulate in float32 either way.

    Returns:
        (B, Lq, M * D) in value's dtype, differentiable w.r.t. value, sampling_locations,
        attention_weights.
    """
    _check_arguments(value, spatial_shapes, level_start_index, sampling_locations,
                     attention_weights)
    args = _kernel_arguments(value, spatial_shapes, level_start_index, sampling_locations,
                             attention_weights)
    if implementation(value.device) == "reference":
        out = ms_deform_attn_reference(*args)
    else:
        out = torch.ops.ddetr_ops.ms_deform_attn_forward(*args)
    return out.to(value.dtype)  # autograd casts the gradients back to each input's dtype


def _kernel_arguments(value, spatial_shapes, level_start_index, sampling_locations,
                      attention_weights) -> tuple[torch.Tensor, ...]:
    """The five arguments as the kernels take them: int64 indices, one floating dtype.
    Each cast is a no-op (returns the same tensor) for an argument that already fits."""
    dtype = _compute_dtype(value, sampling_locations, attention_weights)
    return (value.to(dtype), spatial_shapes.long(), level_start_index.long(),
            sampling_locations.to(dtype), attention_weights.to(dtype))


class MsDeformAttnGradients(NamedTuple):
    """Gradients of a scalar loss w.r.t. the op's differentiable inputs, each in its input's
    dtype: value (B, Lv, M, D), sampling_locations (B, Lq, M, L, P, 2), attention_weights
    (B, Lq, M, L, P)."""

    value: torch.Tensor
    sampling_locations: torch.Tensor
    attention_weights: torch.Tensor


def ms_deform_attn_backward(
    grad_output: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> MsDeformAttnGradients:
    """The vector-Jacobian product of ``ms_deform_attn`` for callers that write their own
    ``autograd.Function`` (the official extension's interface): ``grad_output`` is
    (B, Lq, M * D), the other arguments as for ``ms_deform_attn``. Runs the backward kernel
    directly (no forward recomputation); on the reference it differentiates the reference."""
    _check_arguments(value, spatial_shapes, level_start_index, sampling_locations,
                     attention_weights)
    B, _, M, D = value.shape
    Lq = sampling_locations.shape[1]
    if not isinstance(grad_output, torch.Tensor):
        raise TypeError(f"ms_deform_attn_backward: grad_output must be a torch.Tensor, got "
                        f"{type(grad_output)}")
    if grad_output.shape != (B, Lq, M * D):
        got = tuple(grad_output.shape)
        raise ValueError(f"ms_deform_attn_backward: grad_output must have shape (B, Lq, M * D) = "
                         f"({B}, {Lq}, {M * D}), got {got}")
    if not grad_output.is_floating_point() or grad_output.device != value.device:
        raise ValueError(f"ms_deform_attn_backward: grad_output must be a floating-point tensor on "
                         f"{value.device}, got {grad_output.dtype} on {grad_output.device}")
    args = _kernel_arguments(value, spatial_shapes, level_start_index, sampling_locations,
                             attention_weights)
    grad = grad_output.to(args[0].dtype)
    if implementation(value.device) == "reference":
        with torch.enable_grad():
            leaves = [args[i].detach().requires_grad_() for i in (0, 3, 4)]
            out = ms_deform_attn_reference(leaves[0], args[1], args[2], leaves[1], leaves[2])
            grads = torch.autograd.grad(out, leaves, grad)
    else:
        grads = torch.ops.ddetr_ops.ms_deform_attn_backward(grad, *args)
    return MsDeformAttnGradients(grads[0].to(value.dtype), grads[1].to(sampling_locations.dtype),
                                 grads[2].to(attention_weights.dtype))


if KERNELS["cpu"].ok:

    @torch.library.register_fake("ddetr_ops::ms_deform_attn_forward")
    def _forward_fake(value, spatial_shapes, level_start_index, sampling_locations,
                      attention_weights):
        B, _, M, D = value.shape
        return value.new_empty((B, sampling_locations.shape[1], M * D))  # (B, Lq, M*D)

    @torch.library.register_fake("ddetr_ops::ms_deform_attn_backward")
    def _backward_fake(grad_output, value, spatial_shapes, level_start_index,
                       sampling_locations, attention_weights):
        return (value.new_empty(value.shape), value.new_empty(sampling_locations.shape),
                value.new_empty(attention_weights.shape))

    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, loc, attn = ctx.saved_tensors
        grad_value, grad_loc, grad_attn = torch.ops.ddetr_ops.ms_deform_attn_backward(
            grad_output.to(value.dtype), value, spatial_shapes, level_start_index, loc, attn)
        need = ctx.needs_input_grad
        return (grad_value if need[0] else None, None, None, grad_loc if need[3] else None,
                grad_attn if need[4] else None)

    torch.library.register_autograd("ddetr_ops::ms_deform_attn_forward", _backward,
                                    setup_context=_setup_context)
