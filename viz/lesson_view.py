"""Figures of the lesson (``viz.lesson``): six panels, plotly and matplotlib.

(a) the head's offsets as arrows from the reference point, in the image (colour = level,
    size = weight, the chosen point ringed); (b) the chosen point on its level's grid in level
    pixels, its four bilinear cells and their weights; (c) the softmax over L x K; (d) the
    cell coefficients of the weighted sum on the chosen level; (e) the largest coefficients
    over all levels; (f) dense vs deformable cost for this image (log scale).
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from matplotlib.patches import Rectangle
from plotly.subplots import make_subplots

from . import canvas
from .cost import human
from .lesson import Lesson, lesson
from .style import (HEAT_CMAP, OUTLINE_COLOR, REFERENCE_COLOR, SELECTED_COLOR, TEXT_WIDTH, level_color, marker_diameter,
                    new_figure, paper, style_colorbar)

TITLES = ("(a) head {m}: reference → sampling points (image px)", "(b) bilinear read, level {l} (level px)", "(c) softmax over L × K",
          "(d) coefficients on level {l}", "(e) largest coefficients", "(f) cost for this image")


def _crop_rect(ls: Lesson, pad: float = 0.15):
    p = np.concatenate([ls.image_px.reshape(-1, 2), ls.reference_image_px[None]])
    p = p[np.isfinite(p).all(1)]
    lo, hi = p.min(0), p.max(0)
    m = pad * max(hi[0] - lo[0], hi[1] - lo[1], 16.0)
    return float(lo[0] - m), float(lo[1] - m), float(hi[0] + m), float(hi[1] + m)


def _zoom_cells(ls: Lesson, r: int = 3):
    """(x0, x1, y0, y1) level-px window around the chosen point (and its reference if near)."""
    px, py = ls.level_px[ls.level, ls.point]
    return np.floor(px) - r, np.floor(px) + r + 1, np.floor(py) - r, np.floor(py) + r + 1


def _cells_window(cells: np.ndarray, margin: int = 2) -> tuple[int, int, int, int]:
    """(x0, x1, y0, y1) cell range around the non-zero coefficients (whole map if none)."""
    ys, xs = np.nonzero(cells)
    if xs.size == 0:
        return 0, cells.shape[1], 0, cells.shape[0]
    return (max(int(xs.min()) - margin, 0), min(int(xs.max()) + margin + 1, cells.shape[1]),
            max(int(ys.min()) - margin, 0), min(int(ys.max()) + margin + 1, cells.shape[0]))


def _titles(ls: Lesson) -> list[str]:
    return [t.format(m=ls.head, l=ls.level) for t in TITLES]


def lesson_figure(capture, query: int, layer: int = -1, head: int | None = None, level: int | None = None,
                  point: int | None = None) -> go.Figure:
    """Plotly lesson figure (2 x 3 panels)."""
    ls = lesson(capture, query, layer, head, level, point)
    L, P = ls.n_levels, ls.n_points
    fig = make_subplots(2, 3, subplot_titles=_titles(ls), horizontal_spacing=0.07, vertical_spacing=0.14)
    # (a)
    rect = _crop_rect(ls)
    pic, prect = canvas.crop(capture.image, rect, 300)
    fig.add_trace(canvas.plotly_image_at(pic, prect), 1, 1)
    rx, ry = ls.reference_image_px
    d = marker_diameter(ls.weights.ravel()).reshape(L, P)
    for l in range(L):
        xs, ys = [], []
        for k in range(P):
            xs += [rx, ls.image_px[l, k, 0], None]
            ys += [ry, ls.image_px[l, k, 1], None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=level_color(l), width=1), showlegend=False,
                                 hoverinfo="skip"), 1, 1)
        fig.add_trace(go.Scatter(
            x=ls.image_px[l, :, 0], y=ls.image_px[l, :, 1], mode="markers", name=f"level {l}", meta="lesson_points",
            marker=dict(color=level_color(l), size=d[l], line=dict(color=OUTLINE_COLOR, width=0.5)),
            customdata=np.column_stack([np.arange(P), ls.weights[l], ls.offsets_level_px[l], ls.level_px[l]]),
            hovertemplate=(f"level {l} point %{{customdata[0]:d}}<br>A = %{{customdata[1]:.4f}}<br>"
                           "offset (%{customdata[2]:.2f}, %{customdata[3]:.2f}) level px<br>"
                           "at (%{customdata[4]:.2f}, %{customdata[5]:.2f}) level px<extra></extra>")), 1, 1)
    cx, cy = ls.image_px[ls.level, ls.point]
    fig.add_trace(go.Scatter(x=[cx], y=[cy], mode="markers", name="chosen point", hoverinfo="skip",
                             marker=dict(symbol="circle-open", size=18, color=SELECTED_COLOR, line=dict(width=2.5))), 1, 1)
    fig.add_trace(go.Scatter(x=[rx], y=[ry], mode="markers", name="reference point", hoverinfo="skip",
                             marker=dict(symbol="cross", size=13, color=REFERENCE_COLOR, line=dict(color="black", width=1))), 1, 1)
    fig.update_xaxes(range=[rect[0], rect[2]], showticklabels=False, row=1, col=1)
    fig.update_yaxes(range=[rect[3], rect[1]], scaleanchor="x", showticklabels=False, row=1, col=1)
    # (b)
    x0, x1, y0, y1 = _zoom_cells(ls)
    gx, gy = canvas.grid_polyline(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1))
    fig.add_trace(go.Scatter(x=gx, y=gy, mode="lines", line=dict(color="#BBBBBB", width=1), hoverinfo="skip",
                             showlegend=False), 1, 2)
    for (ix, iy), wc, ins in zip(ls.corner_cells.tolist(), ls.corner_weights.tolist(), ls.corner_inside.tolist()):
        fig.add_trace(go.Scatter(x=[ix, ix + 1, ix + 1, ix, ix], y=[iy, iy, iy + 1, iy + 1, iy], fill="toself",
                                 fillcolor=f"rgba(230,159,0,{0.15 + 0.75 * wc:.3f})", line=dict(color=SELECTED_COLOR),
                                 mode="lines", showlegend=False, hoverinfo="skip"), 1, 2)
        fig.add_trace(go.Scatter(x=[ix + 0.5], y=[iy + 0.5], mode="text", text=[f"{wc:.3f}" + ("" if ins else " (0)")],
                                 showlegend=False, hovertemplate=f"cell ({ix}, {iy}) weight {wc:.4f}<extra></extra>"), 1, 2)
    lx, ly = ls.reference_level_px[ls.level]
    px, py = ls.level_px[ls.level, ls.point]
    fig.add_trace(go.Scatter(x=[lx, px], y=[ly, py], mode="lines+markers", showlegend=False, meta="lesson_location",
                             line=dict(color=level_color(ls.level)), marker=dict(size=[0, 9], color=level_color(ls.level)),
                             hovertemplate="(%{x:.2f}, %{y:.2f}) level px<extra></extra>"), 1, 2)
    fig.update_xaxes(range=[x0, x1], row=1, col=2)
    fig.update_yaxes(range=[y1, y0], scaleanchor="x2", row=1, col=2)
    # (c)
    labels = [f"L{l}·{k}" for l in range(L) for k in range(P)]
    colors = [level_color(l) for l in range(L) for _ in range(P)]
    line = [3 if (l, k) == (ls.level, ls.point) else 0 for l in range(L) for k in range(P)]
    fig.add_trace(go.Bar(x=labels, y=ls.weights.ravel(), marker=dict(color=colors, line=dict(width=line, color="black")),
                         showlegend=False, meta="softmax", hovertemplate="%{x}: A = %{y:.4f}<extra></extra>"), 1, 3)
    # (d)
    c = ls.cells[ls.level]
    fig.add_trace(go.Heatmap(z=c, x0=0.5, dx=1, y0=0.5, dy=1, colorscale=HEAT_CMAP.capitalize(), showscale=False,
                             hovertemplate="cell (%{x:.0f}, %{y:.0f}): %{z:.4f}<extra></extra>"), 2, 1)
    wx0, wx1, wy0, wy1 = _cells_window(c)
    fig.update_xaxes(range=[wx0, wx1], row=2, col=1)
    fig.update_yaxes(range=[wy1, wy0], scaleanchor="x4", row=2, col=1)
    # (e)
    top = ls.top_cells(10)[::-1]
    fig.add_trace(go.Bar(y=[f"L{a} ({b},{cc})" for a, b, cc, _ in top], x=[v for *_, v in top], orientation="h",
                         marker_color=[level_color(a) for a, *_ in top], showlegend=False,
                         hovertemplate="%{y}: %{x:.4f}<extra></extra>"), 2, 2)
    # (f)
    rows = ls.cost.rows()
    for j, (metric, idx) in enumerate((("query-key pairs", 2), ("multiply-adds", 3))):
        fig.add_trace(go.Bar(x=[f"{r[0].split()[0]} {r[1]}" for r in rows], y=[r[idx] for r in rows], name=metric,
                             marker_color=["#999999", "#0072B2"][j], meta="cost", text=[human(r[idx]) for r in rows],
                             textposition="outside"), 2, 3)
    fig.update_yaxes(type="log", row=2, col=3)
    fig.update_layout(title=dict(text=f"lesson: query {ls.query} ({ls.label} {ls.score:.2f}), layer {ls.layer}, "
                                      f"head {ls.head}, level {ls.level}, point {ls.point}", x=0.01),
                      height=760, plot_bgcolor="white", barmode="group", margin=dict(l=40, r=10, t=70, b=40),
                      legend=dict(orientation="h", y=-0.05))
    return fig


def lesson_figure_mpl(capture, query: int, layer: int = -1, head: int | None = None, level: int | None = None,
                      point: int | None = None):
    """Matplotlib (paper) lesson figure (2 x 3 panels, text width)."""
    ls = lesson(capture, query, layer, head, level, point)
    L, P = ls.n_levels, ls.n_points
    titles = _titles(ls)
    with paper():
        fig = new_figure(TEXT_WIDTH, TEXT_WIDTH * 0.62)
        axes = fig.subplots(2, 3).ravel()
        a, b, c, d, e, f = axes
        rect = _crop_rect(ls)
        pic, prect = canvas.crop(capture.image, rect)
        a.imshow(pic, extent=(prect[0], prect[2], prect[3], prect[1]), interpolation="antialiased")
        rx, ry = ls.reference_image_px
        size = (marker_diameter(ls.weights.ravel()) * 0.5) ** 2
        for l in range(L):
            for k in range(P):
                a.annotate("", ls.image_px[l, k], (rx, ry), arrowprops=dict(arrowstyle="-|>", lw=0.5, color=level_color(l),
                                                                           shrinkA=0, shrinkB=2, mutation_scale=5))
            a.scatter(ls.image_px[l, :, 0], ls.image_px[l, :, 1], s=size.reshape(L, P)[l], color=level_color(l),
                      edgecolors="black", linewidths=0.3, zorder=3, label=f"level {l}")
        a.scatter(*ls.image_px[ls.level, ls.point], s=90, facecolors="none", edgecolors=SELECTED_COLOR, linewidths=1.2, zorder=4)
        a.plot(rx, ry, marker="+", ms=7, mew=1.6, color=REFERENCE_COLOR, zorder=5)
        a.set_xlim(rect[0], rect[2])
        a.set_ylim(rect[3], rect[1])
        a.set_aspect("equal")
        a.set_xticks([])
        a.set_yticks([])
        a.legend(fontsize=5, loc="lower right", handletextpad=0.1)
        x0, x1, y0, y1 = _zoom_cells(ls)
        b.vlines(np.arange(x0, x1 + 1), y0, y1, colors="#BBBBBB", lw=0.4)
        b.hlines(np.arange(y0, y1 + 1), x0, x1, colors="#BBBBBB", lw=0.4)
        for (ix, iy), wc, ins in zip(ls.corner_cells.tolist(), ls.corner_weights.tolist(), ls.corner_inside.tolist()):
            b.add_patch(Rectangle(
                (ix, iy), 1, 1, facecolor=SELECTED_COLOR, alpha=0.15 + 0.75 * wc, edgecolor=SELECTED_COLOR, lw=0.6))
            b.text(ix + 0.5, iy + 0.5, f"{wc:.3f}" + ("" if ins else "\n(off)"), ha="center", va="center", fontsize=5.5)
        lx, ly = ls.reference_level_px[ls.level]
        px, py = ls.level_px[ls.level, ls.point]
        b.annotate("", (px, py), (lx, ly), arrowprops=dict(arrowstyle="-|>", lw=0.8, color=level_color(ls.level)))
        b.plot(px, py, "o", ms=3, color=level_color(ls.level))
        b.plot(lx, ly, marker="+", ms=6, mew=1.4, color=REFERENCE_COLOR)
        b.set_xlim(x0, x1)
        b.set_ylim(y1, y0)
        b.set_aspect("equal")
        c.bar(np.arange(L * P), ls.weights.ravel(), color=[level_color(l) for l in range(L) for _ in range(P)],
              edgecolor=["black" if (l, k) == (ls.level, ls.point) else "none" for l in range(L) for k in range(P)], lw=0.8)
        c.set_xticks([l * P + (P - 1) / 2 for l in range(L)], [f"level {l}" for l in range(L)])
        c.set_ylabel("A (sums to 1)")
        cells = ls.cells[ls.level]
        im = d.imshow(cells, cmap=HEAT_CMAP, extent=(0, cells.shape[1], cells.shape[0], 0), interpolation="nearest")
        wx0, wx1, wy0, wy1 = _cells_window(cells)
        d.set_xlim(wx0, wx1)
        d.set_ylim(wy1, wy0)
        d.set_xlabel("cell x")
        d.set_ylabel("cell y")
        style_colorbar(fig.colorbar(im, ax=d, fraction=0.04, pad=0.02), "")
        top = ls.top_cells(10)[::-1]
        e.barh(np.arange(len(top)), [v for *_, v in top], color=[level_color(t[0]) for t in top])
        e.set_yticks(np.arange(len(top)), [f"L{t[0]} ({t[1]},{t[2]})" for t in top], fontsize=5)
        e.set_xlabel("coefficient")
        rows = ls.cost.rows()
        xs = np.arange(len(rows))
        f.bar(xs - 0.2, [r[2] for r in rows], 0.4, color="#999999", label="query-key pairs")
        f.bar(xs + 0.2, [r[3] for r in rows], 0.4, color="#0072B2", label="multiply-adds")
        f.set_yscale("log")
        f.set_xticks(xs, [f"{r[0].split()[0]}\n{r[1]}" for r in rows], fontsize=5)
        f.legend(fontsize=5)
        for ax, t in zip(axes, titles):
            ax.set_title(t, fontsize=6.5)
        fig.suptitle(f"query {ls.query} ({ls.label} {ls.score:.2f}), decoder layer {ls.layer}, head {ls.head}", fontsize=7)
        fig.subplots_adjust(hspace=0.45, wspace=0.35, left=0.05, right=0.98, top=0.9, bottom=0.08)
    return fig
