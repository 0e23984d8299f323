"""Iterative bounding-box refinement (sec. 4.1 / appendix A.4): the box and reference point
of one query after each decoder layer.

Layer d starts from reference d (a point, or with refinement / two-stage a box whose centre
is the reference point) and outputs box d; with refinement box d becomes reference d + 1.
Data: ``Capture.trajectory``.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ddetr.frames import box_cxcywh_to_xyxy

from . import fastplot as fp
from . import canvas
from .raster import Raster
from .style import (COLUMN_WIDTH, OUTLINE_COLOR, REFERENCE_COLOR, WEIGHT_CMAP, colormap_rgb, new_figure, paper)


def layer_colors(n: int) -> np.ndarray:
    """(n, 3) uint8: early layers light, the last dark-ish (a sequential ramp of viridis)."""
    return colormap_rgb(np.linspace(0.95, 0.15, n) if n > 1 else np.array([0.15]), 0.0, 1.0, WEIGHT_CMAP)


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in rgb)


def trajectory(capture, query: int) -> dict:
    """``Capture.trajectory`` plus ``centres`` (D, 2) (the reference points), reference boxes
    as xyxy (D, 4) (rows NaN while the reference is a point) or None when none is a box, and
    the label names."""
    t = dict(capture.trajectory(int(query)))
    t["centres"] = np.asarray(t["reference_points"], dtype=np.float64)
    rb = np.asarray(t["reference_boxes"], dtype=np.float64)
    t["reference_boxes"] = None if np.isnan(rb).all() else box_cxcywh_to_xyxy(rb)
    t["label_names"] = [capture.label_name(i) for i in np.asarray(t["labels"]).tolist()]
    return t


def _zoom(t: dict, w: int, h: int, pad: float = 0.25) -> tuple[float, float, float, float]:
    pts = [t["boxes"].reshape(-1, 2), t["centres"]]
    if t["reference_boxes"] is not None:
        pts.append(t["reference_boxes"].reshape(-1, 2))
    p = np.concatenate(pts)
    p = p[np.isfinite(p).all(1)]
    lo, hi = p.min(0), p.max(0)
    m = pad * max(hi[0] - lo[0], hi[1] - lo[1], 24.0)
    return float(lo[0] - m), float(lo[1] - m), float(hi[0] + m), float(hi[1] + m)


def refinement_figure(capture, query: int, zoom: bool = True) -> go.Figure:
    """Plotly: box d (solid, coloured by layer) and reference d (cross; dashed box when the
    reference is a box) for every decoder layer d, references joined in order."""
    t = trajectory(capture, query)
    D = len(t["boxes"])
    cols = [_hex(c) for c in layer_colors(D)]
    w, h = canvas.image_size(capture.image)
    ax, ay = canvas.image_axis_layout(w, h)
    if zoom:
        x0, y0, x1, y1 = _zoom(t, w, h)
        ax["range"], ay["range"] = [x0, x1], [y1, y0]
    data = [canvas.plotly_image(capture.image)]
    c = t["centres"]
    data.append(fp.Scatter(x=c[:, 0], y=c[:, 1], mode="lines", line=dict(color=REFERENCE_COLOR, width=1.5, dash="dot"),
                           hoverinfo="skip", showlegend=False))
    for d in range(D):
        x0, y0, x1, y1 = t["boxes"][d].tolist()
        data.append(fp.Scatter(
            x=[x0, x1, x1, x0, x0], y=[y0, y0, y1, y1, y0], mode="lines", name=f"layer {d}", legendgroup=f"layer {d}",
            line=dict(color=cols[d], width=2.5), meta="box",
            hovertemplate=(f"layer {d} box ({x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}) px<br>"
                           f"{t['label_names'][d]} {t['scores'][d]:.3f}<extra></extra>")))
        if t["reference_boxes"] is not None and np.isfinite(t["reference_boxes"][d]).all():
            rx0, ry0, rx1, ry1 = t["reference_boxes"][d].tolist()
            data.append(fp.Scatter(x=[rx0, rx1, rx1, rx0, rx0], y=[ry0, ry0, ry1, ry1, ry0], mode="lines",
                                   line=dict(color=cols[d], width=1, dash="dash"), legendgroup=f"layer {d}",
                                   showlegend=False, hoverinfo="skip"))
        data.append(fp.Scatter(
            x=[c[d, 0]], y=[c[d, 1]], mode="markers+text", text=[str(d)], textposition="top right",
            textfont=dict(color="white", size=11), legendgroup=f"layer {d}", showlegend=False, meta="reference",
            marker=dict(symbol="cross", size=12, color=REFERENCE_COLOR, line=dict(color=cols[d], width=1.5)),
            hovertemplate=f"layer {d} reference ({c[d, 0]:.1f}, {c[d, 1]:.1f}) px<extra></extra>"))
    layout = canvas.base_layout(f"query {query}: refinement over {D} decoder layers", height=520)
    layout.update(xaxis=ax, yaxis=ay, plot_bgcolor="#DDDDDD")
    return fp.Figure(data=data, layout=layout)


def refinement_figure_mpl(capture, query: int, zoom: bool = True):
    """Matplotlib (paper) version of ``refinement_figure``."""
    import matplotlib.patheffects as pe

    t = trajectory(capture, query)
    D = len(t["boxes"])
    cols = layer_colors(D) / 255.0
    w, h = canvas.image_size(capture.image)
    rect = _zoom(t, w, h) if zoom else (0, 0, w, h)
    aspect = (rect[3] - rect[1]) / (rect[2] - rect[0])
    with paper():
        fig = new_figure(COLUMN_WIDTH, COLUMN_WIDTH * aspect + 0.3)
        ax = fig.add_axes([0.02, 0.02, 0.96, 0.88])
        canvas.mpl_image(ax, capture.image)
        ax.set_facecolor("#DDDDDD")
        c = t["centres"]
        ax.plot(c[:, 0], c[:, 1], ls=":", lw=0.8, color=REFERENCE_COLOR, zorder=2)
        halo = [pe.Stroke(linewidth=2.4, foreground=OUTLINE_COLOR), pe.Normal()]
        for d in range(D):
            x0, y0, x1, y1 = t["boxes"][d].tolist()
            ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], lw=1.2, color=cols[d], zorder=3, path_effects=halo,
                    label=f"layer {d}: {t['label_names'][d]} {t['scores'][d]:.2f}")
            if t["reference_boxes"] is not None and np.isfinite(t["reference_boxes"][d]).all():
                rx0, ry0, rx1, ry1 = t["reference_boxes"][d].tolist()
                ax.plot([rx0, rx1, rx1, rx0, rx0], [ry0, ry0, ry1, ry1, ry0], lw=0.6, ls="--", color=cols[d], zorder=2)
            ax.plot([c[d, 0]], [c[d, 1]], marker="+", ms=6, mew=1.5, color=REFERENCE_COLOR, zorder=4,
                    path_effects=[pe.Stroke(linewidth=2.5, foreground=OUTLINE_COLOR), pe.Normal()])
            ax.annotate(str(d), (c[d, 0], c[d, 1]), xytext=(3, 3), textcoords="offset points", fontsize=6,
                        color="white", path_effects=[pe.withStroke(linewidth=1.5, foreground="black")])
        ax.set_xlim(rect[0], rect[2])
        ax.set_ylim(rect[3], rect[1])
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(D, 3), fontsize=5.5, frameon=False)
        ax.set_title(f"query {query}: box and reference after each decoder layer")
    return fig


def render_refinement(capture, query: int, scale: float | None = None) -> np.ndarray:
    """RGB version (whole image): boxes coloured by layer, reference crosses joined in order."""
    t = trajectory(capture, query)
    cols = layer_colors(len(t["boxes"]))
    r = Raster(capture.image, scale)
    r.polyline(t["centres"], REFERENCE_COLOR, width=1)
    for d in range(len(t["boxes"])):
        if t["reference_boxes"] is not None and np.isfinite(t["reference_boxes"][d]).all():
            r.box(t["reference_boxes"][d], color=cols[d], width=1, dashed=True)
        r.box(t["boxes"][d], color=cols[d], width=2)
        r.cross(t["centres"][d], size=10, width=2)
    d = len(t["boxes"]) - 1
    x0, y0 = t["boxes"][d][:2] * r.scale
    r.label(x0, y0, f"{t['label_names'][d]} {t['scores'][d]:.2f}")
    return r.array()
