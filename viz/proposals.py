"""Two-stage Deformable DETR (sec. 4.1): every encoder token proposes a box with a score; the
top-Q tokens become the decoder's queries (their boxes the first reference boxes).

Shows the proposal score of every token (a dot at its box centre, coloured by score), the
top proposals as boxes, which tokens became queries (ringed), and, for the detections, the
proposal each one started from. A second panel plots score against rank with the cut at Q.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from . import fastplot as fp
from . import canvas
from .raster import Raster
from .selection import detection_queries
from .style import (BOX_COLOR, COLUMN_WIDTH, OUTLINE_COLOR, PROPOSAL_COLOR, SELECTED_COLOR, WEIGHT_CMAP,
                    colormap_rgb, new_figure, paper, style_colorbar)


@dataclass
class Proposals:
    """All Lv encoder proposals of one image.

    boxes (Lv, 4) xyxy image px; scores (Lv,); valid (Lv,) bool; token_level (Lv,) int;
    selected (Q,) the tokens that became queries, query q <- token selected[q]; order (Lv,)
    token indices by descending score (valid ones first).
    """

    boxes: np.ndarray
    scores: np.ndarray
    valid: np.ndarray
    token_level: np.ndarray
    selected: np.ndarray
    order: np.ndarray


def proposals(capture) -> Proposals:
    """Read the two-stage arrays of a capture (adapter: ``Capture`` has no accessor for them)."""
    a = capture.arrays
    if "proposals/boxes" not in a:
        raise KeyError(f"this capture has no two-stage proposals (variant {capture.meta['variant']!r}); "
                       "they exist only for two-stage models (preset 'multi_scale_two_stage' or 'small')")
    g = capture.geometry
    boxes = g.box_to_image(a["proposals/boxes"].astype(np.float64))
    scores = a["proposals/scores"].astype(np.float64)
    valid = a["proposals/valid"].astype(bool)
    lvl = np.searchsorted(g.level_start_index, np.arange(len(scores)), side="right") - 1
    order = np.lexsort((-scores, ~valid))  # valid first, then by descending score
    return Proposals(boxes, scores, valid, lvl.astype(np.int64), a["proposals/index"].astype(np.int64), order)


def _hover(p: Proposals, tokens: np.ndarray, query_of: dict[int, int]) -> list[str]:
    out = []
    for t in tokens.tolist():
        q = query_of.get(t)
        b = p.boxes[t]
        out.append(f"token {t} (level {p.token_level[t]})<br>score {p.scores[t]:.4f}<br>"
                   f"box ({b[0]:.0f}, {b[1]:.0f}, {b[2]:.0f}, {b[3]:.0f}) px<br>"
                   + (f"became query {q}" if q is not None else "not selected"))
    return out


def proposals_figure(capture, top: int = 20, threshold: float = 0.5) -> go.Figure:
    """Plotly: proposal centres coloured by score, the ``top`` boxes, selected tokens ringed,
    detections (>= threshold) linked from their proposal box (dashed) to their final box."""
    p = proposals(capture)
    w, h = canvas.image_size(capture.image)
    query_of = {int(t): q for q, t in enumerate(p.selected.tolist())}
    valid = np.flatnonzero(p.valid)
    centres = (p.boxes[:, :2] + p.boxes[:, 2:]) / 2
    lo, hi = float(p.scores[valid].min()), float(p.scores[valid].max())
    layout, names = canvas.plotly_panels(1, 2, w, h, ["proposals (dots: every token, coloured by score)", "score by rank"])
    # second panel is a plain chart, not an image
    layout["xaxis2"].update(range=None, showticklabels=True, ticks="outside", title=dict(text="rank"), type="log", dtick=1,
                            showgrid=True, autorange=True)
    layout["yaxis2"].update(range=None, showticklabels=True, ticks="outside", title=dict(text="score"), scaleanchor=None,
                            autorange=True, showgrid=True)
    data = [canvas.plotly_image(capture.image),
            fp.Scatter(x=centres[valid, 0], y=centres[valid, 1], mode="markers", name="proposal score",
                       marker=dict(size=4, color=p.scores[valid], colorscale=WEIGHT_CMAP.capitalize(), cmin=lo, cmax=hi,
                                   showscale=True, colorbar=dict(title=dict(text="score"), thickness=10, len=0.5, x=0.63, xanchor="left")),
                       # numbers + a template, not one string per token: thousands of tokens' hover
                       # texts were most of the figure (180 KiB of 550 for a 276x312 scene)
                       customdata=np.column_stack([valid, p.token_level[valid], p.scores[valid],
                                                   p.boxes[valid]]).astype(np.float32),
                       hovertemplate=("token %{customdata[0]:.0f} (level %{customdata[1]:.0f})<br>score "
                                      "%{customdata[2]:.4f}<br>box (%{customdata[3]:.0f}, %{customdata[4]:.0f}, "
                                      "%{customdata[5]:.0f}, %{customdata[6]:.0f}) px<extra></extra>"),
                       meta="proposal_centres")]
    sel = p.selected
    data.append(fp.Scatter(x=centres[sel, 0], y=centres[sel, 1], mode="markers", name="became a query",
                           marker=dict(size=9, symbol="circle-open", color=SELECTED_COLOR, line=dict(width=1.5)),
                           hovertext=_hover(p, sel, query_of), hoverinfo="text", meta="selected"))
    bx, by = canvas.box_polyline(p.boxes[p.order[:top]])
    data.append(fp.Scatter(x=bx, y=by, mode="lines", name=f"top {top} proposals", hoverinfo="skip",
                           line=dict(color=PROPOSAL_COLOR, width=1)))
    dets = capture.detections
    det_q = [(i, q) for i, q in detection_queries(capture, threshold)]
    if det_q:
        start = p.boxes[[sel[q] for _, q in det_q]]
        sx, sy = canvas.box_polyline(start)
        data.append(fp.Scatter(x=sx, y=sy, mode="lines", name="their proposals", hoverinfo="skip",
                               line=dict(color=SELECTED_COLOR, width=1.5, dash="dash")))
        fx, fy = canvas.box_polyline(dets.boxes.numpy()[[i for i, _ in det_q]])
        data.append(fp.Scatter(x=fx, y=fy, mode="lines", name=f"detections ≥ {threshold}", hoverinfo="skip",
                               line=dict(color=BOX_COLOR, width=2)))
    ranked = p.scores[p.order[: len(valid)]]
    data.append(fp.Scatter(x=np.arange(1, len(ranked) + 1), y=ranked, mode="lines", name="score by rank",
                           xaxis="x2", yaxis="y2", line=dict(color=PROPOSAL_COLOR), showlegend=False))
    Q = len(sel)
    data.append(fp.Scatter(x=[Q, Q], y=[float(ranked.min()), float(ranked.max())], mode="lines", xaxis="x2", yaxis="y2",
                           line=dict(color=SELECTED_COLOR, dash="dash"), name=f"Q = {Q} queries", showlegend=False,
                           hovertemplate=f"the top {Q} tokens become queries<extra></extra>"))
    layout["xaxis"]["domain"] = [0.0, 0.62]
    layout["xaxis2"]["domain"] = [0.80, 1.0]  # right of the colour bar and the y axis labels
    base = canvas.base_layout(f"two-stage proposals: {int(p.valid.sum())} valid of {len(p.scores)} tokens, top {Q} became queries",
                              height=480)
    base.update(layout)
    return fp.Figure(data=data, layout=base)


def proposals_figure_mpl(capture, top: int = 20, threshold: float = 0.5):
    """Matplotlib (paper): proposals over the image and score by rank."""
    p = proposals(capture)
    w, h = canvas.image_size(capture.image)
    valid = np.flatnonzero(p.valid)
    centres = (p.boxes[:, :2] + p.boxes[:, 2:]) / 2
    sel = p.selected
    with paper():
        fig = new_figure(2 * COLUMN_WIDTH, COLUMN_WIDTH * h / w + 0.4)
        ax = fig.add_axes([0.01, 0.05, 0.58, 0.85])
        ax2 = fig.add_axes([0.77, 0.18, 0.21, 0.68])
        canvas.mpl_image(ax, capture.image)
        sc = ax.scatter(centres[valid, 0], centres[valid, 1], c=p.scores[valid], cmap=WEIGHT_CMAP, s=1.5, linewidths=0, zorder=2)
        ax.scatter(centres[sel, 0], centres[sel, 1], s=10, facecolors="none", edgecolors=SELECTED_COLOR, linewidths=0.6, zorder=3)
        for b in p.boxes[p.order[:top]]:
            ax.plot([b[0], b[2], b[2], b[0], b[0]], [b[1], b[1], b[3], b[3], b[1]], lw=0.4, color=PROPOSAL_COLOR, zorder=2)
        for i, q in detection_queries(capture, threshold):
            b = capture.detections.boxes[i].numpy()
            ax.plot([b[0], b[2], b[2], b[0], b[0]], [b[1], b[1], b[3], b[3], b[1]], lw=1.0, color=BOX_COLOR, zorder=4)
            s = p.boxes[sel[q]]
            ax.plot([s[0], s[2], s[2], s[0], s[0]], [s[1], s[1], s[3], s[3], s[1]], lw=0.7, ls="--", color=SELECTED_COLOR, zorder=4)
        style_colorbar(fig.colorbar(sc, ax=ax, fraction=0.035, pad=0.01), "proposal score")
        ranked = p.scores[p.order[: len(valid)]]
        ax2.semilogx(np.arange(1, len(ranked) + 1), ranked, color=PROPOSAL_COLOR, lw=0.8)
        ax2.axvline(len(sel), color=SELECTED_COLOR, ls="--", lw=0.8)
        ax2.text(len(sel), float(ranked.max()), f" Q={len(sel)}", fontsize=6, va="top", color=OUTLINE_COLOR)
        ax2.set_xlabel("rank")
        ax2.set_ylabel("score")
        ax.set_title(f"two-stage proposals (top {top} boxes; ringed: became queries)")
    return fig


def render_proposals(capture, top: int = 20, threshold: float = 0.5, scale: float | None = None) -> np.ndarray:
    """RGB: proposal centres coloured by score, top boxes, selected tokens, detections."""
    p = proposals(capture)
    r = Raster(capture.image, scale, dim=0.25)
    valid = np.flatnonzero(p.valid)
    centres = (p.boxes[:, :2] + p.boxes[:, 2:]) / 2
    lo, hi = float(p.scores[valid].min()), float(p.scores[valid].max())
    r.points(centres[valid], colormap_rgb(p.scores[valid], lo, hi), 4.0, outline=None,
             order=np.argsort(p.scores[valid]))
    for b in p.boxes[p.order[:top]]:
        r.box(b, color=PROPOSAL_COLOR, width=1)
    for i, q in detection_queries(capture, threshold):
        r.box(p.boxes[p.selected[q]], color=SELECTED_COLOR, width=1, dashed=True)
        r.box(capture.detections.boxes[i].numpy(), color=BOX_COLOR, width=2)
    return r.array()
