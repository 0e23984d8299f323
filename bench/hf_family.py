"""Stock transformers deformable attention (grid_sample) vs ``ddetr.accelerate`` (our op),
end to end, side by side in one run, for a realistic configuration of each family.

    python bench/hf_family.py                       # all families, one forward each, 1 repeat
    python bench/hf_family.py --families rt_detr --repeats 2 --device cuda

Times are process CPU seconds on CPU (the steady measure on a shared machine), wall seconds
on CUDA. Random weights built from the transformers config classes (no download). Per family it prints
the end-to-end forward time stock and accelerated, their ratio, and the time inside the
deformable-attention modules (the op) with its share of the forward: the op's share of the
stock forward bounds what swapping it can win (Amdahl).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ddetr.hf_family.accelerate import accelerate, restore  # noqa: E402
from ddetr.hf_family.configs import realistic_config  # noqa: E402
from ddetr.hf_family.registry import kernel_modules  # noqa: E402

# family -> (model class, input (H, W), what the configuration is)
SETUPS = {
    "rt_detr": ("RTDetrForObjectDetection", (640, 640), "RT-DETR R50, 640x640, 300 queries"),
    "deformable_detr": ("DeformableDetrForObjectDetection", (800, 1333), "Deformable DETR R50, 800x1333, 300 queries"),
    "grounding-dino": ("GroundingDinoForObjectDetection", (800, 1333), "Grounding DINO Swin-T, 800x1333, 900 queries"),
}


def clock(device) -> float:
    """Process CPU time on CPU (steady on a machine shared with other jobs; with several threads
    it sums them, i.e. it measures work), wall time on CUDA (synchronized)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


class OpTimer:
    """Time spent inside the deformable-attention modules (``clock``)."""

    def __init__(self, model, device):
        self.seconds, self._t, self.handles, self.device = 0.0, 0.0, [], device
        for part in kernel_modules(model).values():
            for _i, _name, m in part:
                self.handles.append(m.register_forward_pre_hook(self._start))
                self.handles.append(m.register_forward_hook(self._stop))

    def _start(self, *_):
        self._t = clock(self.device)

    def _stop(self, *_):
        self.seconds += clock(self.device) - self._t

    def close(self):
        for h in self.handles:
            h.remove()


def inputs_for(family: str, hw, device) -> dict:
    g = torch.Generator().manual_seed(0)
    x = {"pixel_values": torch.randn(1, 3, *hw, generator=g).to(device)}
    if family != "rt_detr":
        x["pixel_mask"] = torch.ones(1, *hw, dtype=torch.long, device=device)
    if family == "grounding-dino":
        x["input_ids"] = torch.tensor([[101, 4937, 1012, 3899, 1012, 102]], device=device)  # "[CLS] cat . dog . [SEP]"
        x["attention_mask"] = torch.ones_like(x["input_ids"])
    return x


@torch.inference_mode()
def run_once(model, x, device) -> tuple[float, float]:
    """(forward seconds, seconds inside the op modules)."""
    timer = OpTimer(model, device)
    try:
        t = clock(device)
        model(**x)
        return clock(device) - t, timer.seconds
    finally:
        timer.close()


def bench(family: str, repeats: int, device) -> dict:
    import transformers

    cls, hw, what = SETUPS[family]
    torch.manual_seed(0)
    model = getattr(transformers, cls)(realistic_config(family)).to(device).eval()
    x = inputs_for(family, hw, device)
    run_once(model, x, device)  # warm-up: lazy initialization, kernel build, allocator
    stock, fast = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine load
        stock.append(run_once(model, x, device))
        n = accelerate(model)
        fast.append(run_once(model, x, device))
        restore(model)
    best = lambda runs: min(runs, key=lambda r: r[0])  # noqa: E731
    return {"what": what, "modules": n, "stock": best(stock), "fast": best(fast)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default=",".join(SETUPS), help=f"comma-separated, from {', '.join(SETUPS)}")
    p.add_argument("--repeats", type=int, default=1, help="timed forwards per variant after one warm-up (default 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    import ops

    unit = "wall s" if device.type == "cuda" else "process CPU s"
    print(f"device {device}, op implementation {ops.implementation(device)}, {torch.get_num_threads()} CPU threads, "
          f"best of {args.repeats} after a warm-up; times in {unit}")
    print(f"{'configuration':46s} {'stock s':>8s} {'ours s':>8s} {'speedup':>8s}   {'op stock':>9s} {'op ours':>8s} "
          f"{'op share':>9s} {'rest stock':>11s} {'rest ours':>10s}")
    for fam in [f.strip() for f in args.families.split(",") if f.strip()]:
        if fam not in SETUPS:
            raise SystemExit(f"unknown family {fam!r}; choose from {', '.join(SETUPS)}")
        r = bench(fam, args.repeats, device)
        (ts, os_), (tf, of) = r["stock"], r["fast"]
        print(f"{r['what']:46s} {ts:8.2f} {tf:8.2f} {ts / tf:7.2f}x   {os_:8.2f}s {of:7.2f}s {100 * os_ / ts:8.0f}%"
              f" {ts - os_:10.2f}s {tf - of:9.2f}s   ({r['modules']} modules swapped)", flush=True)
    print("op share: the op's part of the stock forward; rest: the forward outside the op, the same work "
          "in both (their difference is measurement noise)")


if __name__ == "__main__":
    main()
