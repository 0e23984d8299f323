"""Sampling points of one ``PointTable`` over the image, in plotly, matplotlib and raster.

Shared by the decoder query view, the encoder view and the layer x head grid: points
coloured by head (palette) or by weight (viridis over [min, max] of the drawn weights),
sized by weight; the reference point as a green cross (Figure 6 of the paper), a reference
box dashed, the query's box with its label.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ddetr.frames import box_cxcywh_to_xyxy

from . import fastplot as fp
from .raster import Raster
from .selection import HOVER_TEMPLATE, PointTable, Selection
from .style import (BOX_COLOR, MAX_DIAMETER, MIN_DIAMETER, OUTLINE_COLOR, REFERENCE_COLOR, WEIGHT_CMAP,
                    colormap_rgb, head_color, head_rgb, marker_diameter)

SAMPLING = "sampling"  # ``trace.meta`` of every sampling-point trace (tests and the explorer find them by it)


def weight_range(table: PointTable) -> tuple[float, float]:
    """(vmin, vmax) of the colour scale: exactly the range of the drawn weights."""
    if len(table) == 0:
        return 0.0, 1.0
    lo, hi = float(table.weight.min()), float(table.weight.max())
    # Equal weights (an untrained model: the softmax of a zero projection is uniform) would
    # give an empty colour range; widen it above, keeping vmin at the smallest weight.
    return (lo, hi) if hi > lo else (lo, lo + max(abs(lo) * 1e-3, 1e-6))


def diameters(table: PointTable, sel: Selection, scale: float = 1.0) -> np.ndarray:
    """(N,) marker diameters (display px); area proportional to weight / max weight."""
    if not sel.size_by_weight:
        return np.full(len(table), (MIN_DIAMETER + MAX_DIAMETER) / 2 * scale)
    return marker_diameter(table.weight) * scale


# ----------------------------------------------------------------------------- plotly

def plotly_points(table: PointTable, sel: Selection, xaxis: str = "x", yaxis: str = "y",
                  showlegend: bool = True, colorbar: bool = True, mask: np.ndarray | None = None,
                  vrange: tuple[float, float] | None = None) -> list[go.Scatter]:
    """Sampling-point traces (``meta == "sampling"``), in table order within each trace.

    color_by="head": one trace per head (click the legend to hide a head);
    color_by="weight": one trace, viridis over ``weight_range`` with a colour bar.
    ``mask`` (N,) bool restricts to some rows (e.g. one level's panel); ``vrange`` overrides
    the colour range (small multiples share one).
    """
    keep = np.ones(len(table), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    custom = table.customdata()
    size = diameters(table, sel)
    traces = []
    if sel.color_by == "weight":
        lo, hi = vrange or weight_range(table)
        idx = np.flatnonzero(keep)
        traces.append(fp.Scatter(
            x=table.image_px[idx, 0], y=table.image_px[idx, 1], mode="markers", name="sampling points",
            xaxis=xaxis, yaxis=yaxis, meta=SAMPLING, customdata=custom[idx], hovertemplate=HOVER_TEMPLATE,
            showlegend=False,
            marker=dict(color=table.weight[idx], colorscale=WEIGHT_CMAP.capitalize(), cmin=lo, cmax=hi, size=size[idx],
                        line=dict(color=OUTLINE_COLOR, width=0.5), opacity=0.9,
                        showscale=colorbar, colorbar=dict(title=dict(text="weight"), thickness=12, len=0.6)),
        ))
        return traces
    for m in np.unique(table.head):
        idx = np.flatnonzero(keep & (table.head == m))
        if idx.size == 0:
            continue
        traces.append(fp.Scatter(
            x=table.image_px[idx, 0], y=table.image_px[idx, 1], mode="markers", name=f"head {m}",
            legendgroup=f"head {m}", showlegend=showlegend, xaxis=xaxis, yaxis=yaxis, meta=SAMPLING,
            customdata=custom[idx], hovertemplate=HOVER_TEMPLATE,
            marker=dict(color=head_color(m), size=size[idx], line=dict(color=OUTLINE_COLOR, width=0.5), opacity=0.9),
        ))
    return traces


def plotly_context(table: PointTable, xaxis: str = "x", yaxis: str = "y", showlegend: bool = True,
                   label: bool = True) -> list[go.Scatter]:
    """Reference cross (and dashed reference box), and the query's box."""
    traces = []
    ref = table.reference_image_px
    if ref is not None and ref.shape[-1] == 4:
        x0, y0, x1, y1 = box_cxcywh_to_xyxy(ref).tolist()
        traces.append(fp.Scatter(x=[x0, x1, x1, x0, x0], y=[y0, y0, y1, y1, y0], mode="lines", name="reference box",
                                 line=dict(color=REFERENCE_COLOR, width=1.5, dash="dash"), xaxis=xaxis, yaxis=yaxis,
                                 hoverinfo="skip", showlegend=showlegend, legendgroup="reference"))
    if table.box_image_px is not None:
        x0, y0, x1, y1 = table.box_image_px.tolist()
        # the dark halo carries the legend entry: a white swatch would vanish on the white legend
        for col, wd, show in ((OUTLINE_COLOR, 4, showlegend), (BOX_COLOR, 2, False)):
            traces.append(fp.Scatter(x=[x0, x1, x1, x0, x0], y=[y0, y0, y1, y1, y0], mode="lines", name="box",
                                     line=dict(color=col, width=wd), xaxis=xaxis, yaxis=yaxis, showlegend=show,
                                     legendgroup="box", hoverinfo="skip"))
        if label and table.label is not None:
            traces.append(fp.Scatter(x=[x0], y=[y0], mode="text", text=[f" {table.label} {table.score:.2f}"],
                                     textposition="top right", textfont=dict(color="white", size=12),
                                     xaxis=xaxis, yaxis=yaxis, showlegend=False, hoverinfo="skip", legendgroup="box"))
    xy = table.reference_xy
    if xy is not None:
        traces.append(fp.Scatter(
            x=[xy[0]], y=[xy[1]], mode="markers", name="reference point", legendgroup="reference",
            xaxis=xaxis, yaxis=yaxis, showlegend=showlegend,
            marker=dict(symbol="cross", size=14, color=REFERENCE_COLOR, line=dict(color=OUTLINE_COLOR, width=1)),
            hovertemplate=f"reference point ({xy[0]:.1f}, {xy[1]:.1f}) image px<extra></extra>",
        ))
    return traces


# ----------------------------------------------------------------------------- matplotlib

def mpl_points(ax, table: PointTable, sel: Selection, mask: np.ndarray | None = None, size_scale: float = 1.0,
               vrange: tuple[float, float] | None = None):
    """Scatter the table on ``ax`` (heaviest on top); returns the PathCollection (for a
    colour bar when ``color_by == "weight"``)."""
    keep = np.ones(len(table), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(table.weight[idx], kind="stable")]
    d = diameters(table, sel) * size_scale * 0.5  # plotly px diameter -> matplotlib points (at 7 pt fonts)
    kw = dict(s=d[idx] ** 2, edgecolors=OUTLINE_COLOR, linewidths=0.3, zorder=3, alpha=0.95)
    if sel.color_by == "weight":
        lo, hi = vrange or weight_range(table)
        return ax.scatter(table.image_px[idx, 0], table.image_px[idx, 1], c=table.weight[idx], cmap=WEIGHT_CMAP,
                          vmin=lo, vmax=hi, **kw)
    return ax.scatter(table.image_px[idx, 0], table.image_px[idx, 1], c=[head_color(m) for m in table.head[idx]], **kw)


def extent(table: PointTable, w: float, h: float, pad: float = 0.03) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1): the image, grown to hold every point (with a margin), so that points
    sampled outside the image are seen where they are instead of clipped away."""
    pts = table.image_px[np.isfinite(table.image_px).all(1)]
    x0, y0 = min(0.0, pts[:, 0].min(initial=0.0)), min(0.0, pts[:, 1].min(initial=0.0))
    x1, y1 = max(float(w), pts[:, 0].max(initial=0.0)), max(float(h), pts[:, 1].max(initial=0.0))
    if (x0, y0, x1, y1) != (0.0, 0.0, float(w), float(h)):
        m = pad * max(x1 - x0, y1 - y0)
        x0, y0 = (x0 - m if x0 < 0 else x0), (y0 - m if y0 < 0 else y0)
        x1, y1 = (x1 + m if x1 > w else x1), (y1 + m if y1 > h else y1)
    return x0, x1, y0, y1


def mpl_context(ax, table: PointTable, label: bool = True, cross_size: float = 7.0) -> None:
    import matplotlib.patheffects as pe

    ref = table.reference_image_px
    if ref is not None and ref.shape[-1] == 4:
        x0, y0, x1, y1 = box_cxcywh_to_xyxy(ref).tolist()
        ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], ls="--", lw=0.8, color=REFERENCE_COLOR, zorder=2)
    if table.box_image_px is not None:
        x0, y0, x1, y1 = table.box_image_px.tolist()
        ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], lw=1.0, color=BOX_COLOR, zorder=2,
                path_effects=[pe.Stroke(linewidth=2.0, foreground=OUTLINE_COLOR), pe.Normal()])
        if label and table.label is not None:
            ax.text(x0, y0, f"{table.label} {table.score:.2f}", color="white", fontsize=6, va="bottom", ha="left",
                    bbox=dict(facecolor="black", edgecolor="none", pad=1.0, alpha=0.8), zorder=5, clip_on=True)
    xy = table.reference_xy
    if xy is not None:
        ax.plot([xy[0]], [xy[1]], marker="+", markersize=cross_size, mew=1.8, color=REFERENCE_COLOR, zorder=4,
                path_effects=[pe.Stroke(linewidth=3.0, foreground=OUTLINE_COLOR), pe.Normal()])


# ----------------------------------------------------------------------------- raster

def raster_points(r: Raster, table: PointTable, sel: Selection, mask: np.ndarray | None = None,
                  vrange: tuple[float, float] | None = None, size_scale: float | None = None) -> None:
    keep = np.ones(len(table), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    idx = np.flatnonzero(keep)
    order = idx[np.argsort(table.weight[idx], kind="stable")]
    if sel.color_by == "weight":
        lo, hi = vrange or weight_range(table)
        colors = colormap_rgb(table.weight, lo, hi)
    else:
        colors = head_rgb(table.head)
    scale = max(1.0, r.scale) ** 0.5 if size_scale is None else size_scale  # markers grow a little with the display
    r.points(table.image_px, colors, diameters(table, sel, scale), order=order)


def raster_context(r: Raster, table: PointTable, label: bool = True) -> None:
    ref = table.reference_image_px
    if ref is not None and ref.shape[-1] == 4:
        r.box(box_cxcywh_to_xyxy(ref), color=REFERENCE_COLOR, width=1, dashed=True)
    if table.box_image_px is not None:
        r.box(table.box_image_px, label=f"{table.label} {table.score:.2f}" if label and table.label else None)
    if table.reference_xy is not None:
        r.cross(table.reference_xy)


def read_cells(level_px, valid_wh) -> list[tuple[int, int, float]]:
    """The feature cells a bilinear sample at ``level_px`` (x, y; cell centres at i + 0.5, as
    grid_sample with align_corners=False) reads: up to four (column, row, bilinear weight),
    cells outside the valid map left out (they read zero padding)."""
    x, y = float(level_px[0]) - 0.5, float(level_px[1]) - 0.5
    if not (np.isfinite(x) and np.isfinite(y)):
        return []
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - x0, y - y0
    vw, vh = int(round(valid_wh[0])), int(round(valid_wh[1]))
    out = []
    for cx, cy, w in ((x0, y0, (1 - fx) * (1 - fy)), (x0 + 1, y0, fx * (1 - fy)),
                      (x0, y0 + 1, (1 - fx) * fy), (x0 + 1, y0 + 1, fx * fy)):
        if 0 <= cx < vw and 0 <= cy < vh:
            out.append((cx, cy, float(w)))
    return out


def raster_cells(r: Raster, capture, table: PointTable, row: int) -> None:
    """Ring point ``row`` of ``table`` and outline the (up to) four cells of its level that
    its bilinear sample reads, thicker for a larger bilinear weight."""
    from . import canvas

    lvl = int(table.level[row])
    xs, ys = canvas.level_grid_lines(capture.geometry, lvl)
    for cx, cy, w in read_cells(table.level_px[row], capture.geometry.valid_wh[lvl]):
        width = 1 + int(round(3 * w))
        r.box((xs[cx], ys[cy], xs[cx + 1], ys[cy + 1]), color="#FF00FF", width=width)
    x, y = r._xy(table.image_px[row])[0]
    d = float(np.max(diameters(table, Selection())[row: row + 1])) + 8
    r.draw.ellipse([x - d / 2, y - d / 2, x + d / 2, y + d / 2], outline=(255, 255, 255), width=2)
