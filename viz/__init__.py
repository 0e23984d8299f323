"""Figures from captures: pure functions (image, capture, selection) -> figure.

Every view comes in up to three forms: ``*_figure`` (plotly, for the browser, with hover on
every point), ``*_figure_mpl`` (matplotlib, for PNG / SVG / PDF files that go into a paper
unchanged; save with ``viz.save_figure``) and ``render_*`` (an RGB numpy array in a few
milliseconds, for the explorer's clickable image). Nothing here runs the model (except the
``python -m viz`` command line); data comes from ``ddetr.capture``.

    import viz
    sel = viz.Selection(layer=-1, color_by="weight")
    fig = viz.query_figure(capture, query, sel)           # plotly
    viz.save_figure(viz.query_figure_mpl(capture, query, sel), "out/q17")   # .png .svg .pdf
    rgb = viz.render_query_overlay(capture, query, sel)  # (H, W, 3) uint8
"""
from .bundle import write_bundle
from .cost import dense_attention_cost, deformable_attention_cost, image_cost
from .detections_view import detections_figure, detections_figure_mpl, render_detections
from .encoder_view import encoder_figure, encoder_figure_mpl, render_encoder_overlay
from .export import figure_to_array, save_figure, save_plotly
from .gradients import gradient_figure, gradient_figure_mpl, render_gradient
from .grid import grid_figure, grid_figure_mpl, render_grid
from .heatmap import attention_maps, heatmap_figure, heatmap_figure_mpl, render_heatmap
from .html_report import HtmlReport
from .lesson import Lesson, lesson
from .lesson_view import lesson_figure, lesson_figure_mpl
from .proposals import proposals, proposals_figure, proposals_figure_mpl, render_proposals
from .query_view import query_figure, query_figure_mpl, render_query_overlay
from .raster import display_scale, to_image_px
from .refinement import refinement_figure, refinement_figure_mpl, render_refinement
from .selection import PointTable, Selection, decoder_table, detection_queries, encoder_table
from .stats import statistics, stats_figure, stats_figure_mpl

__all__ = [
    "Selection", "PointTable", "decoder_table", "encoder_table", "detection_queries",
    "query_figure", "query_figure_mpl", "render_query_overlay",
    "encoder_figure", "encoder_figure_mpl", "render_encoder_overlay",
    "grid_figure", "grid_figure_mpl", "render_grid",
    "attention_maps", "heatmap_figure", "heatmap_figure_mpl", "render_heatmap",
    "refinement_figure", "refinement_figure_mpl", "render_refinement",
    "proposals", "proposals_figure", "proposals_figure_mpl", "render_proposals",
    "statistics", "stats_figure", "stats_figure_mpl",
    "gradient_figure", "gradient_figure_mpl", "render_gradient",
    "Lesson", "lesson", "lesson_figure", "lesson_figure_mpl",
    "detections_figure", "detections_figure_mpl", "render_detections",
    "dense_attention_cost", "deformable_attention_cost", "image_cost",
    "save_figure", "save_plotly", "figure_to_array", "HtmlReport", "write_bundle",
    "display_scale", "to_image_px",
]
