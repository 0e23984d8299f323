"""Attention as mass on the image: every sampling point's weight splatted bilinearly onto the
feature cells the op reads, per level and summed over levels.

A point at level pixel (x, y) reads the four cells around it with the bilinear weights of
``grid_sample(align_corners=False)`` (cell centres at i + 0.5; cells outside the map read
zeros, so their share is lost), exactly what ``ops.ms_deform_attn`` multiplies the values by.
Splatting weight x bilinear weight onto those cells gives, per level, the mass the query put
on each feature cell; spreading each cell's mass uniformly over its footprint in the image
(``canvas.level_cells``) gives a density per image pixel whose sum is the mass that landed
on the image. Summed over levels it shows where, at any scale, the query looked.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from matplotlib.ticker import MaxNLocator

from . import fastplot as fp
from . import canvas
from .raster import Raster
from .selection import Selection, detection_queries, resolve_layer
from .style import HEAT_CMAP, TEXT_WIDTH, new_figure, paper, style_colorbar


def bilinear_corners(level_px: np.ndarray, W: int, H: int):
    """The four cells a sampling point reads. level_px (N, 2) x first, continuous level pixels.

    Returns ix, iy (N, 4) int64 cell indices (order: top-left, top-right, bottom-left,
    bottom-right), w (N, 4) bilinear weights summing to 1, inside (N, 4) bool (cells off the
    map read zeros in the op).
    """
    p = np.asarray(level_px, dtype=np.float64).reshape(-1, 2) - 0.5  # cell centres at integers
    x0, y0 = np.floor(p[:, 0]), np.floor(p[:, 1])
    fx, fy = p[:, 0] - x0, p[:, 1] - y0
    ix = np.stack([x0, x0 + 1, x0, x0 + 1], 1).astype(np.int64)
    iy = np.stack([y0, y0, y0 + 1, y0 + 1], 1).astype(np.int64)
    w = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1)
    finite = np.isfinite(p).all(1)[:, None]
    inside = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H) & finite
    return ix, iy, np.where(finite, w, 0.0), inside


def splat(level_px: np.ndarray, weights: np.ndarray, W: int, H: int) -> np.ndarray:
    """Sum of weight x bilinear weight per cell: level_px (N, 2), weights (N,) -> (H, W)."""
    ix, iy, w, inside = bilinear_corners(level_px, W, H)
    mass = (np.asarray(weights, dtype=np.float64)[:, None] * w)[inside]
    return np.bincount((iy * W + ix)[inside], weights=mass, minlength=W * H).reshape(H, W)


@dataclass
class AttentionMaps:
    """cells: per level (H_l, W_l) mass on each feature cell; density: (L, h0, w0) mass per
    image pixel per level (sums to the mass on the level's valid cells); total = density.sum(0); weight: the mass that was spent (sum of
    the splatted weights, including what fell off the maps or on padding)."""

    cells: list[np.ndarray]
    density: np.ndarray
    weight: float
    queries: list[int]
    layer: int

    @property
    def total(self) -> np.ndarray:
        return self.density.sum(0)


def attention_maps(capture, queries, layer: int = -1, heads=None, levels=None) -> AttentionMaps:
    """Maps of decoder ``queries`` (an index or a list) at ``layer``, summed over the queries
    and over ``heads`` (None: all); ``levels`` limits the levels (None: all)."""
    queries = [int(queries)] if np.ndim(queries) == 0 else [int(q) for q in queries]
    layer = resolve_layer(capture, "decoder", layer)
    g = capture.geometry
    qi = capture.arrays["dec/query_index"]
    rows = []
    for q in queries:
        pos = np.flatnonzero(qi == q)
        if pos.size == 0:
            raise KeyError(f"query {q} was not captured; capture with queries=None to keep all")
        rows.append(int(pos[0]))
    s = capture.sampling("decoder", layer, np.asarray(rows, dtype=np.int64))
    lp = g.to_level(s["locations"])  # (Q, M, L, P, 2) level pixels
    w = s["weights"].astype(np.float64)  # (Q, M, L, P)
    L = g.n_levels
    keep_h = np.ones(w.shape[1], bool) if heads is None else np.isin(np.arange(w.shape[1]), heads)
    keep_l = np.ones(L, bool) if levels is None else np.isin(np.arange(L), levels)
    h0, w0 = g.orig_size
    cells, density = [], np.zeros((L, h0, w0))
    for lvl in range(L):
        H, W = (int(v) for v in g.spatial_shapes[lvl])
        if not keep_l[lvl]:
            cells.append(np.zeros((H, W)))
            continue
        m = splat(lp[:, keep_h, lvl].reshape(-1, 2), w[:, keep_h, lvl].reshape(-1), W, H)
        cells.append(m)
        ix, iy = canvas.level_cells(g, lvl, w0, h0)
        cell = iy[:, None] * W + ix[None, :]  # (h0, w0) flat index of the cell holding each pixel
        # Each cell's mass spread evenly over the pixels it holds (7 or 8 of them when a cell
        # spans 7.85 px), so the density integrates exactly to the mass on the image.
        count = np.bincount(cell.ravel(), minlength=H * W)
        density[lvl] = m.ravel()[cell] / np.maximum(count[cell], 1)
    spent = float(w[:, keep_h][:, :, keep_l].sum())
    return AttentionMaps(cells, density, spent, queries, layer)


def _queries(capture, query, threshold: float) -> list[int]:
    if query is not None:
        return [int(query)]
    qs = [q for _, q in detection_queries(capture, threshold)]
    if not qs:
        raise ValueError(f"no detection scores at least {threshold}; lower the threshold")
    return qs


def _title(maps: AttentionMaps) -> str:
    who = f"query {maps.queries[0]}" if len(maps.queries) == 1 else f"{len(maps.queries)} detections"
    return f"attention mass, decoder layer {maps.layer}, {who}"


def heatmap_figure(capture, query: int | None = None, selection: Selection = Selection(), threshold: float = 0.5,
                   max_side: int = 200) -> go.Figure:
    """Plotly: the summed density, then one panel per level at the level's own resolution
    (hover: cell and mass). ``query=None`` sums over all detections scoring >= threshold."""
    maps = attention_maps(capture, _queries(capture, query, threshold), selection.layer, selection.heads, selection.levels)
    g = capture.geometry
    image = capture.image
    w, h = canvas.image_size(image)
    L = g.n_levels
    titles = ["all levels (mass / image px²)"] + [f"level {l} (mass / cell)" for l in range(L)]
    rows, cols = (1, L + 1) if L < 4 else (2, (L + 2) // 2)
    panel_layout, names = canvas.plotly_panels(rows, cols, w, h, titles)
    data = []
    total = maps.total
    f = max(1, int(np.ceil(max(h, w) / max_side)))  # block-average for a light figure
    hh, ww = h // f * f, w // f * f
    small = total[:hh, :ww].reshape(hh // f, f, ww // f, f).mean((1, 3))
    panels = [(small, (0, 0, ww, hh), "density %{z:.3g} / px²")]
    for lvl in range(L):
        vw, vh = np.round(g.valid_wh[lvl]).astype(int)
        panels.append((maps.cells[lvl][:vh, :vw], (0, 0, w, h), f"level {lvl} cell (%{{x:.0f}}, %{{y:.0f}}) px<br>mass %{{z:.4f}}"))
    for i, ((z, rect, hover), (xn, yn)) in enumerate(zip(panels, names)):
        data.append(canvas.plotly_image(image, xn, yn))
        zh, zw = z.shape
        dx, dy = (rect[2] - rect[0]) / zw, (rect[3] - rect[1]) / zh
        data.append(fp.Heatmap(z=z.astype(np.float32), x0=rect[0] + dx / 2, dx=dx, y0=rect[1] + dy / 2, dy=dy, xaxis=xn, yaxis=yn,
                               colorscale=HEAT_CMAP.capitalize(), zmin=0, zmax=float(z.max()) or 1.0, opacity=0.65,
                               hovertemplate=hover + "<extra></extra>", showscale=False, meta="heatmap"))
    layout = canvas.base_layout(_title(maps) + f" · {maps.weight:.2f} spent", height=330 * rows, legend=False)
    layout.update(panel_layout)
    return fp.Figure(data=data, layout=layout)


def heatmap_figure_mpl(capture, query: int | None = None, selection: Selection = Selection(), threshold: float = 0.5):
    """Matplotlib (paper): summed density and per-level panels in one row."""
    maps = attention_maps(capture, _queries(capture, query, threshold), selection.layer, selection.heads, selection.levels)
    g = capture.geometry
    image = capture.image
    w, h = canvas.image_size(image)
    L = g.n_levels
    with paper():
        fig = new_figure(TEXT_WIDTH, TEXT_WIDTH / (L + 1) * h / w + 0.45)
        axes = fig.subplots(1, L + 1, squeeze=False)[0]
        for i, ax in enumerate(axes):
            z = maps.total if i == 0 else maps.density[i - 1]
            canvas.mpl_image(ax, image)
            top = float(z.max()) or 1.0
            im = ax.imshow(z, extent=(0, w, h, 0), cmap=HEAT_CMAP, vmin=0, vmax=top, alpha=np.sqrt(z / top) * 0.8,
                           interpolation="nearest", zorder=1)
            ax.set_title("all levels" if i == 0 else f"level {i - 1} (stride {g.strides[i - 1]})")
            cb = fig.colorbar(im, ax=ax, orientation="horizontal", fraction=0.06, pad=0.03)
            style_colorbar(cb, "mass / px²")
            cb.ax.xaxis.set_major_formatter(cb.ax.yaxis.get_major_formatter())
            cb.ax.tick_params(labelsize=5)
            cb.ax.xaxis.set_major_locator(MaxNLocator(3))
        fig.suptitle(_title(maps), fontsize=7)
        fig.subplots_adjust(left=0.01, right=0.99, top=0.8, bottom=0.02, wspace=0.06)
    return fig


def render_heatmap(capture, query: int | None = None, selection: Selection = Selection(), level: int | None = None,
                   threshold: float = 0.5, scale: float | None = None) -> np.ndarray:
    """RGB heat overlay: the summed density (``level=None``) or one level's."""
    maps = attention_maps(capture, _queries(capture, query, threshold), selection.layer, selection.heads, selection.levels)
    r = Raster(capture.image, scale, dim=0.3)
    z = maps.total if level is None else maps.density[level]
    r.heat(z, HEAT_CMAP)
    return r.array()
