"""Server-side times of the explorer on this machine, measured side by side in one run.

1. A change of view (layer / heads / levels / colouring / top-k / merged or across scales,
   a detection or a pixel selected) with the default model on its first example image: the
   handler's time (drawing from the cached capture, the model does not run) and the round
   trip through a launched server (adds Gradio's JPEG encoding and HTTP). Target: <= 150 ms.
2. A new image with the default model: read, run once under capture, draw. Target: <= 0.5 s.
3. The R50 multi-scale model (official architecture) on an 800x1333 image: our forward against
   the same weights in transformers' DeformableDetrForObjectDetection (weights copied with
   ``ddetr.checkpoint_hf.ours_to_hf``), same process, same threads. Target: ours >= 1.5x faster;
   the difference is our CPU ``ms_deform_attn`` kernel against transformers' grid_sample path.

    python bench/app.py                  # all three
    python bench/app.py --skip-r50       # 1 and 2 only (a minute)

Without examples/default_model.safetensors the untrained ``small`` model (same architecture,
so the same speed) stands in, and the output says so.

Everything timed runs on a worker thread, as Gradio runs handlers (``anyio.to_thread``), and
with ``OMP_WAIT_POLICY=PASSIVE`` as app.py sets it (on a busy 2-core machine, spinning OpenMP
teams made the small model's forward 30x slower: 3 s instead of 0.1 s).
"""
from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
import socket
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as app.py: before torch is imported
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import app  # noqa: E402


_WORKER = ThreadPoolExecutor(1, thread_name_prefix="bench-worker")


def on_worker(fn):
    """Run ``fn`` on the worker thread (as a Gradio handler runs) and return its result."""
    return _WORKER.submit(fn).result()


def median_ms(fn, n: int) -> tuple[float, float]:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts), max(ts)


def default_model():
    if app.DEFAULT_CHECKPOINT.exists():
        return app.startup_model(app.parse_args([])), "default model " + app._shown(app.DEFAULT_CHECKPOINT)
    return app.random_model(0), "UNTRAINED small model (examples/default_model.safetensors missing; same architecture)"


def example_image(tmp: Path) -> Path:
    found = app.find_examples()
    if found["synthetic"]:
        return next(iter(found["synthetic"].values()))
    from ddetr.data.synthetic import render_scene

    path = tmp / "scene.png"
    render_scene(0)[0].save(path)
    return path


def bench_views(n: int) -> None:
    import tempfile

    from gradio_client import Client

    lm, what = default_model()
    tmp = Path(tempfile.mkdtemp(prefix="bench-app-"))
    image = example_image(tmp)
    examples = {"synthetic": {image.name: image}, "photos": {}}
    demo = app.build_demo(lm, examples=examples, threshold=0.3)
    ex = demo.explorer
    handlers = demo.handlers
    h = lambda *a: handlers.set_view(key, *a)  # noqa: E731
    print(f"model: {what}; image {image.name}; torch threads {torch.get_num_threads()}")

    # --- 2. new image (handler: read + model under capture + draw) ---
    s = ex.store.create(ex.registry.startup_name)
    s.view.threshold = 0.3
    ex.run(s, image)  # warm-up (allocator, kernel build, first-call costs)
    runs = []
    for _ in range(max(3, n // 4)):
        t0 = time.perf_counter()
        ex.run(s, image)
        render = handlers.render(s)
        runs.append(time.perf_counter() - t0)
        assert render
    model_s = statistics.median(ex.timings._d["model"][-len(runs):])
    print(f"new image: {statistics.median(runs) * 1e3:.0f} ms median (model under capture {model_s * 1e3:.0f} ms), "
          f"max {max(runs) * 1e3:.0f} ms   target <= 500 ms")

    # --- 1. view changes from the cached capture ---
    cfg = lm.model.cfg
    M, L = cfg.n_heads, cfg.n_levels
    key = s.key
    if not ex.visible(s):
        s.view.threshold = 0.0
    views = [
        ("layer", lambda i: h(i % cfg.dec_layers, list(range(M)), list(range(L)), "head", 0, "merged", 0)),
        ("heads", lambda i: h(cfg.dec_layers - 1, [i % M], list(range(L)), "head", 0, "merged", 0)),
        ("levels", lambda i: h(cfg.dec_layers - 1, list(range(M)), [i % L], "weight", 0, "merged", 0)),
        ("top-k", lambda i: h(cfg.dec_layers - 1, list(range(M)), list(range(L)), "weight", 1 + i % 16, "merged", 0)),
        ("across scales", lambda i: h(cfg.dec_layers - 1, list(range(M)), list(range(L)), "head", 0,
                                      "scales" if i % 2 else "merged", 0)),
    ]
    w, hh = s.capture.image.shape[1], s.capture.image.shape[0]
    views.append(("select detection", lambda i: handlers.select_detection(key, i % max(1, len(ex.visible(s))))))
    views.append(("click pixel (encoder)", lambda i: handlers.click_pixel(key, (i * 37) % w, (i * 53) % hh)))
    worst = 0.0
    for tab in ("interactive", "learn"):
        s.active_tab = tab
        for name, fn in views:
            handlers.select_detection(key, 0) if ex.visible(s) else None
            # the pictures, then (the page's second step) the tab on screen
            step = lambda i, fn=fn: (fn(i), handlers.refresh_tab(key))  # noqa: E731
            step(0)  # warm
            med, mx = median_ms(lambda c=iter(range(1, 10 ** 6)): step(next(c)), n)
            worst = max(worst, med)
            print(f"view change [{tab} tab shown] {name:22s} {med:6.1f} ms median, max {mx:6.1f} ms")
    print(f"view change, worst median: {worst:.0f} ms   target <= 150 ms")

    # --- round trip through a launched server (adds Gradio's JPEG encoding, queue and HTTP) ---
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.launch(**app.launch_kwargs(server_port=port, prevent_thread_lock=True, quiet=True))
    try:
        c = Client(f"http://127.0.0.1:{port}/", verbose=False)
        t0 = time.perf_counter()
        c.predict(image.name, 0.3, api_name="/detect_example")
        first = time.perf_counter() - t0
        rt = median_ms(lambda it=iter(range(1, 10 ** 6)): c.predict(
            next(it) % cfg.dec_layers, list(range(M)), list(range(L)), "head", 0, "merged", 0, api_name="/set_view"), n)
        print(f"round trip via gradio_client: new image {first * 1e3:.0f} ms (first call), "
              f"view change {rt[0]:.0f} ms median (max {rt[1]:.0f} ms)")
    finally:
        demo.close()


def bench_r50(repeats: int) -> None:
    import transformers

    import ddetr
    from ddetr import checkpoint_hf as hf

    cfg = ddetr.preset("multi_scale")
    ours = ddetr.build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # off the structured init, so offsets spread as a trained model's do
        for n, p in ours.named_parameters():
            if "sampling_offsets" in n or "attention_weights" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    theirs = transformers.DeformableDetrForObjectDetection(transformers.DeformableDetrConfig(**hf.hf_config_dict(cfg))).eval()
    theirs.load_state_dict(hf.ours_to_hf(ours.state_dict(), names="v5", backbone="timm"), strict=True)
    x = torch.randn(1, 3, 800, 1333, generator=g)
    mask = torch.zeros(1, 800, 1333, dtype=torch.bool)
    with torch.inference_mode():
        a = ours(x, mask)
        b = theirs(pixel_values=x, pixel_mask=(~mask).long())
        err = (a.logits - b.logits).abs().max().item()
        t_ours, t_theirs = [], []
        for _ in range(repeats):  # interleaved, so that machine load hits both alike
            t0 = time.perf_counter()
            ours(x, mask)
            t_ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            theirs(pixel_values=x, pixel_mask=(~mask).long())
            t_theirs.append(time.perf_counter() - t0)
    o, t = statistics.median(t_ours), statistics.median(t_theirs)
    import ops

    print(f"R50 multi-scale, 800x1333, batch 1, {torch.get_num_threads()} threads, op: {ops.implementation()}: "
          f"ours {o:.2f} s, transformers {transformers.__version__} {t:.2f} s -> {t / o:.2f}x   target >= 1.5x "
          f"(same weights; max |logit difference| {err:.1e})")


def main(argv=None) -> None:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=20, help="view changes timed per kind")
    ap.add_argument("--r50-repeats", type=int, default=2)
    ap.add_argument("--skip-r50", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    on_worker(lambda: torch.set_num_threads(args.threads))
    on_worker(lambda: bench_views(args.repeats))
    if not args.skip_r50:
        on_worker(lambda: bench_r50(args.r50_repeats))


if __name__ == "__main__":
    main()
