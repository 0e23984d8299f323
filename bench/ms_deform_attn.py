"""Benchmark of ms_deform_attn: our kernels against the grid_sample reference, side by side.

Shapes are Deformable DETR's for an 800x1333 image: levels (100,167), (50,84), (25,42), (13,21)
(Lv = 22,223), M = 8 heads, D = 32 channels, L = 4 levels, P = 4 points; the encoder has one
query per token (Lq = 22,223), the decoder Lq = 300; B = 1 and 2. Two sampling patterns:

* encoder-like: each query's reference point is the centre of its own pixel (on its own level,
  normalized, hence the same relative position on every level), plus offsets of a few pixels
  of each level (normal, sigma 2 level pixels), as the trained encoder samples;
* uniform: locations uniform over each whole map, the worst case for caches.

Prints forward and forward+backward times (median) and the ratio reference / kernel. On a
CPU with AVX-512 the kernel is timed on both of its code paths (``avx512`` and ``portable``,
forced with DDETR_OPS_CPU_PATH), side by side with the same reference run. On a
GPU it also prints the memory-bound time (bytes the op must move / copy bandwidth measured
here) and how far the kernel is from it. Usage:

    python bench/ms_deform_attn.py                 # CPU, plus CUDA if a GPU is visible
    python bench/ms_deform_attn.py --device cuda --quick
    python bench/ms_deform_attn.py --device cpu --queries encoder --batch 2 --pattern uniform
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ops  # noqa: E402

LEVELS = [(100, 167), (50, 84), (25, 42), (13, 21)]
M, D, P = 8, 32, 4


def make_inputs(B: int, Lq: int, pattern: str, device: str, dtype=torch.float32, seed=0):
    """Returns (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)."""
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(LEVELS, dtype=torch.long)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    Lv, L = int(areas.sum()), len(LEVELS)
    value = torch.randn(B, Lv, M, D, generator=g)
    if pattern == "encoder":
        centres = []
        for h, w in LEVELS:
            ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w,
                                    indexing="ij")
            centres.append(torch.stack([xs, ys], -1).reshape(-1, 2))
        centres = torch.cat(centres)  # (Lv, 2)
        ref = centres[torch.arange(Lq) % Lv] if Lq == Lv else \
            centres[torch.randint(Lv, (Lq,), generator=g)]  # decoder: random tokens' centres
        wh = shapes.flip(-1).to(torch.float32)  # (L, 2) as (W, H)
        offsets = 2.0 * torch.randn(B, Lq, M, L, P, 2, generator=g) / wh[:, None, :]
        loc = ref[None, :, None, None, None, :] + offsets  # (B, Lq, M, L, P, 2)
    elif pattern == "uniform":
        loc = torch.rand(B, Lq, M, L, P, 2, generator=g)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    attn = torch.randn(B, Lq, M, L * P, generator=g).softmax(-1).view(B, Lq, M, L, P)
    return tuple(t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
                 for t in (value, shapes, starts, loc, attn))


def timeit(fn, device: str, min_time: float, min_reps: int = 3) -> float:
    """Median seconds of fn() after one warm-up, repeated until min_time has passed."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    while len(times) < min_reps or sum(times) < min_time:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def forward_backward(fn, inputs):
    value, shapes, starts, loc, attn = inputs
    leaves = [t.detach().requires_grad_() for t in (value, loc, attn)]
    grad = torch.ones(value.shape[0], loc.shape[1], M * D, device=value.device, dtype=value.dtype)

    def run():
        out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
        out.backward(grad)

    return run


def op_bytes(inputs) -> tuple[int, int]:
    """Bytes the forward and the forward+backward must move at the least."""
    value, _, _, loc, attn = inputs
    size = lambda t: t.numel() * t.element_size()  # noqa: E731
    out = size(value) // value.shape[1] * loc.shape[1]  # (B, Lq, M*D)
    fwd = size(value) + size(loc) + size(attn) + out
    # backward reads grad_out, value, loc, attn; writes grad_value, grad_loc, grad_attn
    bwd = out + 2 * size(value) + 2 * size(loc) + 2 * size(attn)
    return fwd, fwd + bwd


def copy_bandwidth(device: str) -> float:
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    t = timeit(lambda: y.copy_(x), device, 0.2)
    return 2 * x.numel() / t


def run(device: str, quick: bool, min_time: float, queries=("encoder", "decoder"),
        batches=(1, 2), patterns=("encoder", "uniform")) -> list[dict]:
    print(f"\n== {device}: kernel = {ops.implementation(device)}, "
          f"threads = {torch.get_num_threads()}"
          + (f", {torch.cuda.get_device_name()}" if device == "cuda" else ""))
    if ops.implementation(device) == "reference":
        print("no kernel for this device; nothing to compare")
        return []
    bw = copy_bandwidth(device) if device == "cuda" else None
    if bw:
        print(f"copy bandwidth {bw / 1e9:.0f} GB/s (memory-bound estimate = bytes / this)")
    paths = [None]
    if device == "cpu" and torch.ops.ddetr_ops.cpu_path() == "avx512":
        paths = ["avx512", "portable"]
    header = f"{'case':<39}{'ref fwd':>10}{'ours fwd':>10}{'ratio':>8}" \
             f"{'ref f+b':>10}{'ours f+b':>10}{'ratio':>8}"
    if bw:
        header += f"{'kernel fwd':>12}{'bound fwd':>11}{'x bound':>8}{'bound f+b':>11}{'x bound':>8}"
    print(header)
    rows = []
    for Lq_name, Lq in (("encoder", sum(h * w for h, w in LEVELS)), ("decoder", 300)):
        if Lq_name not in queries:
            continue
        for B in [b for b in ((1,) if quick else (1, 2)) if b in batches]:
            for pattern in [p for p in ("encoder", "uniform") if p in patterns]:
                inputs = make_inputs(B, Lq, pattern, device)
                ref_f = timeit(lambda: ops.ms_deform_attn_reference(*inputs), device, min_time)
                ref_b = timeit(forward_backward(ops.ms_deform_attn_reference, inputs), device,
                               min_time)
                for path in paths:
                    if path:
                        os.environ["DDETR_OPS_CPU_PATH"] = path
                    our_f = timeit(lambda: ops.ms_deform_attn(*inputs), device, min_time)
                    our_b = timeit(forward_backward(ops.ms_deform_attn, inputs), device, min_time)
                    name = f"{Lq_name} Lq={Lq} B={B} {pattern}" + (f" [{path}]" if path else "")
                    line = f"{name:<39}{ref_f * 1e3:>8.2f}ms{our_f * 1e3:>8.2f}ms{ref_f / our_f:>7.1f}x" \
                           f"{ref_b * 1e3:>8.2f}ms{our_b * 1e3:>8.2f}ms{ref_b / our_b:>7.1f}x"
                    if bw:  # the bare kernel (no argument checks) against the memory bound
                        raw = torch.ops.ddetr_ops.ms_deform_attn_forward
                        ker_f = timeit(lambda: raw(*inputs), device, min_time)
                        fb, fbb = (n / bw for n in op_bytes(inputs))
                        line += f"{ker_f * 1e6:>10.1f}us{fb * 1e6:>9.1f}us{ker_f / fb:>7.1f}x" \
                                f"{fbb * 1e6:>9.1f}us{our_b / fbb:>7.1f}x"
                    print(line, flush=True)
                    rows.append(dict(device=device, Lq=Lq, B=B, pattern=pattern, path=path,
                                     fwd_ratio=ref_f / our_f, fb_ratio=ref_b / our_b))
                os.environ.pop("DDETR_OPS_CPU_PATH", None)
    return rows


def report_goals(rows: list[dict]) -> None:
    """The issue's CPU goals at the encoder shape: forward >= 30x encoder-like and >= 20x
    uniform (B = 1); forward+backward >= 15x (encoder-like, B = 1) and >= 10x (uniform, B = 2)."""
    goals = [(1, "encoder", "fwd_ratio", "forward", 30), (1, "uniform", "fwd_ratio", "forward", 20),
             (1, "encoder", "fb_ratio", "forward+backward", 15), (2, "uniform", "fb_ratio", "forward+backward", 10)]
    enc = [r for r in rows if r["device"] == "cpu" and r["Lq"] > 300]
    if not enc:
        return
    print("\nCPU goals at the encoder shape:")
    for B, pattern, key, what, goal in goals:
        for r in (r for r in enc if r["B"] == B and r["pattern"] == pattern):
            path = f" [{r['path']}]" if r["path"] else ""
            print(f"  B={B} {pattern:<8} {what:<17} {r[key]:5.1f}x (goal {goal}x: "
                  f"{'met' if r[key] >= goal else 'MISSED'}){path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "all"], default="auto",
                        help="auto: cpu, plus cuda when a GPU is visible")
    parser.add_argument("--quick", action="store_true", help="B = 1 only")
    parser.add_argument("--min-time", type=float, default=0.3,
                        help="seconds of repeats per measurement (at least 3 repeats)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--queries", nargs="+", choices=["encoder", "decoder"],
                        default=["encoder", "decoder"], help="which Lq cases to run (default: both)")
    parser.add_argument("--batch", nargs="+", type=int, choices=[1, 2], default=[1, 2],
                        help="which batch sizes to run (default: 1 2)")
    parser.add_argument("--pattern", nargs="+", choices=["encoder", "uniform"],
                        default=["encoder", "uniform"], help="which sampling patterns (default: both)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.device in ("cpu", "cuda"):
        devices = [args.device]
    print(f"torch {torch.__version__}; M={M} D={D} L={len(LEVELS)} P={P}; levels {LEVELS}")
    rows = []
    for device in devices:
        rows += run(device, args.quick, args.min_time, args.queries, args.batch, args.pattern)
    report_goals(rows)


if __name__ == "__main__":
    main()
