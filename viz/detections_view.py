"""All detections of an image at a glance: boxes, labels, scores, and the query behind each."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from . import fastplot as fp
from . import canvas
from .raster import Raster
from .selection import detection_queries
from .style import COLUMN_WIDTH, OUTLINE_COLOR, SELECTED_COLOR, head_color, new_figure, paper


def _dets(capture, threshold: float):
    det = capture.detections
    pairs = detection_queries(capture, threshold)
    idx = [i for i, _ in pairs]
    return det.boxes.numpy()[idx].astype(np.float64), det.scores.numpy()[idx], [det.label_names[i] for i in idx], \
        [q for _, q in pairs]


def detections_figure(capture, threshold: float = 0.5) -> go.Figure:
    """Plotly: one box per detection (best class per query) with hover on its centre."""
    boxes, scores, names, queries = _dets(capture, threshold)
    w, h = canvas.image_size(capture.image)
    data = [canvas.plotly_image(capture.image)]
    for i, (b, s, n, q) in enumerate(zip(boxes, scores, names, queries)):
        x0, y0, x1, y1 = b.tolist()
        col = head_color(i)
        data.append(fp.Scatter(x=[x0, x1, x1, x0, x0], y=[y0, y0, y1, y1, y0], mode="lines", name=f"{n} {s:.2f} (q{q})",
                               line=dict(color=col, width=2), meta="detection", legendgroup=str(q),
                               hovertemplate=f"{n} {s:.3f}<br>query {q}<br>({x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}) px<extra></extra>"))
    ax, ay = canvas.image_axis_layout(w, h)
    layout = canvas.base_layout(f"{len(boxes)} detections ≥ {threshold}", height=520)
    layout.update(xaxis=ax, yaxis=ay)
    return fp.Figure(data=data, layout=layout)


def detections_figure_mpl(capture, threshold: float = 0.5):
    import matplotlib.patheffects as pe

    boxes, scores, names, queries = _dets(capture, threshold)
    w, h = canvas.image_size(capture.image)
    with paper():
        fig = new_figure(COLUMN_WIDTH, COLUMN_WIDTH * h / w + 0.2)
        ax = fig.add_axes([0.01, 0.01, 0.98, 0.92])
        canvas.mpl_image(ax, capture.image)
        for i, (b, s, n) in enumerate(zip(boxes, scores, names)):
            x0, y0, x1, y1 = b.tolist()
            ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], lw=1.0, color=head_color(i),
                    path_effects=[pe.Stroke(linewidth=2.0, foreground=OUTLINE_COLOR), pe.Normal()])
            ax.text(x0, y0, f"{n} {s:.2f}", fontsize=5, color="white", va="bottom", clip_on=True,
                    bbox=dict(facecolor="black", edgecolor="none", pad=0.8, alpha=0.7))
        ax.set_title(f"{len(boxes)} detections ≥ {threshold}")
    return fig


def render_detections(capture, threshold: float = 0.5, scale: float | None = None,
                      selected: int | None = None) -> np.ndarray:
    """RGB: every detection >= threshold (best class per query) boxed and labelled;
    ``selected`` (a detection index, drawn even below the threshold) thick, on top."""
    det = capture.detections
    shown = [i for i, _ in detection_queries(capture, threshold)]
    r = Raster(capture.image, scale)
    for k, i in enumerate(shown):
        r.box(det.boxes[i].numpy(), color=head_color(k))
    labels = [(det.boxes[i].numpy(), f"{det.label_names[i]} {float(det.scores[i]):.2f}")
              for i in sorted(shown, key=lambda i: -float(det.scores[i])) if i != selected]
    if selected is not None:
        if not 0 <= selected < len(det):
            raise IndexError(f"detection {selected} does not exist; there are {len(det)}")
        b = det.boxes[selected].numpy()
        r.box(b, color=SELECTED_COLOR, width=4)
        labels.insert(0, (b, f"{det.label_names[selected]} {float(det.scores[selected]):.2f}"))
    # Labels last, best first, none over another: close boxes no longer stack unreadable labels.
    r.box_labels(labels)
    return r.array()
