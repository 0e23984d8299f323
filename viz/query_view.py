"""Where one query samples: the paper's Figure 6 for any detection, and the same across scales.

``merged`` (the paper's picture): every level's points in one image. Across scales: one panel
per level, the image shown at that level's resolution (each feature cell filled with the
mean colour of the pixels it covers) under the cell grid, with the points that level sampled.
Each view comes as a plotly figure (browser, with hover), a matplotlib figure (files) and an
RGB array (the explorer's clickable image). The same functions draw encoder tokens
(``viz.encoder_view``): they take a ``PointTable``.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from . import fastplot as fp
from . import canvas
from .overlay import extent, mpl_context, mpl_points, plotly_context, plotly_points, raster_context, raster_points
from .raster import Panel, Raster, display_scale, tile
from .selection import PointTable, Selection, decoder_table
from .style import COLUMN_WIDTH, TEXT_WIDTH, new_figure, paper, style_colorbar

# ----------------------------------------------------------------------------- shared


def level_title(capture, level: int) -> str:
    g = capture.geometry
    vw, vh = np.round(g.valid_wh[level]).astype(int)
    return f"level {level}: {vw}x{vh} cells, stride {g.strides[level]}"


def _panel_levels(table: PointTable, sel: Selection) -> list[int]:
    return list(sel.levels) if sel.levels is not None else list(range(table.n_levels))


def _grid_shape(n: int) -> tuple[int, int]:
    cols = max(1, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols


def table_figure(capture, table: PointTable, sel: Selection, title: str | None = None,
                 height: int | None = None) -> go.Figure:
    """Plotly figure of ``table`` over the capture's image: merged, or one panel per level."""
    image = capture.image
    w, h = canvas.image_size(image)
    title = title or table.title
    if sel.merged:
        x0, x1, y0, y1 = extent(table, w, h)
        ax, ay = canvas.image_axis_layout(w, h)
        ax["range"], ay["range"] = [x0, x1], [y1, y0]
        layout = canvas.base_layout(title, height=height or 560)
        layout.update(xaxis=ax, yaxis=ay, plot_bgcolor="#DDDDDD")
        data = [canvas.plotly_image(image), *plotly_points(table, sel), *plotly_context(table)]
        return fp.Figure(data=data, layout=layout)
    levels = _panel_levels(table, sel)
    rows, cols = _grid_shape(len(levels))
    panel_layout, names = canvas.plotly_panels(rows, cols, w, h, [level_title(capture, l) for l in levels])
    layout = canvas.base_layout(title, height=height or 380 * rows)
    layout.update(panel_layout)
    data = []
    for i, (lvl, (xn, yn)) in enumerate(zip(levels, names)):
        data.append(canvas.plotly_image_at(canvas.level_picture(image, capture.geometry, lvl), (0, 0, w, h), xn, yn,
                                           cache_on=image, key=("level", lvl)))
        gx, gy = canvas.grid_polyline(*canvas.level_grid_lines(capture.geometry, lvl))
        data.append(fp.Scatter(x=gx, y=gy, mode="lines", xaxis=xn, yaxis=yn, hoverinfo="skip", showlegend=False,
                               line=dict(color="rgba(255,255,255,0.35)", width=0.7), name=f"level {lvl} grid"))
        data += plotly_points(table, sel, xn, yn, showlegend=i == 0, colorbar=i == 0, mask=table.level == lvl)
        data += plotly_context(table, xn, yn, showlegend=i == 0, label=False)
    return fp.Figure(data=data, layout=layout)


def table_figure_mpl(capture, table: PointTable, sel: Selection, title: str | None = None, colorbar: bool = True):
    """Matplotlib (paper) figure of ``table``: merged, or one panel per level."""
    image = capture.image
    w, h = canvas.image_size(image)
    title = title if title is not None else table.title
    with paper():
        if sel.merged:
            fig = new_figure(COLUMN_WIDTH, COLUMN_WIDTH * h / w + 0.3)
            ax = fig.add_axes([0.02, 0.02, 0.84 if sel.color_by == "weight" and colorbar else 0.96, 0.9])
            canvas.mpl_image(ax, image)
            x0, x1, y0, y1 = extent(table, w, h)
            ax.set_xlim(x0, x1)
            ax.set_ylim(y1, y0)
            ax.set_facecolor("#DDDDDD")
            sc = mpl_points(ax, table, sel)
            mpl_context(ax, table)
            ax.set_title(title)
            axes = [ax]
        else:
            levels = _panel_levels(table, sel)
            rows, cols = _grid_shape(len(levels))
            fig = new_figure(TEXT_WIDTH * cols / 2 if cols < 2 else TEXT_WIDTH, TEXT_WIDTH / cols * h / w * rows + 0.4)
            axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
            for ax, lvl in zip(axes, levels):
                canvas.mpl_image(ax, canvas.level_picture(image, capture.geometry, lvl), extent_of=image)
                xs, ys = canvas.level_grid_lines(capture.geometry, lvl)
                ax.vlines(xs, ys[0], ys[-1], colors="white", linewidths=0.25, alpha=0.4, zorder=1)
                ax.hlines(ys, xs[0], xs[-1], colors="white", linewidths=0.25, alpha=0.4, zorder=1)
                sc = mpl_points(ax, table, sel, mask=table.level == lvl)
                mpl_context(ax, table, label=False)
                ax.set_title(level_title(capture, lvl))
            for ax in axes[len(levels):]:
                ax.set_visible(False)
            fig.suptitle(title, fontsize=8)
            fig.subplots_adjust(left=0.01, right=0.9 if sel.color_by == "weight" else 0.99, top=0.9, bottom=0.01,
                                wspace=0.04, hspace=0.12)
        if sel.color_by == "weight" and colorbar:
            cb = fig.colorbar(sc, ax=axes, fraction=0.04, pad=0.02)
            style_colorbar(cb, "attention weight")
        else:
            _head_legend(fig, table)
    return fig


def _head_legend(fig, table: PointTable) -> None:
    from matplotlib.lines import Line2D

    from .style import head_color

    heads = np.unique(table.head)
    handles = [Line2D([], [], ls="", marker="o", markersize=4, markerfacecolor=head_color(m),
                      markeredgecolor="black", markeredgewidth=0.3, label=f"head {m}") for m in heads]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(heads), 4 if fig.get_figwidth() < 5 else 8),
               fontsize=5.5, handletextpad=0.1, columnspacing=0.6, bbox_to_anchor=(0.5, 0.0))


def table_raster(capture, table: PointTable, sel: Selection, scale: float | None = None) -> np.ndarray:
    """RGB array of ``table``: merged, or the level panels tiled in a grid."""
    image = capture.image
    if sel.merged:
        r = Raster(image, scale)
        raster_points(r, table, sel)
        raster_context(r, table)
        return r.array()
    levels = _panel_levels(table, sel)
    rows, cols = _grid_shape(len(levels))
    # Tiles share the display width of one merged picture.
    tile_scale = (display_scale(image.shape) if scale is None else scale) / cols
    tiles = []
    for lvl in levels:
        pic = canvas.level_picture(image, capture.geometry, lvl)
        r = Raster(image, tile_scale, picture=pic)
        r.grid(*canvas.level_grid_lines(capture.geometry, lvl))
        raster_points(r, table, sel, mask=table.level == lvl)
        raster_context(r, table, label=False)
        r.label(4, r.size[1] - 2, level_title(capture, lvl))
        tiles.append(r.array())
    return tile(tiles, rows, cols)


def level_image(image: np.ndarray, geometry, level: int) -> np.ndarray:
    """``canvas.level_picture`` at the image's own size: every pixel shows the colour of the
    level-``level`` cell that holds it (h, w, 3), so it crops and zooms like the image."""
    key = ("level_image", level, geometry.spatial_shapes.tobytes(), geometry.valid_ratios.tobytes())
    cache = canvas.image_cache(image)
    if key not in cache:
        w, h = canvas.image_size(image)
        ix, iy = canvas.level_cells(geometry, level, w, h)
        cache[key] = canvas.level_picture(image, geometry, level)[iy[:, None], ix[None, :]]
    return cache[key]


def attention_raster(capture, table: PointTable, sel: Selection, panels: list[Panel],
                     picked: int | None = None) -> np.ndarray:
    """RGB picture of ``table`` laid out as ``panels`` (``viz.raster.panel_layout``): the image
    with every level's points (level None), or one panel per level over that level's cells.
    ``picked``: a row of ``table`` to ring, with the four feature cells its bilinear sample reads."""
    from .overlay import raster_cells

    image = capture.image
    W = max(p.left + p.width for p in panels)
    H = max(p.top + p.height for p in panels)
    out = np.full((H, W, 3), 255, dtype=np.uint8)
    font = max(11.0, min(W, H) / 40.0)
    for p in panels:
        rect = (p.origin[0], p.origin[1], p.origin[0] + p.width / p.scale, p.origin[1] + p.height / p.scale)
        crop, _ = canvas.crop(image, rect)
        mask = None if p.level is None else table.level == p.level
        if p.level is None:
            r = Raster(crop, p.scale, origin=p.origin, size=(p.width, p.height), font_px=font)
        else:
            pic, _ = canvas.crop(level_image(image, capture.geometry, p.level), rect)
            r = Raster(crop, p.scale, origin=p.origin, picture=pic, size=(p.width, p.height), font_px=font)
            r.grid(*canvas.level_grid_lines(capture.geometry, p.level))
        raster_points(r, table, sel, mask=mask)
        raster_context(r, table, label=False)
        if picked is not None and (p.level is None or table.level[picked] == p.level):
            raster_cells(r, capture, table, picked)
        if p.level is not None:
            r.label(4, p.height - 2, level_title(capture, p.level))
        out[p.top:p.top + p.height, p.left:p.left + p.width] = r.array()
    return out


# ----------------------------------------------------------------------------- decoder query


def query_figure(capture, query: int, selection: Selection = Selection(), title: str | None = None) -> go.Figure:
    """Plotly view of decoder ``query``: box, label, reference (cross / dashed box) and the
    sampling points of ``selection.layer``; hover shows every coordinate of a point."""
    return table_figure(capture, decoder_table(capture, query, selection), selection, title)


def query_figure_mpl(capture, query: int, selection: Selection = Selection(), title: str | None = None):
    """Matplotlib (paper) version of ``query_figure``."""
    return table_figure_mpl(capture, decoder_table(capture, query, selection), selection, title)


def render_query_overlay(capture, query: int, selection: Selection = Selection(), scale: float | None = None) -> np.ndarray:
    """RGB (H, W, 3) uint8 of ``query_figure`` for a clickable image; display pixel =
    ``scale`` x image pixel (default ``viz.raster.display_scale``)."""
    return table_raster(capture, decoder_table(capture, query, selection), selection, scale)
