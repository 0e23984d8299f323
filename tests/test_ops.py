"""ms_deform_attn: the kernels against the grid_sample reference, autograd, registration, errors.

Every test that takes `device` runs on the CPU and, when a GPU is present, on CUDA; the CUDA
cases are skipped otherwise. Building the kernels is tested in test_ops_cuda_build.py.
"""
from __future__ import annotations

import os

import pytest
import torch

import ops
from ops import ms_deform_attn, ms_deform_attn_reference

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda,
                                               pytest.mark.skipif(not HAS_CUDA, reason="no GPU")])]
FWD = torch.ops.ddetr_ops.ms_deform_attn_forward if ops.KERNELS["cpu"].ok else None
BWD = torch.ops.ddetr_ops.ms_deform_attn_backward if ops.KERNELS["cpu"].ok else None


@pytest.fixture(autouse=True)
def _kernel_for(request):
    """Kernel tests are meaningless on the reference: skip them (test_kernels_built fails)."""
    device = request.node.callspec.params.get("device", "cpu") if hasattr(
        request.node, "callspec") else "cpu"
    if "kernels_built" not in request.node.name and ops.implementation(device) == "reference":
        pytest.skip(f"no {device} kernel: {ops.KERNELS[device].detail}")


def test_kernels_built():
    assert ops.KERNELS["cpu"].ok, ops.KERNELS["cpu"].detail
    assert ops.implementation("cpu") == "cpu-kernel"
    if HAS_CUDA:
        assert ops.KERNELS["cuda"].ok, ops.KERNELS["cuda"].detail
        assert ops.implementation("cuda") == "cuda-kernel"


def level_tensors(shapes, device="cpu"):
    """(L, 2) spatial_shapes and (L,) level_start_index for a list of (H, W)."""
    s = torch.tensor(shapes, dtype=torch.long, device=device).view(-1, 2)
    areas = s[:, 0] * s[:, 1]
    return s, torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])


def random_case(seed, device="cpu", dtype=torch.float64, B=None, Lq=None, D=None):
    """Random sizes (odd H/W, L 1..5, P 1..8) and locations inside, on the borders of, and
    outside the maps. Returns (args, smooth) where smooth (B, Lq, M, L, P) marks points away
    from grid lines, the only ones where the location gradient is defined."""
    g = torch.Generator().manual_seed(seed)

    def ri(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    L, P, M = ri(1, 5), ri(1, 8), ri(1, 4)
    B, Lq, D = B or ri(1, 3), Lq or ri(1, 12), D or ri(1, 40)
    shapes = [(ri(1, 13), ri(1, 13)) for _ in range(L)]
    spatial_shapes, starts = level_tensors(shapes)
    Lv = sum(h * w for h, w in shapes)
    value = torch.randn(B, Lv, M, D, generator=g, dtype=torch.float64)
    loc = torch.rand(B, Lq, M, L, P, 2, generator=g, dtype=torch.float64) * 1.5 - 0.25
    wh = spatial_shapes.flip(-1).to(torch.float64)[:, None]  # (L, 1, 2) as (W, H)
    kind = torch.randint(0, 5, (B, Lq, M, L, P, 2), generator=g)
    idx = torch.floor(torch.rand(B, Lq, M, L, P, 2, generator=g, dtype=torch.float64) * wh)
    special = {1: (idx + 0.5) / wh, 2: idx / wh,  # pixel centres (grid points), pixel edges
               3: torch.randint(0, 2, kind.shape, generator=g).double()}  # the borders 0 and 1
    for k, v in special.items():
        loc = torch.where(kind == k, v, loc)
    smooth = ~((kind == 1) | (kind == 3)).any(-1)  # centres and borders 0/1 sit on grid lines
    attn = torch.rand(B, Lq, M, L, P, generator=g, dtype=torch.float64)
    args = [value, spatial_shapes, starts, loc, attn]
    return [t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in args], \
        smooth.to(device)


def run_with_grads(fn, args, grad_out):
    """fn(*args) and the gradients for value, sampling_locations, attention_weights."""
    leaves = [args[i].detach().clone().requires_grad_() for i in (0, 3, 4)]
    out = fn(leaves[0], args[1], args[2], leaves[1], leaves[2])
    out.backward(grad_out)
    return out.detach(), [t.grad for t in leaves]


def assert_close(actual, expected, rel):
    """|actual - expected| <= rel * max|expected| (the issue's 'relative' tolerance)."""
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=0,
                               atol=rel * max(scale, 1e-12))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", range(12))
def test_kernel_matches_reference(device, dtype, seed):
    args, smooth = random_case(seed, device, dtype)
    ref_args = [t.double() if t.is_floating_point() else t for t in args]  # the oracle in float64
    grad_out = torch.randn(args[0].shape[0], args[3].shape[1], args[0].shape[2] * args[0].shape[3],
                           dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    out, grads = run_with_grads(ms_deform_attn, args, grad_out.to(device, dtype))
    ref, ref_grads = run_with_grads(ms_deform_attn_reference, ref_args, grad_out.to(device))
    rel = 1e-10 if dtype == torch.float64 else 1e-5
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close(out, ref, rel)
    assert_close(grads[0], ref_grads[0], rel)  # value
    assert_close(grads[2], ref_grads[2], rel)  # attention weights
    mask = smooth[..., None].expand_as(grads[1])  # locations: only where differentiable
    assert_close(grads[1][mask], ref_grads[1][mask], rel)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("D", [1, 3, 64, 200])
def test_channel_counts(device, D):
    """D below, at and above the SIMD width / warp size, and in several CUDA chunks."""
    args, smooth = random_case(100 + D, device, torch.float64, D=D)
    grad_out = torch.randn(args[0].shape[0], args[3].shape[1], args[0].shape[2] * D,
                           dtype=torch.float64, device=device)
    out, grads = run_with_grads(ms_deform_attn, args, grad_out)
    ref, ref_grads = run_with_grads(ms_deform_attn_reference, args, grad_out)
    assert_close(out, ref, 1e-10)
    for i in (0, 2):
        assert_close(grads[i], ref_grads[i], 1e-10)
    mask = smooth[..., None].expand_as(grads[1])
    assert_close(grads[1][mask], ref_grads[1][mask], 1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_outside_nan_and_inf_points_contribute_zero(device):
    args, _ = random_case(7, device, B=1, Lq=6)
    value, shapes, starts, loc, attn = args
    bad = torch.tensor([-0.6, 1.6, float("nan"), float("inf"), -float("inf"), -50.0],
                       dtype=loc.dtype, device=device)
    loc = loc.clone()
    loc[0, :, :, :, :, 0] = bad.view(6, 1, 1, 1)  # one kind of bad x per query
    grad_out = torch.ones(1, 6, value.shape[2] * value.shape[3], dtype=loc.dtype, device=device)
    out, (g_value, g_loc, g_attn) = run_with_grads(ms_deform_attn, [value, shapes, starts, loc,
                                                                    attn], grad_out)
    assert torch.equal(out, torch.zeros_like(out))
    for g in (g_value, g_loc, g_attn):
        assert torch.equal(g, torch.zeros_like(g))
    # The reference agrees (it maps non-finite points outside explicitly).
    assert torch.equal(ms_deform_attn_reference(value, shapes, starts, loc, attn), out)


@pytest.mark.parametrize("device", DEVICES)
def test_offmap_corners_never_read(device):
    """A corner off the map reads 0, as in grid_sample, whatever value holds elsewhere: a
    kernel that clamped or wrapped its index would pick up level 0's NaNs here."""
    shapes, starts = level_tensors([(2, 3), (2, 2)], device)
    value = torch.randn(1, 10, 1, 2, dtype=torch.float64, device=device)
    value[0, :6] = float("nan")  # all of level 0
    # Level 0 is sampled far outside (contributes 0); level 1 near its top-left pixel, whose
    # other three corners are off the map (their flat indices would be 3, 5, 6 - 1 ...).
    loc = torch.tensor([[-5.0, -5.0], [0.1, 0.2]], dtype=torch.float64, device=device)
    loc = loc.view(1, 1, 1, 2, 1, 2)
    attn = torch.ones(1, 1, 1, 2, 1, dtype=torch.float64, device=device)
    out = ms_deform_attn(value, shapes, starts, loc, attn)
    ref = ms_deform_attn_reference(value, shapes, starts, loc, attn)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    args, _ = random_case(3, device, B=2, Lq=3, D=5)
    value, shapes, starts, loc, attn = args
    # Random interior points: bilinear interpolation is not differentiable on grid lines.
    loc = torch.rand(loc.shape, dtype=torch.float64, device=device) * 1.2 - 0.1
    inputs = (value.requires_grad_(), shapes, starts, loc.requires_grad_(), attn.requires_grad_())
    assert torch.autograd.gradcheck(ms_deform_attn, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    args, _ = random_case(5, device, B=2, Lq=4, D=6)
    value, shapes, starts, loc, attn = args
    torch.library.opcheck(FWD, (value.requires_grad_(), shapes, starts, loc.requires_grad_(),
                                attn.requires_grad_()))
    grad_out = torch.randn(2, 4, value.shape[2] * 6, dtype=torch.float64, device=device)
    torch.library.opcheck(BWD, (grad_out, value.detach(), shapes, starts, loc.detach(),
                                attn.detach()))


@pytest.mark.parametrize("device", DEVICES)
def test_batched_equals_one_by_one(device):
    args, _ = random_case(11, device, torch.float32, B=3, Lq=9)
    value, shapes, starts, loc, attn = args
    batched = ms_deform_attn(*args)
    single = torch.cat([ms_deform_attn(value[b:b + 1], shapes, starts, loc[b:b + 1],
                                       attn[b:b + 1]) for b in range(3)])
    torch.testing.assert_close(batched, single, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    args, _ = random_case(13, device, B=2, Lq=5)
    value, shapes, starts, loc, attn = args
    nc = [value.transpose(0, 1).contiguous().transpose(0, 1),  # same values, other strides
          shapes.t().contiguous().t(), torch.stack([starts, starts], 1)[:, 0],
          loc.permute(5, 0, 1, 2, 3, 4).contiguous().permute(1, 2, 3, 4, 5, 0),
          attn.transpose(1, 2).contiguous().transpose(1, 2)]
    assert not nc[0].is_contiguous() and not nc[3].is_contiguous()
    grad_out = torch.randn(2, 5, value.shape[2] * value.shape[3], dtype=torch.float64,
                           device=device)
    out, grads = run_with_grads(ms_deform_attn, nc,
                                grad_out.transpose(0, 1).contiguous().transpose(0, 1))
    ref, ref_grads = run_with_grads(ms_deform_attn, args, grad_out)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,Lq", [(0, 4), (2, 0)])
def test_empty_batch_or_queries(device, B, Lq):
    args, _ = random_case(17, device, B=max(B, 1), Lq=max(Lq, 1))
    value, shapes, starts, loc, attn = args
    value, loc, attn = value[:B], loc[:B, :Lq], attn[:B, :Lq]
    grad_out = torch.zeros(B, Lq, value.shape[2] * value.shape[3], dtype=torch.float64,
                           device=device)
    out, grads = run_with_grads(ms_deform_attn, [value, shapes, starts, loc, attn], grad_out)
    assert out.shape == (B, Lq, value.shape[2] * value.shape[3])
    assert [g.shape for g in grads] == [value.shape, loc.shape, attn.shape]
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(device, dtype):
    args, smooth = random_case(19, device, dtype, B=2, Lq=7, D=16)
    ref_args = [t.float() if t.is_floating_point() else t for t in args]  # same rounded inputs
    grad_out = torch.randn(2, 7, args[0].shape[2] * 16, device=device).to(dtype)
    out, grads = run_with_grads(ms_deform_attn, args, grad_out)
    ref, ref_grads = run_with_grads(ms_deform_attn_reference, ref_args, grad_out.float())
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    rel = 1e-2 if dtype == torch.float16 else 2e-2  # one rounding of the float32 result
    assert_close(out.float(), ref, rel)
    assert_close(grads[0].float(), ref_grads[0], rel)
    assert_close(grads[2].float(), ref_grads[2], rel)


def test_torch_compile_fullgraph_cpu():
    args, _ = random_case(23, "cpu", torch.float32, B=2, Lq=6)
    torch._dynamo.reset()
    compiled = torch.compile(ms_deform_attn, fullgraph=True)
    grad_out = torch.randn(2, 6, args[0].shape[2] * args[0].shape[3])
    out, grads = run_with_grads(compiled, args, grad_out)
    ref, ref_grads = run_with_grads(ms_deform_attn, args, grad_out)
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


# ---------------------------------------------------------------- the CPU kernel's two code paths
# float32 with D in {16, 32, 64} runs AVX-512 kernels on CPUs that have it; the portable
# kernels run everything else, and everything when DDETR_OPS_CPU_PATH=portable.
@pytest.fixture(params=["avx512", "portable"])
def cpu_path(request, monkeypatch):
    monkeypatch.setenv("DDETR_OPS_CPU_PATH", request.param)
    if request.param == "avx512" and not torch.cpu._is_avx512_supported():
        pytest.skip("this CPU has no AVX-512")
    assert torch.ops.ddetr_ops.cpu_path() == request.param
    return request.param


@pytest.mark.parametrize("D", [16, 32, 64])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_paths_match_reference(cpu_path, D, seed, threads):
    """Both paths, float32, the channel counts the AVX-512 kernels take; two threads split the
    backward by heads or, with one head, by levels."""
    args, smooth = random_case(200 + seed, "cpu", torch.float32, D=D)
    if seed == 3:  # one head: the backward's tasks split the levels
        args[0], args[3], args[4] = args[0][:, :, :1], args[3][:, :, :1], args[4][:, :, :1]
        smooth = smooth[:, :, :1]
    ref_args = [t.double() if t.is_floating_point() else t for t in args]
    grad_out = torch.randn(args[0].shape[0], args[3].shape[1], args[0].shape[2] * D, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(seed))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, grads = run_with_grads(ms_deform_attn, args, grad_out.float())
    finally:
        torch.set_num_threads(before)
    ref, ref_grads = run_with_grads(ms_deform_attn_reference, ref_args, grad_out)
    assert_close(out, ref, 1e-5)
    assert_close(grads[0], ref_grads[0], 1e-5)
    assert_close(grads[2], ref_grads[2], 1e-5)
    mask = smooth[..., None].expand_as(grads[1])
    assert_close(grads[1][mask], ref_grads[1][mask], 1e-5)


def test_cpu_paths_never_read_offmap_corners(cpu_path):
    """float32 versions of the NaN / outside-point tests, on both paths."""
    shapes, starts = level_tensors([(2, 3), (2, 2)])
    value = torch.randn(1, 10, 1, 16)
    value[0, :6] = float("nan")  # all of level 0
    loc = torch.tensor([[-5.0, -5.0], [0.1, 0.2]]).view(1, 1, 1, 2, 1, 2)
    attn = torch.ones(1, 1, 1, 2, 1)
    out = ms_deform_attn(value, shapes, starts, loc, attn)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ms_deform_attn_reference(value, shapes, starts, loc, attn), rtol=0, atol=1e-6)
    args, _ = random_case(7, "cpu", torch.float32, B=1, Lq=6, D=32)
    value, shapes, starts, loc, attn = args
    loc = loc.clone()
    loc[0, :, :, :, :, 0] = torch.tensor([-0.6, 1.6, float("nan"), float("inf"), -float("inf"), -50.0]).view(6, 1, 1, 1)
    out, grads = run_with_grads(ms_deform_attn, [value, shapes, starts, loc, attn], torch.ones(1, 6, value.shape[2] * 32))
    assert torch.equal(out, torch.zeros_like(out))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_cpu_paths_agree_at_the_encoder_shape():
    """The two paths on an encoder-sized problem (levels of an 800x1333 image at 1/4 scale)."""
    if not torch.cpu._is_avx512_supported():
        pytest.skip("this CPU has no AVX-512")
    shapes, starts = level_tensors([(25, 42), (13, 21), (7, 11), (4, 6)])
    g = torch.Generator().manual_seed(0)
    Lv = int((shapes[:, 0] * shapes[:, 1]).sum())
    value = torch.randn(2, Lv, 8, 32, generator=g)
    loc = torch.rand(2, Lv, 8, 4, 4, 2, generator=g) * 1.1 - 0.05
    attn = torch.rand(2, Lv, 8, 4, 4, generator=g)
    grad_out = torch.randn(2, Lv, 256, generator=g)
    results = {}
    for path in ("portable", "avx512"):
        os.environ["DDETR_OPS_CPU_PATH"] = path
        try:
            results[path] = run_with_grads(ms_deform_attn, [value, shapes, starts, loc, attn], grad_out)
        finally:
            del os.environ["DDETR_OPS_CPU_PATH"]
    (out_p, grads_p), (out_a, grads_a) = results["portable"], results["avx512"]
    assert_close(out_a, out_p, 1e-5)
    for a, p in zip(grads_a, grads_p):
        assert_close(a, p, 1e-5)


def valid_case():
    """B = 2, Lq = 3, M = 2, D = 3, two levels (3, 5) and (2, 2), P = 2."""
    shapes, starts = level_tensors([(3, 5), (2, 2)])
    return [torch.randn(2, 19, 2, 3, dtype=torch.float64), shapes, starts,
            torch.rand(2, 3, 2, 2, 2, 2, dtype=torch.float64),
            torch.rand(2, 3, 2, 2, 2, dtype=torch.float64)]


def _bad_inputs():
    """(name, mutate(args) -> args, message fragment) for the argument checks."""
    return [
        ("value 3-d", lambda a: [a[0][0]] + a[1:], "value must have shape"),
        ("Lv mismatch", lambda a: [a[0][:, :-1]] + a[1:], r"sum\(H \* W\)"),
        ("start index", lambda a: a[:2] + [a[2] + 1] + a[3:], "level_start_index\\[0\\]"),
        ("start index shape", lambda a: a[:2] + [a[2][:-1]] + a[3:], "level_start_index must"),
        ("shapes int16", lambda a: [a[0], a[1].short()] + a[2:], "int64"),
        ("shapes columns", lambda a: [a[0], a[1][:, :1]] + a[2:], "spatial_shapes must"),
        ("loc heads", lambda a: a[:3] + [a[3][:, :, :1]] + a[4:], "sampling_locations must"),
        ("loc xy", lambda a: a[:3] + [a[3][..., :1]] + a[4:], "sampling_locations must"),
        ("attn points", lambda a: a[:4] + [a[4][..., :1]], "attention_weights must"),
        ("attn dtype", lambda a: a[:4] + [a[4].float()], "attention_weights has dtype"),
        ("int value", lambda a: [a[0].long()] + a[1:], "floating-point"),
        ("device", lambda a: a[:4] + [a[4].to("meta")], "device|on meta"),
        ("negative H", lambda a: [a[0], a[1] * torch.tensor([[-1, 1]] + [[1, 1]] *
                                                            (a[1].shape[0] - 1))] + a[2:],
         "positive"),
    ]


@pytest.mark.parametrize("name,mutate,match", _bad_inputs(), ids=[b[0] for b in _bad_inputs()])
def test_bad_input_raises_value_error(name, mutate, match):
    args = valid_case()
    ms_deform_attn(*args)  # the unmutated case is valid
    with pytest.raises(ValueError, match=match):
        ms_deform_attn(*mutate(args))


def test_in_place_change_of_index_tensors_is_rechecked():
    """Validated layouts are remembered per tensor; an in-place edit must invalidate that."""
    args = valid_case()
    ms_deform_attn(*args)
    args[2][1] += 1
    with pytest.raises(ValueError, match="level_start_index\\[1\\]"):
        ms_deform_attn(*args)


@pytest.mark.parametrize("name,mutate,match", _bad_inputs()[:11] + _bad_inputs()[12:],
                         ids=[b[0] for b in _bad_inputs()[:11] + _bad_inputs()[12:]])
def test_bad_input_to_raw_op_raises_runtime_error(name, mutate, match):
    """Calling torch.ops directly bypasses the Python checks: C++ still refuses, no crash."""
    args = valid_case()
    with pytest.raises(RuntimeError):
        FWD(*mutate(args))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no GPU")
def test_cuda_mixed_devices_and_streams():
    args, _ = random_case(31, "cuda", torch.float32, B=2, Lq=8)
    with pytest.raises(ValueError, match="device"):
        ms_deform_attn(args[0], args[1].cpu(), *args[2:])
    expected = ms_deform_attn(*args)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # the kernel must launch on the current stream
        out = ms_deform_attn(*args)
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------- compatibility
# What other callers pass: int32 index tensors (mmcv's NPU path, exporters) and a half-precision
# value with float32 locations and weights (code ported from mmcv, run under autocast).


@pytest.mark.parametrize("device", DEVICES)
def test_int32_index_tensors_match_the_reference(device):
    args, _ = random_case(31, device, torch.float64, B=2, Lq=5)
    args32 = args[:1] + [args[1].int(), args[2].int()] + args[3:]
    grad_out = torch.randn(2, 5, args[0].shape[2] * args[0].shape[3], device=device,
                           dtype=torch.float64)
    out, grads = run_with_grads(ms_deform_attn, args32, grad_out)
    ref, ref_grads = run_with_grads(ms_deform_attn_reference, args, grad_out)
    assert_close(out, ref, 1e-12)
    assert_close(grads[0], ref_grads[0], 1e-12)
    assert_close(grads[2], ref_grads[2], 1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_value_with_float32_locations_and_weights(device, dtype):
    """Computed in float32 from the float32 locations (not rounded to half), value's dtype out;
    each gradient in its input's dtype."""
    args, smooth = random_case(37, device, torch.float32, B=2, Lq=9, D=16)
    mixed = [args[0].to(dtype)] + args[1:]
    ref_args = [args[0].to(dtype).float()] + args[1:]  # the same rounded value, float32 rest
    grad_out = torch.randn(2, 9, args[0].shape[2] * 16, device=device).to(dtype)
    out, grads = run_with_grads(ms_deform_attn, mixed, grad_out)
    ref, ref_grads = run_with_grads(ms_deform_attn_reference, ref_args, grad_out.float())
    assert out.dtype == dtype and [g.dtype for g in grads] == [dtype, torch.float32, torch.float32]
    rel = 1e-2 if dtype == torch.float16 else 2e-2  # one rounding of the float32 result
    assert_close(out.float(), ref, rel)
    assert_close(grads[0].float(), ref_grads[0], rel)
    assert_close(grads[2], ref_grads[2], 1e-5)  # float32 all the way: no half rounding
    s = smooth[..., None].expand_as(grads[1])
    assert_close(grads[1][s], ref_grads[1][s], 1e-4)


def test_other_dtype_mixes_are_still_refused():
    """Only half + float32 is a known caller's convention; float32 + half would lose precision."""
    args = [t.float() if t.is_floating_point() else t for t in valid_case()]
    with pytest.raises(ValueError, match="sampling_locations has dtype torch.float16"):
        ms_deform_attn(args[0], args[1], args[2], args[3].half(), args[4])
    with pytest.raises(ValueError, match="attention_weights has dtype torch.bfloat16"):
        ms_deform_attn(args[0].half(), args[1], args[2], args[3], args[4].bfloat16())


@pytest.mark.parametrize("device", DEVICES)
def test_backward_function_equals_autograd(device):
    """ops.ms_deform_attn_backward (for hand-written autograd.Functions) == autograd's."""
    args, smooth = random_case(41, device, torch.float64, B=3, Lq=4)
    grad_out = torch.randn(3, 4, args[0].shape[2] * args[0].shape[3], device=device,
                           dtype=torch.float64)
    _, ref_grads = run_with_grads(ms_deform_attn_reference, args, grad_out)
    grads = ops.ms_deform_attn_backward(grad_out, *args)
    assert_close(grads.value, ref_grads[0], 1e-12)
    assert_close(grads.attention_weights, ref_grads[2], 1e-12)
    s = smooth[..., None].expand_as(grads.sampling_locations)
    assert_close(grads.sampling_locations[s], ref_grads[1][s], 1e-9)
    with pytest.raises(ValueError, match="grad_output must have shape"):
        ops.ms_deform_attn_backward(grad_out[:, :-1], *args)
