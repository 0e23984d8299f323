"""Layer x head small multiples for one query, as bertviz's head view does for text.

Rows are the captured decoder layers, columns the heads; every cell shows the same crop of
the image around the query (its box, references and all its points on every layer), so a
head's habit (how far it looks, in which direction, on which level) and its change with
depth read off at a glance. With ``color_by="weight"`` all cells share one colour range.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from . import fastplot as fp
from . import canvas
from .overlay import mpl_context, mpl_points, plotly_context, plotly_points, raster_context, raster_points, weight_range
from .raster import Raster, tile
from .selection import PointTable, Selection, decoder_table, resolve_layer
from .style import TEXT_WIDTH, new_figure, paper, style_colorbar

CELL_PICTURE = 160  # longest side (px) of the crop picture embedded per cell


def grid_tables(capture, query: int, selection: Selection = Selection(), layers=None) -> list[PointTable]:
    """One ``PointTable`` per layer (all heads; ``selection`` levels / points apply, its
    ``top_k`` is applied per cell by ``cell_mask``). ``layers`` defaults to every captured one."""
    if layers is None:
        layers = capture.decoder_layers
    layers = [resolve_layer(capture, "decoder", l) for l in layers]
    if not layers:
        raise KeyError("no decoder layer was captured; capture with decoder=True")
    sel = selection.with_(top_k=None)
    return [decoder_table(capture, query, sel.with_(layer=l)) for l in layers]


def cell_mask(table: PointTable, head: int, top_k: int | None) -> np.ndarray:
    """(N,) rows of ``head`` in ``table``, limited to its ``top_k`` heaviest points."""
    mask = table.head == head
    if top_k is not None and mask.sum() > top_k:
        idx = np.flatnonzero(mask)
        keep = idx[np.argsort(-table.weight[idx], kind="stable")[:top_k]]
        mask = np.zeros_like(mask)
        mask[keep] = True
    return mask


def crop_rect(tables: list[PointTable], w: int, h: int, pad: float = 0.12, min_side: float = 32.0):
    """(x0, y0, x1, y1) holding every point, reference and box of ``tables``, with a margin."""
    pts = [t.image_px for t in tables]
    for t in tables:
        if t.box_image_px is not None:
            pts.append(t.box_image_px.reshape(2, 2))
        if t.reference_xy is not None:
            pts.append(t.reference_xy[None])
    p = np.concatenate(pts)
    p = p[np.isfinite(p).all(1)]
    lo, hi = p.min(0), p.max(0)
    size = np.maximum(hi - lo, min_side)
    c = (lo + hi) / 2
    half = size * (0.5 + pad)
    return float(c[0] - half[0]), float(c[1] - half[1]), float(c[0] + half[0]), float(c[1] + half[1])


def _heads(selection: Selection, tables: list[PointTable]) -> list[int]:
    return list(selection.heads) if selection.heads is not None else list(range(tables[0].n_heads))


def _shared_range(tables, heads, top_k):
    w = np.concatenate([t.weight[cell_mask(t, m, top_k)] for t in tables for m in heads])
    lo, hi = float(w.min()), float(w.max())
    return (lo, hi) if hi > lo else weight_range(tables[0])


def grid_figure(capture, query: int, selection: Selection = Selection(color_by="weight"), layers=None) -> go.Figure:
    """Plotly small multiples: rows = layers, columns = heads; hover as in the query view."""
    tables = grid_tables(capture, query, selection, layers)
    heads = _heads(selection, tables)
    w, h = canvas.image_size(capture.image)
    rect = crop_rect(tables, w, h)
    pic, prect = canvas.crop(capture.image, rect, CELL_PICTURE)
    rows, cols = len(tables), len(heads)
    titles = [f"layer {t.layer} · head {m}" for t in tables for m in heads]
    panel_layout, names = canvas.plotly_panels(rows, cols, w, h, titles, gap=0.01, title_space=0.025)
    for k in [k for k in panel_layout if k.startswith(("xaxis", "yaxis"))]:
        ax = panel_layout[k]
        ax["range"] = [rect[0], rect[2]] if k.startswith("x") else [rect[3], rect[1]]
    for a in panel_layout["annotations"]:
        a["font"] = dict(size=9)
    vrange = _shared_range(tables, heads, selection.top_k) if selection.color_by == "weight" else None
    data = []
    first = True
    for r, t in enumerate(tables):
        for c, m in enumerate(heads):
            xn, yn = names[r * cols + c]
            data.append(canvas.plotly_image_at(pic, prect, xn, yn, cache_on=capture.image, key=("grid", query, rect)))
            data += plotly_points(t, selection, xn, yn, showlegend=first, colorbar=first,
                                  mask=cell_mask(t, m, selection.top_k), vrange=vrange)
            data += plotly_context(t, xn, yn, showlegend=first, label=False)
            first = False
    layout = canvas.base_layout(f"query {query}: layers x heads", height=max(150 * rows, 320))
    layout.update(panel_layout)
    return fp.Figure(data=data, layout=layout)


def grid_figure_mpl(capture, query: int, selection: Selection = Selection(color_by="weight"), layers=None):
    """Matplotlib (paper) small multiples, text width."""
    tables = grid_tables(capture, query, selection, layers)
    heads = _heads(selection, tables)
    w, h = canvas.image_size(capture.image)
    rect = crop_rect(tables, w, h)
    pic, prect = canvas.crop(capture.image, rect, 4 * CELL_PICTURE)
    rows, cols = len(tables), len(heads)
    vrange = _shared_range(tables, heads, selection.top_k) if selection.color_by == "weight" else None
    aspect = (rect[3] - rect[1]) / (rect[2] - rect[0])
    with paper():
        fig = new_figure(TEXT_WIDTH, TEXT_WIDTH / cols * aspect * rows + 0.35)
        axes = fig.subplots(rows, cols, squeeze=False)
        sc = None
        for r, t in enumerate(tables):
            for c, m in enumerate(heads):
                ax = axes[r, c]
                ax.imshow(pic, extent=(prect[0], prect[2], prect[3], prect[1]), interpolation="antialiased", zorder=0)
                sc = mpl_points(ax, t, selection, mask=cell_mask(t, m, selection.top_k), size_scale=0.6, vrange=vrange)
                mpl_context(ax, t, label=False, cross_size=5)
                ax.set_xlim(rect[0], rect[2])
                ax.set_ylim(rect[3], rect[1])
                ax.set_aspect("equal")
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_linewidth(0.3)
                if r == 0:
                    ax.set_title(f"head {m}", fontsize=6)
                if c == 0:
                    ax.set_ylabel(f"layer {t.layer}", fontsize=6)
        fig.subplots_adjust(left=0.03, right=0.92 if vrange else 0.99, top=0.93, bottom=0.01, wspace=0.03, hspace=0.03)
        if vrange is not None and sc is not None:
            style_colorbar(fig.colorbar(sc, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01), "attention weight")
    return fig


def render_grid(capture, query: int, selection: Selection = Selection(color_by="weight"), layers=None,
                cell: int = 120) -> np.ndarray:
    """RGB small multiples, each cell ``cell`` px on its longer side."""
    tables = grid_tables(capture, query, selection, layers)
    heads = _heads(selection, tables)
    w, h = canvas.image_size(capture.image)
    rect = crop_rect(tables, w, h)
    vrange = _shared_range(tables, heads, selection.top_k) if selection.color_by == "weight" else None
    scale = cell / max(rect[2] - rect[0], rect[3] - rect[1])
    pic, prect = canvas.crop(capture.image, rect)
    tiles = []
    for t in tables:
        for m in heads:
            r = Raster(pic, scale, origin=prect[:2])
            raster_points(r, t, selection, mask=cell_mask(t, m, selection.top_k), vrange=vrange, size_scale=0.8)
            raster_context(r, t, label=False)
            r.label(2, r.size[1] - 1, f"L{t.layer} H{m}")
            tiles.append(r.array())
    return tile(tiles, len(tables), len(heads), gap=2)
