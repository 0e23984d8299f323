"""Cost of capture: predict time without capture, with the default and with a full capture,
and after the capture closed, measured side by side (interleaved, median) in one run.

    python bench/capture.py            # small preset at its own size, R50 multi-scale at 800x1333
    python bench/capture.py --quick    # fewer runs (R50: one of each)

Random weights: timing does not depend on them. Prints ratios to the uncaptured model in
process CPU time (on CPU; steady on a machine shared with other jobs) and wall time, the
time spent inside the capture hooks (CPU time on CPU, wall time on CUDA), and the size of
each capture.
"full" is everything in float32 (max_bytes=None); "after" is the model once the capture
closed. Targets: a full capture costs at most 10% more; after exit, nothing.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ddetr.openmp import sleep_when_idle  # noqa: E402

sleep_when_idle()  # before torch is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ddetr  # noqa: E402
from ddetr.capture import capture  # noqa: E402

MODES = ("plain", "default", "full", "after")


def _time(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process). On a machine shared with other jobs the
    CPU time is the steadier measure of what the work itself costs."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def bench(preset: str, size: tuple[int, int] | None, runs: int, device: str) -> dict:
    """size (h, w) of the input; None: the preset's own 3:4 size (shorter side min_size)."""
    torch.manual_seed(0)
    cfg = ddetr.preset(preset)
    if size is None:
        size = (cfg.min_size, min(round(cfg.min_size * 4 / 3), cfg.max_size))
    model = ddetr.build_model(cfg).eval().to(device)
    twin = copy.deepcopy(model)  # never captured: the baseline
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    on_cpu = not device.startswith("cuda")
    sizes, hook_seconds = {}, {"default": [], "full": []}

    def plain():
        twin.predict(image)
        sync()

    def with_capture(kind):
        def run():
            kw = {} if kind == "default" else dict(max_bytes=None, dtype=torch.float32)
            with capture(model, **kw) as cap:
                model.predict(image)
                sync()
            sizes[kind] = cap.last
            hook_seconds[kind].append(cap.cpu_seconds if on_cpu else cap.seconds)
        return run

    def after():
        model.predict(image)
        sync()

    fns = {"plain": plain, "default": with_capture("default"), "full": with_capture("full"), "after": after}
    for fn in fns.values():  # warm-up (allocator, kernels, lazy inits)
        fn()
    hook_seconds = {k: [] for k in hook_seconds}
    wall, cpu = {k: [] for k in MODES}, {k: [] for k in MODES}
    for _ in range(runs):  # interleaved so that load from other processes hits every mode alike
        for k in MODES:
            w, c = _time(fns[k])
            wall[k].append(w)
            cpu[k].append(c)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return {"wall": {k: statistics.median(v) for k, v in wall.items()},
            "cpu": {k: statistics.median(v) for k, v in cpu.items()}, "captures": sizes, "hooks_left": hooks,
            "hook_seconds": {k: statistics.median(v) for k, v in hook_seconds.items()},
            "input": sizes["full"].geometry.input_size}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer runs (3 small, 1 R50)")
    ap.add_argument("--runs", type=int, default=None, help="timed runs per mode for the small model")
    # One thread by default: on a shared machine two OpenMP threads wait for each other
    # (a 3 MB copy took 12 ms with 2 threads under load, 0.06 ms with 1), drowning the signal.
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-r50", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs_small = args.runs or (3 if args.quick else 7)
    runs_r50 = 1 if args.quick else 3
    cases = [("small", None, runs_small)]
    if not args.skip_r50:
        cases.append(("multi_scale", (800, 1333), runs_r50))
    import ops

    print(f"device {args.device}, {torch.get_num_threads()} threads, ops: {ops.implementation(args.device)}")
    for preset, size, runs in cases:
        r = bench(preset, size, runs, args.device)
        c, (h, w) = r["captures"], r["input"]
        print(f"\n{preset} at {w}x{h}, median of {runs} interleaved runs; capture sizes: default "
              f"{c['default'].nbytes / 1e6:.1f} MB, full {c['full'].nbytes / 1e6:.1f} MB")
        print(f"  {'':<18} {'plain':>8} {'default':>8} {'full':>8} {'after':>8} | {'default/plain':>13} "
              f"{'full/plain':>10} {'after/plain':>11}")
        for name in ("cpu", "wall") if args.device == "cpu" else ("wall",):
            t = r[name]
            cols = " ".join(f"{t[k]:8.3f}" for k in MODES)
            print(f"  {name + ' seconds':<18} {cols} | {t['default'] / t['plain']:13.3f} "
                  f"{t['full'] / t['plain']:10.3f} {t['after'] / t['plain']:11.3f}")
        clock = "cpu" if args.device == "cpu" else "wall"
        t, hs = r[clock], r["hook_seconds"]
        print(f"  {clock} time inside the capture hooks / plain: default {hs['default'] / t['plain']:.3f}, "
              f"full {hs['full'] / t['plain']:.3f}")
        print(f"  hooks left after exit: {r['hooks_left']}; default capture left out: "
              f"{'; '.join(c['default'].left_out) or 'nothing'}")


if __name__ == "__main__":
    main()
