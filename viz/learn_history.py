"""How it learned: one query's or pixel's sampling points and weights at every training
snapshot, initialization first, each panel titled with the snapshot's step and held-out AP.

Input: the ``SnapshotSampling`` list of ``ddetr.snapshots.sampling_history`` (the model was
run there) and the ``Geometry`` of the image (``capture.geometry``), which maps the op-frame
locations to image pixels. Colour = head, marker area = attention weight, green cross = the
reference point, white box = the followed query's detection in that snapshot.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import canvas
from .style import OUTLINE_COLOR, REFERENCE_COLOR, head_color, marker_diameter


def history_points(geometry, samplings) -> list[np.ndarray]:
    """Each snapshot's points in image pixels, (M, L, P, 2)."""
    return [geometry.to_image(s.locations) for s in samplings]


def history_titles(samplings) -> list[str]:
    out = []
    for s in samplings:
        t = s.snapshot.label
        if s.iou is not None:
            t += f"<br>query {s.row}, box IoU {s.iou:.2f}"
        out.append(t)
    return out


def history_figure(image: np.ndarray, geometry, samplings, heads: list[int] | None = None, cols: int = 3) -> go.Figure:
    """Small multiples in training order; ``heads`` None shows every head."""
    if not samplings:
        raise ValueError("no snapshots to show")
    M = samplings[0].weights.shape[0]
    heads = list(range(M)) if heads is None else list(heads)
    pts = history_points(geometry, samplings)
    allp = np.concatenate([p[heads].reshape(-1, 2) for p in pts])
    allp = allp[np.isfinite(allp).all(1)]
    lo, hi = allp.min(0), allp.max(0)
    pad = 0.1 * max(hi[0] - lo[0], hi[1] - lo[1], 24.0)
    rect = (lo[0] - pad, lo[1] - pad, hi[0] + pad, hi[1] + pad)
    pic, prect = canvas.crop(image, rect, 400)
    n = len(samplings)
    rows = -(-n // cols)
    fig = make_subplots(rows, cols, subplot_titles=history_titles(samplings), horizontal_spacing=0.02,
                        vertical_spacing=0.08)
    for i, (s, p) in enumerate(zip(samplings, pts)):
        r, c = i // cols + 1, i % cols + 1
        fig.add_trace(canvas.plotly_image_at(pic, prect), r, c)
        size = marker_diameter(s.weights.ravel()).reshape(s.weights.shape)
        for m in heads:
            fig.add_trace(go.Scatter(
                x=p[m, ..., 0].ravel(), y=p[m, ..., 1].ravel(), mode="markers", name=f"head {m}", legendgroup=f"h{m}",
                showlegend=i == 0, meta=f"snapshot_{s.snapshot.step}",
                marker=dict(color=head_color(m), size=size[m].ravel(), line=dict(color=OUTLINE_COLOR, width=0.5)),
                customdata=s.weights[m].ravel(), hovertemplate=f"head {m}<br>A = %{{customdata:.3f}}<extra></extra>"),
                r, c)
        if s.box is not None:
            x0, y0, x1, y1 = s.box
            fig.add_trace(go.Scatter(x=[x0, x1, x1, x0, x0], y=[y0, y0, y1, y1, y0], mode="lines", showlegend=i == 0,
                                     name="followed query's box", legendgroup="box", line=dict(color="white", width=2)),
                          r, c)
        if s.reference is not None:
            ref = geometry.reference_to_image(s.reference)[0, :2]
            fig.add_trace(go.Scatter(x=[ref[0]], y=[ref[1]], mode="markers", name="reference point",
                                     legendgroup="ref", showlegend=i == 0, hoverinfo="skip",
                                     marker=dict(symbol="cross", size=12, color=REFERENCE_COLOR,
                                                 line=dict(color="black", width=1))), r, c)
        fig.update_xaxes(range=[rect[0], rect[2]], showticklabels=False, showgrid=False, zeroline=False, row=r, col=c)
        fig.update_yaxes(range=[rect[3], rect[1]], showticklabels=False, showgrid=False, zeroline=False, row=r, col=c)
    for i in range(1, rows * cols + 1):
        fig.layout[f"yaxis{'' if i == 1 else i}"].update(scaleanchor=f"x{'' if i == 1 else i}", scaleratio=1)
    fig.update_layout(height=330 * rows + 90, plot_bgcolor="white", margin=dict(l=10, r=10, t=110, b=10),
                      title=dict(text="How it learned: the same query / pixel at each training snapshot", x=0.01),
                      legend=dict(orientation="h", y=-0.02, yanchor="top"))
    return fig


def history_markdown(geometry, samplings) -> str:
    """One line per snapshot: step, images seen, AP, the largest weight, and the weighted mean
    distance (image px) of the points from the reference point."""
    lines = ["| snapshot | images seen | held-out AP | AP50 | largest weight | mean distance (px) |",
             "|---|---:|---:|---:|---:|---:|"]
    for s in samplings:
        sn = s.snapshot
        ap = "–" if sn.ap is None else f"{sn.ap:.3f}"
        ap50 = "–" if sn.ap50 is None else f"{sn.ap50:.3f}"
        dist = "–"
        if s.reference is not None:
            p = geometry.to_image(s.locations)  # (M, L, P, 2)
            ref = geometry.reference_to_image(s.reference)[0, :2]
            d = np.hypot(p[..., 0] - ref[0], p[..., 1] - ref[1])
            dist = f"{float((s.weights * d).sum() / s.weights.sum()):.1f}"
        lines.append(f"| {sn.label.split(' · ')[0]} | {sn.images_seen} | {ap} | {ap50} | {s.weights.max():.3f} | "
                     f"{dist} |")
    return "\n".join(lines)
