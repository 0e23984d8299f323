"""The whole set for one capture: every view for every detection above a threshold, as paper
files (PNG / SVG / PDF) and one interactive HTML page.

Layout of ``out``::

    report.html                      every plotly view, self-contained, works offline
    figures/detections.*, stats.*, proposals.*, heatmap_all.*, encoder_q{q}.*
    figures/q{q}_{view}.*            per detection: query, scales, grid, heatmap,
                                     refinement, lesson, gradients (when given)
    lesson_q{q}.md                   the lesson's text with this query's numbers
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from .detections_view import detections_figure, detections_figure_mpl
from .encoder_view import encoder_figure, encoder_figure_mpl
from .export import FORMATS, save_figure
from .gradients import gradient_figure, gradient_figure_mpl
from .grid import grid_figure, grid_figure_mpl
from .heatmap import heatmap_figure, heatmap_figure_mpl
from .html_report import HtmlReport
from .lesson import lesson
from .lesson_view import lesson_figure, lesson_figure_mpl
from .proposals import proposals_figure, proposals_figure_mpl
from .query_view import query_figure, query_figure_mpl
from .refinement import refinement_figure, refinement_figure_mpl
from .selection import Selection, detection_queries
from .stats import stats_figure, stats_figure_mpl


def _jobs(capture, threshold: float, layer: int, max_detections: int | None, gradients: dict | None):
    """(file stem, section, plotly builder, matplotlib builder) for everything to draw."""
    pairs = detection_queries(capture, threshold)[:max_detections]
    jobs: list[tuple[str, str, Callable, Callable]] = []
    glob = "overview"
    jobs.append(("detections", glob, lambda: detections_figure(capture, threshold),
                 lambda: detections_figure_mpl(capture, threshold)))
    if pairs:
        jobs.append(("stats", glob, lambda: stats_figure(capture, threshold, layer),
                     lambda: stats_figure_mpl(capture, threshold, layer)))
        jobs.append(("heatmap_all", glob, lambda: heatmap_figure(capture, None, Selection(layer=layer), threshold),
                     lambda: heatmap_figure_mpl(capture, None, Selection(layer=layer), threshold)))
    if "proposals/boxes" in capture.arrays:
        jobs.append(("proposals", glob, lambda: proposals_figure(capture, threshold=threshold),
                     lambda: proposals_figure_mpl(capture, threshold=threshold)))
    weight = Selection(layer=layer, color_by="weight")
    scales = Selection(layer=layer, merged=False)
    for i, q in pairs:
        det = capture.detections
        sec = f"detection {i}: {det.label_names[i]} {float(det.scores[i]):.2f} (query {q})"
        jobs += [
            (f"q{q}_query", sec, lambda q=q: query_figure(capture, q, weight), lambda q=q: query_figure_mpl(capture, q, weight)),
            (f"q{q}_scales", sec, lambda q=q: query_figure(capture, q, scales), lambda q=q: query_figure_mpl(capture, q, scales)),
            (f"q{q}_grid", sec, lambda q=q: grid_figure(capture, q, weight), lambda q=q: grid_figure_mpl(capture, q, weight)),
            (f"q{q}_heatmap", sec, lambda q=q: heatmap_figure(capture, q, Selection(layer=layer)),
             lambda q=q: heatmap_figure_mpl(capture, q, Selection(layer=layer))),
            (f"q{q}_refinement", sec, lambda q=q: refinement_figure(capture, q), lambda q=q: refinement_figure_mpl(capture, q)),
            (f"q{q}_lesson", sec, lambda q=q: lesson_figure(capture, q, layer), lambda q=q: lesson_figure_mpl(capture, q, layer)),
        ]
        if capture.encoder_layers:
            b = det.boxes[i].tolist()
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            enc = Selection(layer=capture.encoder_layers[-1], color_by="weight")
            jobs.append((f"q{q}_encoder", sec, lambda cx=cx, cy=cy: encoder_figure(capture, cx, cy, 0, enc),
                         lambda cx=cx, cy=cy: encoder_figure_mpl(capture, cx, cy, 0, enc)))
        if gradients and q in gradients:
            g = gradients[q]
            jobs.append((f"q{q}_gradients", sec, lambda g=g: gradient_figure(capture.image, g),
                         lambda g=g: gradient_figure_mpl(capture.image, g)))
    return pairs, jobs


def write_bundle(capture, out, threshold: float = 0.5, layer: int = -1, formats=FORMATS,
                 max_detections: int | None = None, gradients: dict | None = None, title: str | None = None,
                 progress: bool = True) -> dict[str, list[Path]]:
    """Draw everything for ``capture`` into ``out``; returns {stem: files} (``report`` -> the HTML).

    gradients: {query index: ``ddetr.gradients.box_gradients`` result} for Figure 5 views.
    """
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    pairs, jobs = _jobs(capture, threshold, layer, max_detections, gradients)
    report = HtmlReport(title or f"Deformable DETR explorer: {capture.meta['variant']}")
    report.text(capture.summary(), pre=True)
    if not pairs:
        report.text(f"No detection scores at least {threshold}: only the overview is drawn; "
                    "lower the threshold (--threshold) to see per-detection views.")
    written: dict[str, list[Path]] = {}
    section = None
    for stem, sec, plotly_fn, mpl_fn in tqdm(jobs, desc="figures", unit="fig", disable=not progress):
        if sec != section:
            report.close()
            if sec == "overview":
                report.heading("Overview")
            else:
                report.open(sec, opened=section == "overview")
            section = sec
        report.heading(stem.split("_", 1)[-1] if stem.startswith("q") else stem, level=3)
        report.figure(plotly_fn())
        if stem.endswith("_lesson"):
            md = lesson(capture, int(stem[1:].split("_")[0]), layer).markdown()
            report.markdown(md)
            md_path = out / f"lesson_{stem.split('_')[0]}.md"
            md_path.write_text(md + "\n", encoding="utf-8")
            written[f"{stem}_md"] = [md_path]
        fig = mpl_fn()
        written[stem] = save_figure(fig, out / "figures" / stem, tuple(formats))
    report.close()
    written["report"] = [report.write(out / "report.html")]
    return written
