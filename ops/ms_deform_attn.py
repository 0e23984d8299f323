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
        if args[name].dtype != torch.int64:
            raise ValueError(f"ms_deform_attn: {name} must be int64 (torch.long), got "
                             f"{args[name].dtype}; use .long()")
    if not value.is_floating_point():
        raise ValueError(f"ms_deform_attn: value must be a floating-point tensor, got {value.dtype}")
    for name in ("sampling_locations", "attention_weights"):
        if args[name].dtype != value.dtype:
            raise ValueError(f"ms_deform_attn: {name} has dtype {args[name].dtype} but value has "
                             f"{value.dtype}; cast with .to(value.dtype)")
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
        spatial_shapes: (L, 2) int64, rows (H_l, W_l).
        level_start_index: (L,) int64, offset of each level inside Lv (exclusive cumsum).
        sampling_locations: (B, Lq, M, L, P, 2), x first, in [0, 1] of each level's map,
            pixel centres at (i + 0.5) / W; points outside the map (and NaN) read zeros.
        attention_weights: (B, Lq, M, L, P).

    All tensors on one device; any strides. float16/bfloat16 accumulate in float32.

    Returns:
        (B, Lq, M * D), differentiable w.r.t. value, sampling_locations, attention_weights.
    """
    _check_arguments(value, spatial_shapes, level_start_index, sampling_locations,
                     attention_weights)
    if implementation(value.device) == "reference":
        return ms_deform_attn_reference(value, spatial_shapes, level_start_index,
                                        sampling_locations, attention_weights)
    return torch.ops.ddetr_ops.ms_deform_attn_forward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


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
