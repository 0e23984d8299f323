"""Plotly figures of the lesson's steps, one function per step, drawn from a ``Focus``.

Animated steps carry plotly frames (``layout.meta["animate"] = True``): the sampling points
fly out from the reference point (heads, offsets), the attention weights grow from zero
(weights). A Play button replays them; the page starts them when a step opens. Every
sampling-point trace has ``meta="points"`` and customdata (head, level, point, weight), so
a page can tell which point a click hit.

Frames: image panels are in original-image pixels, level panels in level pixels (cells of
that level's map, edges at integers), as ``ddetr.frames`` defines them.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import canvas
from .cost import human, image_cost
from .learn_focus import Focus
from .style import OUTLINE_COLOR, REFERENCE_COLOR, SELECTED_COLOR, head_color, level_color, marker_diameter

N_FRAMES = 8  # animation frames from start to end
FRAME_MS = 70
HEIGHT = 520


def _layout(fig: go.Figure, title: str, animate: bool = False, height: int = HEIGHT) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01, font=dict(size=15)), height=height, plot_bgcolor="white",
                      paper_bgcolor="white", margin=dict(l=10, r=10, t=60, b=10), hovermode="closest",
                      legend=dict(orientation="h", y=-0.02, yanchor="top"), meta={"animate": animate})
    if animate:
        fig.update_layout(updatemenus=[dict(
            type="buttons", showactive=False, x=1.0, y=1.08, xanchor="right", yanchor="bottom",
            buttons=[dict(label="▶ replay", method="animate",
                          args=[None, dict(frame=dict(duration=FRAME_MS, redraw=False), fromcurrent=False,
                                           transition=dict(duration=FRAME_MS, easing="cubic-out"))])])])
    return fig


def _crop(f: Focus, heads: list[int] | None = None, pad: float = 0.12) -> tuple[float, float, float, float]:
    """Image-pixel rectangle around the reference, the followed heads' points and the box."""
    hs = f.heads if heads is None else heads
    pts = [f.image_px[hs].reshape(-1, 2), f.reference_image_px[None]]
    if f.box_image_px is not None:
        pts.append(f.box_image_px.reshape(2, 2))
    p = np.concatenate(pts)
    p = p[np.isfinite(p).all(1)]
    lo, hi = p.min(0), p.max(0)
    m = pad * max(hi[0] - lo[0], hi[1] - lo[1], 24.0)
    return float(lo[0] - m), float(lo[1] - m), float(hi[0] + m), float(hi[1] + m)


def _image(fig, f: Focus, rect, row=None, col=None, max_side: int = 700):
    pic, prect = canvas.crop(f.capture.image, rect, max_side)
    fig.add_trace(canvas.plotly_image_at(pic, prect), row=row, col=col)
    fig.update_xaxes(range=[rect[0], rect[2]], showticklabels=False, showgrid=False, zeroline=False, row=row, col=col)
    fig.update_yaxes(range=[rect[3], rect[1]], showticklabels=False, showgrid=False, zeroline=False,
                     scaleanchor="x" if row in (None, 1) and col in (None, 1) else None, row=row, col=col)


def _equal_axes(fig: go.Figure, n: int) -> None:
    for i in range(1, n + 1):
        fig.layout[f"yaxis{'' if i == 1 else i}"].update(scaleanchor=f"x{'' if i == 1 else i}", scaleratio=1)


def _reference(fig, x, y, row=None, col=None, name="reference point p̂", show=True):
    fig.add_trace(go.Scatter(x=[x], y=[y], mode="markers", name=name, showlegend=show, hoverinfo="name",
                             marker=dict(symbol="cross", size=15, color=REFERENCE_COLOR,
                                         line=dict(color="black", width=1))), row=row, col=col)


def _points_trace(f: Focus, m: int, xy: np.ndarray, sizes: np.ndarray, name: str) -> go.Scatter:
    """Head m's L * P points at xy (L, P, 2)."""
    L, P = f.n_levels, f.n_points
    lv, pt = np.meshgrid(np.arange(L), np.arange(P), indexing="ij")
    custom = np.column_stack([np.full(L * P, m), lv.ravel(), pt.ravel(), f.weights[m].ravel()])
    return go.Scatter(x=xy[..., 0].ravel(), y=xy[..., 1].ravel(), mode="markers", name=name, meta="points",
                      customdata=custom, marker=dict(color=head_color(m), size=sizes.ravel(),
                                                     line=dict(color=OUTLINE_COLOR, width=0.6)),
                      hovertemplate="head %{customdata[0]}, level %{customdata[1]}, point %{customdata[2]}"
                                    "<br>A = %{customdata[3]:.3f}<extra></extra>")


def _followed_ring(f: Focus, xy) -> go.Scatter:
    return go.Scatter(x=[xy[0]], y=[xy[1]], mode="markers", name="followed point", hoverinfo="name",
                      marker=dict(symbol="circle-open", size=22, color=SELECTED_COLOR, line=dict(width=3)))


# ----------------------------------------------------------------------------- the steps
def figure_pyramid(f: Focus) -> go.Figure:
    g = f.geometry
    L = g.n_levels
    h0, w0 = g.orig_size
    titles = [f"level {l}: {int(w)}×{int(h)} cells, stride {s}" for l, ((h, w), s) in
              enumerate(zip(g.spatial_shapes, g.strides))]
    # Two columns from three levels on: four titles in one row overlapped at 1024 px, and each map
    # was too small to show its cells.
    cols = L if L <= 2 else 2
    rows = math.ceil(L / cols)
    fig = make_subplots(rows, cols, subplot_titles=titles, horizontal_spacing=0.03, vertical_spacing=0.08)
    for l in range(L):
        r, c = divmod(l, cols)
        pic = canvas.level_picture(f.capture.image, g, l)
        fig.add_trace(canvas.plotly_image_at(pic, (0, 0, w0, h0)), r + 1, c + 1)
        xs, ys = canvas.level_grid_lines(g, l)
        gx, gy = canvas.grid_polyline(xs, ys)
        fig.add_trace(go.Scatter(x=gx, y=gy, mode="lines", line=dict(color="rgba(255,255,255,0.55)", width=0.7),
                                 hoverinfo="skip", showlegend=False), r + 1, c + 1)
        _reference(fig, *f.reference_image_px, row=r + 1, col=c + 1, show=l == 0)
        fig.update_xaxes(range=[0, w0], showticklabels=False, showgrid=False, zeroline=False, row=r + 1, col=c + 1)
        fig.update_yaxes(range=[h0, 0], showticklabels=False, showgrid=False, zeroline=False, row=r + 1, col=c + 1)
    _equal_axes(fig, L)
    fig.update_annotations(font_size=12)
    return _layout(fig, "1. The feature pyramid: L maps of cells, each cell one feature vector",
                   height=max(HEIGHT, 60 + 250 * rows))


def figure_query(f: Focus) -> go.Figure:
    g = f.geometry
    h0, w0 = g.orig_size
    fig = go.Figure()
    _image(fig, f, (0, 0, w0, h0))
    if f.part == "decoder":
        x0, y0, x1, y1 = f.box_image_px
        fig.add_trace(go.Scatter(x=[x0, x1, x1, x0, x0], y=[y0, y0, y1, y1, y0], mode="lines",
                                 name=f"query {f.row}'s box: {f.label} {f.score:.2f}",
                                 line=dict(color="white", width=2.5)))
        if f.box_reference:
            cx, cy, bw, bh = g.reference_to_image(f.reference[:1])[0]
            fig.add_trace(go.Scatter(x=[cx - bw / 2, cx + bw / 2, cx + bw / 2, cx - bw / 2, cx - bw / 2],
                                     y=[cy - bh / 2, cy - bh / 2, cy + bh / 2, cy + bh / 2, cy - bh / 2], mode="lines",
                                     name="reference box (input of this layer)",
                                     line=dict(color=REFERENCE_COLOR, width=2, dash="dash")))
    else:
        lvl, (ix, iy) = f.token_level, f.token_cell
        (cx0, cy0), (cx1, cy1) = g.level_to_image(np.array([[ix, iy], [ix + 1, iy + 1]], dtype=float), lvl)
        fig.add_trace(go.Scatter(x=[cx0, cx1, cx1, cx0, cx0], y=[cy0, cy0, cy1, cy1, cy0], mode="lines",
                                 name=f"the query's cell (level {lvl})", line=dict(color="white", width=2.5)))
    _reference(fig, *f.reference_image_px)
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return _layout(fig, f"2. The query and its reference point: {f.what}")


def _ease(i: int) -> float:
    """Fraction of the way at frame i: fast start, soft landing."""
    return 1 - (1 - i / N_FRAMES) ** 2


def _fly(fig: go.Figure, start: np.ndarray, end: np.ndarray, first: int, traces_of) -> None:
    """Frames moving points from ``start`` to ``end`` (same shapes); ``traces_of(xy)`` builds
    the moving traces, which are the figure's traces ``first``, ``first + 1``, ..."""
    frames = []
    for i in range(N_FRAMES + 1):
        data = traces_of(start + (end - start) * _ease(i))
        frames.append(go.Frame(name=str(i), data=data, traces=list(range(first, first + len(data)))))
    fig.frames = frames


def figure_heads(f: Focus) -> go.Figure:
    rect = _crop(f)
    fig = go.Figure()
    _image(fig, f, rect)
    _reference(fig, *f.reference_image_px)
    n_static = len(fig.data)
    sizes = marker_diameter(f.weights.ravel()).reshape(f.weights.shape) * 1.6
    start = np.broadcast_to(f.reference_image_px, f.image_px.shape).copy()
    rx, ry = f.reference_image_px

    def traces(xy):  # per head: faint spokes from the reference, then the points
        out = []
        for m in f.heads:
            p = xy[m].reshape(-1, 2)
            out.append(go.Scatter(x=np.column_stack([np.full(len(p), rx), p[:, 0], np.full(len(p), np.nan)]).ravel(),
                                  y=np.column_stack([np.full(len(p), ry), p[:, 1], np.full(len(p), np.nan)]).ravel(),
                                  mode="lines", line=dict(color=head_color(m), width=1), opacity=0.55,
                                  hoverinfo="skip", showlegend=False, legendgroup=f"h{m}"))
            out.append(_points_trace(f, m, xy[m], sizes[m], f"head {m}"))
        return out

    for t in traces(f.image_px):
        fig.add_trace(t)
    _fly(fig, start, f.image_px, n_static, traces)
    fig.add_trace(_followed_ring(f, f.image_px[f.shown_head, f.level, f.point]))
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return _layout(fig, f"3. Heads: {f.n_heads} heads, each with its own points (colour = head, size = weight)",
                   animate=True)


def figure_offsets(f: Focus) -> go.Figure:
    g = f.geometry
    L = f.n_levels
    fig = make_subplots(1, L, subplot_titles=[f"level {l} (cells)" for l in range(L)], horizontal_spacing=0.03)
    sizes = marker_diameter(f.weights.ravel()).reshape(f.weights.shape)
    n_static = 0
    for l in range(L):
        H, W = (int(v) for v in g.spatial_shapes[l])
        pic = canvas.level_picture(f.capture.image, g, l)
        vw, vh = g.valid_wh[l]
        fig.add_trace(canvas.plotly_image_at(pic, (0, 0, vw, vh), xaxis=f"x{'' if l == 0 else l + 1}",
                                             yaxis=f"y{'' if l == 0 else l + 1}"), 1, l + 1)
        _reference(fig, *f.reference_level_px[l], row=1, col=l + 1, show=l == 0)
        pts = np.concatenate([f.level_px[f.heads, l].reshape(-1, 2), f.reference_level_px[l][None]])
        lo, hi = np.nanmin(pts, 0) - 1.5, np.nanmax(pts, 0) + 1.5
        fig.update_xaxes(range=[lo[0], hi[0]], showgrid=False, zeroline=False, row=1, col=l + 1)
        fig.update_yaxes(range=[hi[1], lo[1]], showgrid=False, zeroline=False, row=1, col=l + 1)
        n_static = len(fig.data)
    _equal_axes(fig, L)
    ref = f.reference_level_px  # (L, 2)

    def arrows(xy):  # xy (M, L, P, 2) level px
        out = []
        for m in f.heads:
            for l in range(L):
                xs, ys = [], []
                for k in range(f.n_points):
                    xs += [ref[l, 0], xy[m, l, k, 0], None]
                    ys += [ref[l, 1], xy[m, l, k, 1], None]
                ax = f"x{'' if l == 0 else l + 1}"
                out.append(go.Scatter(x=xs, y=ys, mode="lines+markers", xaxis=ax, yaxis=ax.replace("x", "y"),
                                      line=dict(color=head_color(m), width=1.5), showlegend=l == 0,
                                      name=f"head {m}", legendgroup=f"h{m}", hoverinfo="skip",
                                      marker=dict(size=[v for k in range(f.n_points) for v in (0, sizes[m, l, k], 0)],
                                                  color=head_color(m))))
        return out

    for t in arrows(f.level_px):
        fig.add_trace(t)
    _fly(fig, np.broadcast_to(ref[None, :, None, :], f.level_px.shape).copy(), f.level_px, n_static, arrows)
    m, l, k = f.shown_head, f.level, f.point
    ax = f"x{'' if l == 0 else l + 1}"
    ring = _followed_ring(f, f.level_px[m, l, k])
    ring.update(xaxis=ax, yaxis=ax.replace("x", "y"))
    fig.add_trace(ring)
    return _layout(fig, "4. Offsets Δp: arrows from φ_l(p̂) to each sampling point, on each level's grid",
                   animate=True, height=420)


def figure_bilinear(f: Focus, radius: int = 2) -> go.Figure:
    m, l, k = f.shown_head, f.level, f.point
    px, py = f.level_px[m, l, k]
    cells, w, inside = f.corners()
    x0, x1 = np.floor(px - 0.5) - radius + 1, np.floor(px - 0.5) + radius + 1
    y0, y1 = np.floor(py - 0.5) - radius + 1, np.floor(py - 0.5) + radius + 1
    fig = go.Figure()
    gx, gy = canvas.grid_polyline(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1))
    fig.add_trace(go.Scatter(x=gx, y=gy, mode="lines", line=dict(color="#BBBBBB", width=1), hoverinfo="skip",
                             showlegend=False))
    cx, cy = np.meshgrid(np.arange(x0, x1) + 0.5, np.arange(y0, y1) + 0.5)
    fig.add_trace(go.Scatter(x=cx.ravel(), y=cy.ravel(), mode="markers", name="cell centres (i + 0.5)",
                             marker=dict(size=5, color="#888888"), hoverinfo="skip"))
    for (ix, iy), wc, ins in zip(cells.tolist(), w.tolist(), inside.tolist()):
        fig.add_trace(go.Scatter(x=[ix, ix + 1, ix + 1, ix, ix], y=[iy, iy, iy + 1, iy + 1, iy], fill="toself",
                                 fillcolor=f"rgba(230,159,0,{0.12 + 0.7 * wc:.3f})", line=dict(color=SELECTED_COLOR),
                                 mode="lines", showlegend=False, hoverinfo="skip"))
        fig.add_annotation(x=ix + 0.5, y=iy + 0.78, text=f"<b>{wc:.3f}</b>" + ("" if ins else " (off map)"),
                           showarrow=False, font=dict(size=15))
        fig.add_trace(go.Scatter(x=[ix + 0.5, px], y=[iy + 0.5, py], mode="lines", showlegend=False,
                                 line=dict(color=SELECTED_COLOR, width=1 + 5 * wc), hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=[px], y=[py], mode="markers", name=f"sampling point ({px:.2f}, {py:.2f})",
                             marker=dict(size=14, color=head_color(m), line=dict(color="black", width=1))))
    fig.update_xaxes(range=[x0, x1], dtick=1, title=f"x (cells of level {l})", constrain="domain")
    fig.update_yaxes(range=[y1, y0], dtick=1, scaleanchor="x", scaleratio=1, title="y", constrain="domain")
    return _layout(fig, f"5. Bilinear sampling: head {m}, level {l}, point {k} reads 4 cells")


def figure_weights(f: Focus) -> go.Figure:
    m = f.shown_head
    L, P = f.n_levels, f.n_points
    labels = [f"L{l}·{k}" for l in range(L) for k in range(P)]
    colors = [level_color(l) for l in range(L) for _ in range(P)]
    line = [3 if (l, k) == (f.level, f.point) else 0 for l in range(L) for k in range(P)]
    final = f.weights[m].ravel()

    def bars(y):
        return [go.Bar(x=labels, y=y, marker=dict(color=colors, line=dict(width=line, color="black")), name="A",
                       meta="softmax", showlegend=False, hovertemplate="%{x}: A = %{y:.4f}<extra></extra>",
                       text=[f"{v:.2f}" for v in y], textposition="outside")]

    fig = go.Figure(bars(final))
    fig.frames = [go.Frame(name=str(i), data=bars(final * _ease(i)), traces=[0])
                  for i in range(N_FRAMES + 1)]
    fig.update_yaxes(range=[0, max(float(final.max()) * 1.2, 0.05)], title="attention weight A (sums to 1)")
    fig.update_xaxes(title="level · point (colour = level)")
    return _layout(fig, f"6. Attention weights of head {m}: one softmax over all L × K = {L * P} points",
                   animate=True)


def figure_sum(f: Focus) -> go.Figure:
    m = f.shown_head
    cells = f.cells(m)
    L = f.n_levels
    fig = make_subplots(1, L, subplot_titles=[f"level {l}: Σ A · g = {c.sum():.3f}" for l, c in enumerate(cells)],
                        horizontal_spacing=0.04)
    vmax = max(float(max(c.max() for c in cells)), 1e-6)
    for l, c in enumerate(cells):
        fig.add_trace(go.Heatmap(z=c, x0=0.5, dx=1, y0=0.5, dy=1, colorscale="Inferno", zmin=0, zmax=vmax,
                                 showscale=l == L - 1, hovertemplate="cell (%{x:.0f}, %{y:.0f}): %{z:.4f}<extra></extra>"),
                      1, l + 1)
        x0, x1, y0, y1 = nonzero_window(c)
        fig.update_xaxes(range=[x0, x1], showgrid=False, row=1, col=l + 1)
        fig.update_yaxes(range=[y1, y0], showgrid=False, row=1, col=l + 1)
    _equal_axes(fig, L)
    return _layout(fig, f"7. Weighted sum: how much each value cell contributes to head {m}'s output", height=380)


def nonzero_window(cells: np.ndarray, margin: int = 2) -> tuple[int, int, int, int]:
    """(x0, x1, y0, y1): the cells with a non-zero coefficient and a margin (all if none)."""
    ys, xs = np.nonzero(cells)
    if xs.size == 0:
        return 0, cells.shape[1], 0, cells.shape[0]
    return (max(int(xs.min()) - margin, 0), min(int(xs.max()) + margin + 1, cells.shape[1]),
            max(int(ys.min()) - margin, 0), min(int(ys.max()) + margin + 1, cells.shape[0]))


def figure_cost(f: Focus) -> go.Figure:
    g, meta = f.geometry, f.capture.meta
    c = image_cost(g.spatial_shapes, f.channels, f.n_heads, f.n_points, meta["num_queries"], meta["enc_layers"],
                   meta["dec_layers"])
    rows = [("encoder layer", c.encoder_dense, c.encoder_deformable),
            ("decoder<br>cross-attention", c.decoder_dense, c.decoder_deformable)]
    fig = make_subplots(1, 2, subplot_titles=["multiply-adds per layer", "attention memory per layer (bytes)"])
    for name, color, pick in (("dense", "#999999", 1), ("deformable", "#0072B2", 2)):
        costs = [r[pick] for r in rows]
        fig.add_trace(go.Bar(x=[r[0] for r in rows], y=[a.macs for a in costs], name=name, marker_color=color,
                             text=[human(a.macs) for a in costs], textposition="outside", meta="cost",
                             legendgroup=name), 1, 1)
        fig.add_trace(go.Bar(x=[r[0] for r in rows], y=[a.attention_bytes for a in costs], name=name,
                             marker_color=color, text=[human(a.attention_bytes) + "B" for a in costs],
                             textposition="outside", showlegend=False, legendgroup=name), 1, 2)
    # Decades only (the minor ticks' 2..9 labels crowded the axis), in SI units like the bars' labels.
    fig.update_yaxes(type="log", dtick=1, tickformat="~s", showgrid=True)
    fig.update_layout(barmode="group")
    _layout(fig, f"8. Dense vs deformable attention for this image ({c.n_tokens} cells over {f.n_levels} levels)")
    fig.update_layout(legend=dict(orientation="h", x=0.5, xanchor="center", y=-0.14, yanchor="top"),
                      margin=dict(b=50))  # under the two-line category labels
    return fig


def figure_layers(f: Focus, stacks: dict[int, "Focus"]) -> go.Figure:
    """``stacks``: layer -> Focus of the same row in that layer (from ``focus``)."""
    layers = sorted(stacks)
    fig = make_subplots(1, len(layers), subplot_titles=[f"layer {i}" + (" (shown)" if i == f.layer else "")
                                                         for i in layers], horizontal_spacing=0.02)
    allpts = np.concatenate([stacks[i].image_px[f.heads].reshape(-1, 2) for i in layers]
                            + [stacks[i].reference_image_px[None] for i in layers])
    allpts = allpts[np.isfinite(allpts).all(1)]
    lo, hi = allpts.min(0), allpts.max(0)
    pad = 0.1 * max(hi[0] - lo[0], hi[1] - lo[1], 24.0)
    rect = (lo[0] - pad, lo[1] - pad, hi[0] + pad, hi[1] + pad)
    pic, prect = canvas.crop(f.capture.image, rect, 500)
    for j, i in enumerate(layers):
        s = stacks[i]
        fig.add_trace(canvas.plotly_image_at(pic, prect), 1, j + 1)
        sizes = marker_diameter(s.weights.ravel()).reshape(s.weights.shape)
        for m in f.heads:
            t = _points_trace(s, m, s.image_px[m], sizes[m], f"head {m}")
            t.update(showlegend=j == 0, legendgroup=f"h{m}")
            fig.add_trace(t, 1, j + 1)
        if s.box_image_px is not None:
            x0, y0, x1, y1 = s.box_image_px
            fig.add_trace(go.Scatter(x=[x0, x1, x1, x0, x0], y=[y0, y0, y1, y1, y0], mode="lines", showlegend=j == 0,
                                     name="this layer's output box", legendgroup="box",
                                     line=dict(color="white", width=2)), 1, j + 1)
        _reference(fig, *s.reference_image_px, row=1, col=j + 1, show=j == 0)
        fig.update_xaxes(range=[rect[0], rect[2]], showticklabels=False, showgrid=False, zeroline=False, row=1, col=j + 1)
        fig.update_yaxes(range=[rect[3], rect[1]], showticklabels=False, showgrid=False, zeroline=False, row=1, col=j + 1)
    _equal_axes(fig, len(layers))
    part = "decoder" if f.part == "decoder" else "encoder"
    return _layout(fig, f"9. Across layers: the same {'query' if f.part == 'decoder' else 'pixel'} in every {part} layer",
                   height=420)


def follow_picture(f: Focus, max_side: int = 560):
    """(RGB array, scale): the image with the followed heads' sampling points (colour = head,
    size = weight), the reference cross and the followed point ringed; a click at display pixel
    (u, v) is image pixel ``viz.raster.to_image_px(u, v, scale)``."""
    from .raster import Raster, display_scale
    from .style import hex_to_rgb

    scale = display_scale(f.capture.image.shape, max_side)
    r = Raster(f.capture.image, scale, dim=0.25)
    xy = f.image_px[f.heads].reshape(-1, 2)
    heads = np.repeat(f.heads, f.n_levels * f.n_points)
    colors = np.array([hex_to_rgb(head_color(m)) for m in heads], dtype=np.uint8)
    w = f.weights[f.heads].ravel()
    r.points(xy, colors, marker_diameter(w) * 1.2, order=np.argsort(w))
    r.cross([f.reference_image_px])
    x, y = f.image_px[f.shown_head, f.level, f.point] * scale
    r.draw.ellipse([x - 12, y - 12, x + 12, y + 12], outline=hex_to_rgb(SELECTED_COLOR), width=3)
    return r.array(), scale
