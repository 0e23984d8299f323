"""Time to re-render each view from an existing capture (the explorer's reaction time).

    python bench/viz.py [--capture FILE] [--repeat 7] [--budget-ms 150]

Without --capture: the default model (examples/default_model.safetensors, else the small
preset with random weights) runs once on an example image; that run is not timed. Then each
view is drawn ``repeat`` times (after one warm-up) and the median is printed for

* plotly: building the figure and serializing it to JSON (what Gradio sends the browser),
* raster: the RGB array for the clickable image (where the view has one),
* mpl: building the matplotlib figure and drawing it with Agg (files only; not interactive).

The interactive paths (plotly, raster) must stay under ``--budget-ms``; the exit status is 1
when one does not.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddetr.openmp import sleep_when_idle  # noqa: E402

sleep_when_idle()  # before torch is imported

import numpy as np  # noqa: E402
import plotly.io as pio  # noqa: E402


def _capture_and_gradients(path: str | None):
    import torch

    import ddetr
    from ddetr.capture import Capture, capture

    if path:
        return Capture.load(path), None
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    ckpt = Path("examples/default_model.safetensors")
    if ckpt.exists():
        from ddetr.checkpoint import load

        model = load(str(ckpt))[0].eval()
        source = str(ckpt)
    else:
        torch.manual_seed(0)
        model = ddetr.build_model(ddetr.preset("small", num_classes=8)).eval()
        source = "small preset, random weights (no examples/default_model.safetensors)"
    files = sorted(Path("examples/synthetic").glob("*.png"))
    if files:
        from PIL import Image

        image = Image.open(files[0]).convert("RGB")
    else:
        from ddetr.data.synthetic import render_scene

        image = render_scene(7)[0]
    with capture(model) as session:
        model.predict(image)
    cap = session.captures[0]
    from ddetr.gradients import box_gradients

    grads = box_gradients(model, image, int(cap.detections.query_index[0]))
    print(f"model: {source}")
    return cap, grads


def _median_ms(fn, repeat: int) -> float:
    fn()  # warm-up (imports, caches of the image's PNG and level pictures)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def views(cap, grads):
    """(name, plotly builder, raster builder or None, matplotlib builder)."""
    import viz
    from viz import Selection

    q = int(cap.detections.query_index[0])
    h, w = cap.image.shape[:2]
    enc_layer = cap.encoder_layers[-1]
    W = Selection(color_by="weight")
    out = [
        ("query (merged, by head)", lambda: viz.query_figure(cap, q), lambda: viz.render_query_overlay(cap, q),
         lambda: viz.query_figure_mpl(cap, q)),
        ("query (merged, by weight)", lambda: viz.query_figure(cap, q, W), lambda: viz.render_query_overlay(cap, q, W),
         lambda: viz.query_figure_mpl(cap, q, W)),
        ("query (across scales)", lambda: viz.query_figure(cap, q, Selection(merged=False)),
         lambda: viz.render_query_overlay(cap, q, Selection(merged=False)),
         lambda: viz.query_figure_mpl(cap, q, Selection(merged=False))),
        ("encoder pixel", lambda: viz.encoder_figure(cap, w / 2, h / 2, 1, Selection(layer=enc_layer)),
         lambda: viz.render_encoder_overlay(cap, w / 2, h / 2, 1, Selection(layer=enc_layer)),
         lambda: viz.encoder_figure_mpl(cap, w / 2, h / 2, 1, Selection(layer=enc_layer))),
        ("layer x head grid", lambda: viz.grid_figure(cap, q), lambda: viz.render_grid(cap, q),
         lambda: viz.grid_figure_mpl(cap, q)),
        ("heatmap (one query)", lambda: viz.heatmap_figure(cap, q), lambda: viz.render_heatmap(cap, q),
         lambda: viz.heatmap_figure_mpl(cap, q)),
        ("heatmap (all detections)", lambda: viz.heatmap_figure(cap, None, threshold=0.0),
         lambda: viz.render_heatmap(cap, None, threshold=0.0), lambda: viz.heatmap_figure_mpl(cap, None, threshold=0.0)),
        ("refinement", lambda: viz.refinement_figure(cap, q), lambda: viz.render_refinement(cap, q),
         lambda: viz.refinement_figure_mpl(cap, q)),
        ("statistics", lambda: viz.stats_figure(cap, 0.0), None, lambda: viz.stats_figure_mpl(cap, 0.0)),
        ("lesson", lambda: viz.lesson_figure(cap, q), None, lambda: viz.lesson_figure_mpl(cap, q)),
        ("detections", lambda: viz.detections_figure(cap, 0.0), lambda: viz.render_detections(cap, 0.0),
         lambda: viz.detections_figure_mpl(cap, 0.0)),
    ]
    if "proposals/boxes" in cap.arrays:
        out.append(("two-stage proposals", lambda: viz.proposals_figure(cap, threshold=0.0),
                    lambda: viz.render_proposals(cap, threshold=0.0), lambda: viz.proposals_figure_mpl(cap, threshold=0.0)))
    if grads is not None:
        out.append(("gradients (Figure 5)", lambda: viz.gradient_figure(cap.image, grads),
                    lambda: viz.render_gradient(cap.image, grads), lambda: viz.gradient_figure_mpl(cap.image, grads)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--capture", help="a saved capture (default: run the default model once)")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--budget-ms", type=float, default=150.0)
    p.add_argument("--no-mpl", action="store_true", help="skip the matplotlib timings")
    args = p.parse_args(argv)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from viz.style import paper

    cap, grads = _capture_and_gradients(args.capture)
    g = cap.geometry
    print(f"capture: {g.orig_size[1]}x{g.orig_size[0]} image, {cap.meta['n_heads']} heads x {cap.meta['n_levels']} "
          f"levels x {cap.meta['n_points']} points, {cap.meta['dec_layers']} decoder layers, "
          f"{cap.meta['num_queries']} queries; median of {args.repeat} after a warm-up; CPU threads {os.cpu_count()}")

    def mpl_draw(build):
        def run():
            with paper():
                FigureCanvasAgg(build()).draw()
        return run

    print(f"{'view':28s} {'plotly+json':>12s} {'raster':>9s} {'mpl+Agg':>9s}   interactive <= {args.budget_ms:.0f} ms")
    worst = 0.0
    for name, plotly_fn, raster_fn, mpl_fn in views(cap, grads):
        t_plotly = _median_ms(lambda: pio.to_json(plotly_fn(), validate=False), args.repeat)
        t_raster = _median_ms(raster_fn, args.repeat) if raster_fn else float("nan")
        t_mpl = float("nan") if args.no_mpl else _median_ms(mpl_draw(mpl_fn), max(3, args.repeat // 2))
        interactive = max(t_plotly, 0.0 if np.isnan(t_raster) else t_raster)
        worst = max(worst, interactive)
        ok = "ok" if interactive <= args.budget_ms else "SLOW"
        print(f"{name:28s} {t_plotly:10.1f}ms {t_raster:7.1f}ms {t_mpl:7.1f}ms   {ok}")
    print(f"slowest interactive render: {worst:.1f} ms (budget {args.budget_ms:.0f} ms)")
    return 0 if worst <= args.budget_ms else 1


if __name__ == "__main__":
    raise SystemExit(main())
