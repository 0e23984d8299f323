"""Statistics of the decoder's sampling over all detections of one image.

(a) attention mass per level against object size: does a large object look at coarse levels?
(b) each head's mean offset (direction and distance, image pixels): the heads' habits;
(c) attention entropy per head and layer (nats; ln(L P) = uniform over the L P points);
(d) the fraction of sampling points that fall outside the valid (unpadded) image, where the
    op reads zeros (plain, and weighted by attention).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from matplotlib.ticker import NullFormatter, ScalarFormatter
from plotly.subplots import make_subplots

from .selection import detection_queries, resolve_layer
from .style import TEXT_WIDTH, WEIGHT_CMAP, head_color, level_color, new_figure, paper, style_colorbar


@dataclass
class Statistics:
    """N detections (distinct queries), M heads, L levels, D captured decoder layers.

    sizes (N,) sqrt(box area) in image px; level_mass (N, L) share of each query's attention
    per level at ``layer`` (rows sum to 1); mean_offset (M, 2) and mean_distance (M,) in
    image px at ``layer``; entropy (D, M) mean over detections; outside / outside_weighted
    (D, L) fraction of points (of attention) outside the image.
    """

    layer: int
    layers: list[int]
    queries: list[int]
    sizes: np.ndarray
    level_mass: np.ndarray
    mean_offset: np.ndarray
    mean_distance: np.ndarray
    entropy: np.ndarray
    entropy_max: float
    outside: np.ndarray
    outside_weighted: np.ndarray


def _rows(capture, queries: list[int]) -> np.ndarray:
    qi = capture.arrays["dec/query_index"]
    pos = {int(q): i for i, q in enumerate(qi.tolist())}
    missing = [q for q in queries if q not in pos]
    if missing:
        raise KeyError(f"queries {missing[:5]} were not captured; capture with queries=None or 'detections'")
    return np.array([pos[q] for q in queries], dtype=np.int64)


def statistics(capture, threshold: float = 0.5, layer: int = -1) -> Statistics:
    """Gather the four statistics over the detections scoring >= ``threshold``."""
    pairs = detection_queries(capture, threshold)
    if not pairs:
        raise ValueError(f"no detection scores at least {threshold}; lower the threshold")
    det = capture.detections
    boxes = det.boxes.numpy()[[i for i, _ in pairs]].astype(np.float64)
    queries = [q for _, q in pairs]
    sizes = np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
    rows = _rows(capture, queries)
    g = capture.geometry
    w0, h0 = g.orig_wh
    layer = resolve_layer(capture, "decoder", layer)
    layers = capture.decoder_layers
    if layer not in layers:
        raise KeyError(f"decoder layer {layer} was not captured (stored: {layers})")
    entropy, outside, outside_w = [], [], []
    for l in layers:
        s = capture.sampling("decoder", l, rows)
        w = s["weights"].astype(np.float64)  # (N, M, L, P)
        N, M, L, P = w.shape
        flat = w.reshape(N, M, L * P)
        entropy.append((-(flat * np.log(np.clip(flat, 1e-12, None))).sum(-1)).mean(0))  # (M,)
        img = g.to_image(s["locations"])  # (N, M, L, P, 2)
        out = (img[..., 0] < 0) | (img[..., 0] > w0) | (img[..., 1] < 0) | (img[..., 1] > h0)  # (N, M, L, P)
        outside.append(out.mean((0, 1, 3)))
        outside_w.append((out * w).sum((0, 1, 3)) / np.maximum(w.sum((0, 1, 3)), 1e-12))
        if l == layer:
            level_mass = w.sum((1, 3)) / M  # (N, L)
            if s["references"] is not None:
                off = g.offsets(s["locations"], s["references"][:, None, :, None])["image_px"]  # (N, M, L, P, 2)
            else:
                raise KeyError("this capture stored locations without references: offsets are unknown")
            mean_offset = off.mean((0, 2, 3))  # (M, 2)
            mean_distance = np.linalg.norm(off, axis=-1).mean((0, 2, 3))  # (M,)
    return Statistics(layer, list(layers), queries, sizes, level_mass, mean_offset, mean_distance, np.array(entropy),
                      float(np.log(L * P)), np.array(outside), np.array(outside_w))


def _binned(sizes: np.ndarray, values: np.ndarray, bins: int = 6):
    """Mean of ``values`` (N,) in log-spaced size bins: (centres, means) of non-empty bins."""
    if sizes.size < 2 or sizes.min() <= 0:
        return np.array([]), np.array([])
    edges = np.geomspace(sizes.min(), sizes.max() * 1.0001, bins + 1)
    idx = np.clip(np.searchsorted(edges, sizes, side="right") - 1, 0, bins - 1)
    centres, means = [], []
    for b in range(bins):
        m = idx == b
        if m.any():
            centres.append(np.sqrt(edges[b] * edges[b + 1]))
            means.append(values[m].mean())
    return np.array(centres), np.array(means)


def stats_figure(capture, threshold: float = 0.5, layer: int = -1) -> go.Figure:
    """Plotly 2 x 2 panels of ``statistics``."""
    st = statistics(capture, threshold, layer)
    L = st.level_mass.shape[1]
    M = st.mean_offset.shape[0]
    fig = make_subplots(2, 2, subplot_titles=(
        f"attention per level vs object size (layer {st.layer})", f"mean offset per head (layer {st.layer}, image px)",
        f"entropy per head and layer (max ln(LP) = {st.entropy_max:.2f})", "points outside the image"),
        horizontal_spacing=0.12, vertical_spacing=0.14)
    for l in range(L):
        col = level_color(l)
        fig.add_trace(go.Scatter(x=st.sizes, y=st.level_mass[:, l], mode="markers", name=f"level {l}", legendgroup=f"l{l}",
                                 marker=dict(color=col, size=6, opacity=0.6), meta="level_mass",
                                 customdata=np.array(st.queries), hovertemplate="query %{customdata}<br>size %{x:.0f} px"
                                 "<br>mass %{y:.3f}<extra>level " + str(l) + "</extra>"), 1, 1)
        cx, cy = _binned(st.sizes, st.level_mass[:, l])
        fig.add_trace(go.Scatter(x=cx, y=cy, mode="lines", line=dict(color=col, width=2), legendgroup=f"l{l}",
                                 showlegend=False, hoverinfo="skip"), 1, 1)
    # powers of two only: the log axis' default minor labels (2..9) crowded it
    fig.update_xaxes(type="log", title_text="object size √(w h) (px)", tickvals=[2 ** k for k in range(2, 13)],
                     row=1, col=1)
    fig.update_yaxes(title_text="share of attention", range=[0, 1], row=1, col=1)
    t = np.linspace(0, 2 * np.pi, 65)
    for m in range(M):
        col = head_color(m)
        dx, dy = st.mean_offset[m]
        fig.add_trace(go.Scatter(x=[0, dx], y=[0, dy], mode="lines+markers", name=f"head {m}", legendgroup=f"h{m}",
                                 line=dict(color=col, width=2), marker=dict(size=[0, 8], color=col), meta="mean_offset",
                                 hovertemplate=f"head {m}<br>mean offset ({dx:.1f}, {dy:.1f}) px<br>"
                                 f"mean distance {st.mean_distance[m]:.1f} px<extra></extra>"), 1, 2)
        r = st.mean_distance[m]
        fig.add_trace(go.Scatter(x=r * np.cos(t), y=r * np.sin(t), mode="lines", line=dict(color=col, width=1, dash="dot"),
                                 legendgroup=f"h{m}", showlegend=False, hoverinfo="skip"), 1, 2)
    fig.update_yaxes(autorange="reversed", scaleanchor="x2", row=1, col=2)  # image frame: y down
    fig.add_trace(go.Heatmap(z=st.entropy, x=[f"h{m}" for m in range(M)], y=[f"layer {l}" for l in st.layers],
                             colorscale=WEIGHT_CMAP.capitalize(), zmin=0, zmax=st.entropy_max, meta="entropy",
                             text=np.round(st.entropy, 2), texttemplate="%{text}", showscale=False,
                             hovertemplate="%{y}, head %{x}: %{z:.3f} nats<extra></extra>"), 2, 1)
    for i, l in enumerate(st.layers):
        fig.add_trace(go.Bar(x=[f"level {k}" for k in range(L)], y=st.outside[i], name=f"layer {l}", meta="outside",
                             marker_color=["#BBBBBB", "#888888", "#444444", "#222222"][i % 4], showlegend=False,
                             hovertemplate=f"layer {l}, %{{x}}: %{{y:.1%}} of points<extra></extra>"), 2, 2)
    fig.update_yaxes(title_text="fraction of points", tickformat=".1%", row=2, col=2)  # ".0%" repeated labels
    fig.update_layout(title=dict(text=f"sampling statistics over {len(st.queries)} detections ≥ {threshold}", x=0.01),
                      height=760, barmode="group", plot_bgcolor="white", margin=dict(l=50, r=10, t=70, b=40))
    return fig


def stats_figure_mpl(capture, threshold: float = 0.5, layer: int = -1):
    """Matplotlib (paper) 2 x 2 panels of ``statistics``."""
    st = statistics(capture, threshold, layer)
    L = st.level_mass.shape[1]
    M = st.mean_offset.shape[0]
    with paper():
        fig = new_figure(TEXT_WIDTH, TEXT_WIDTH * 0.62)
        (a, b), (c, d) = fig.subplots(2, 2)
        for l in range(L):
            a.scatter(st.sizes, st.level_mass[:, l], s=5, color=level_color(l), alpha=0.6, linewidths=0)
            cx, cy = _binned(st.sizes, st.level_mass[:, l])
            a.plot(cx, cy, color=level_color(l), lw=1.2, label=f"level {l}")
        a.set_xscale("log")
        a.xaxis.set_major_formatter(ScalarFormatter())
        a.xaxis.set_minor_formatter(NullFormatter())
        a.set_ylim(0, 1)
        a.set_xlabel("object size $\\sqrt{wh}$ (px)")
        a.set_ylabel("share of attention")
        a.legend(ncol=2)
        a.set_title(f"(a) attention per level vs object size, layer {st.layer}")
        t = np.linspace(0, 2 * np.pi, 65)
        for m in range(M):
            dx, dy = st.mean_offset[m]
            b.annotate("", (dx, dy), (0, 0), arrowprops=dict(arrowstyle="-|>", color=head_color(m), lw=1.0))
            r = st.mean_distance[m]
            b.plot(r * np.cos(t), r * np.sin(t), ls=":", lw=0.6, color=head_color(m))
            b.text(dx, dy, f" {m}", fontsize=6, color="black")
        lim = float(max(st.mean_distance.max(), np.abs(st.mean_offset).max(), 1.0)) * 1.1
        b.set_xlim(-lim, lim)
        b.set_ylim(lim, -lim)  # image frame: y down
        b.set_aspect("equal")
        b.axhline(0, color="#CCCCCC", lw=0.4)
        b.axvline(0, color="#CCCCCC", lw=0.4)
        b.set_xlabel("mean offset x (px)")
        b.set_ylabel("y (px)")
        b.set_title("(b) mean offset per head (arrow) and distance (circle)")
        im = c.imshow(st.entropy, cmap=WEIGHT_CMAP, vmin=0, vmax=st.entropy_max, aspect="auto")
        for (i, j), v in np.ndenumerate(st.entropy):
            c.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=5, color="white" if v < st.entropy_max * 0.6 else "black")
        c.set_xticks(range(M))
        c.set_xlabel("head")
        c.set_yticks(range(len(st.layers)), [str(l) for l in st.layers])
        c.set_ylabel("layer")
        style_colorbar(fig.colorbar(im, ax=c, fraction=0.05, pad=0.02), "entropy (nats)")
        c.set_title(f"(c) attention entropy (uniform = ln LP = {st.entropy_max:.2f})")
        width = 0.8 / max(len(st.layers), 1)
        for i, l in enumerate(st.layers):
            d.bar(np.arange(L) + (i - (len(st.layers) - 1) / 2) * width, st.outside[i] * 100, width,
                  color=str(0.75 - 0.6 * i / max(len(st.layers) - 1, 1)), label=f"layer {l}")
        d.set_xticks(range(L), [f"level {k}" for k in range(L)])
        d.set_ylabel("points outside the image (%)")
        d.set_ylim(0, max(float(st.outside.max()) * 100 * 1.4, 1.0))
        d.legend(ncol=len(st.layers), loc="upper center")
        d.set_title("(d) sampling points off the valid image")
        fig.subplots_adjust(hspace=0.55, wspace=0.35, left=0.08, right=0.97, top=0.93, bottom=0.08)
    return fig
