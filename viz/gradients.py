"""What the box looks at: the paper's Figure 5 for one detection.

For each of the box's centre x, centre y, width, height and its class score, the norm of its
gradient with respect to the input pixels (``ddetr.gradients.box_gradients``, which runs the
backward; here we only draw). Zhu et al. (sec. 5.3, Fig. 5) read from it that the box's x and
y depend on the object's left/right and top/bottom extremities, its score on the interior.

Each map is shown on its own scale (divided by its 99.5th percentile, so one hot pixel does
not wash the rest out); the hover gives the raw value.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from . import fastplot as fp
from . import canvas
from .raster import Raster
from .style import GRAD_CMAP, OUTLINE_COLOR, TEXT_WIDTH, new_figure, paper

QUANTITIES = ("cx", "cy", "w", "h", "score")
TITLES = {"cx": "box centre x", "cy": "box centre y", "w": "box width", "h": "box height", "score": "class score"}


def _check(grads: dict, image: np.ndarray) -> None:
    missing = [q for q in QUANTITIES if q not in grads]
    if missing:
        raise KeyError(f"gradient maps {missing} missing; compute them with ddetr.gradients.box_gradients(model, image, query)")
    h, w = image.shape[:2]
    if grads["cx"].shape != (h, w):
        raise ValueError(f"gradient maps are {grads['cx'].shape[1]}x{grads['cx'].shape[0]}, the image {w}x{h}: "
                         "pass the image the gradients were computed on")


def normalized(m: np.ndarray, q: float = 99.5) -> np.ndarray:
    """Map / its ``q``-th percentile, clipped to [0, 1] (0 map stays 0)."""
    top = float(np.percentile(m, q))
    top = top if top > 0 else float(m.max())
    return np.clip(m / top, 0, 1) if top > 0 else np.zeros_like(m, dtype=np.float64)


def _title(grads: dict) -> str:
    return f"what the box looks at: query {grads['query_index']}, {grads['label_name']} {grads['score_value']:.2f}"


def _box_xy(box) -> tuple[list, list]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0]


def gradient_figure(image: np.ndarray, grads: dict, max_side: int = 200) -> go.Figure:
    """Plotly: one panel per quantity, the normalized gradient norm over the dimmed image."""
    _check(grads, image)
    w, h = canvas.image_size(image)
    layout, names = canvas.plotly_panels(1, len(QUANTITIES), w, h, [TITLES[q] for q in QUANTITIES])
    f = max(1, int(np.ceil(max(h, w) / max_side)))
    hh, ww = h // f * f, w // f * f
    bx, by = _box_xy(grads["box"])
    data = []
    for q, (xn, yn) in zip(QUANTITIES, names):
        raw = grads[q][:hh, :ww].reshape(hh // f, f, ww // f, f).mean((1, 3))
        data.append(canvas.plotly_image(image, xn, yn, opacity=0.5))
        data.append(fp.Heatmap(z=normalized(raw), customdata=raw, x0=f / 2, dx=f, y0=f / 2, dy=f, xaxis=xn, yaxis=yn,
                               colorscale=GRAD_CMAP.capitalize(), zmin=0, zmax=1, opacity=0.8, showscale=False, meta=q,
                               hovertemplate=f"‖∂{q}/∂pixel‖ = %{{customdata:.3g}}<extra></extra>"))
        data.append(fp.Scatter(x=bx, y=by, mode="lines", line=dict(color="white", width=1.5), xaxis=xn, yaxis=yn,
                               hoverinfo="skip", showlegend=False))
    base = canvas.base_layout(_title(grads), height=260, legend=False)
    base.update(layout)
    return fp.Figure(data=data, layout=base)


def gradient_figure_mpl(image: np.ndarray, grads: dict):
    """Matplotlib (paper), as Figure 5: the image with the box, then the five maps."""
    import matplotlib.patheffects as pe

    _check(grads, image)
    w, h = canvas.image_size(image)
    n = len(QUANTITIES) + 1
    with paper():
        fig = new_figure(TEXT_WIDTH, TEXT_WIDTH / n * h / w + 0.3)
        axes = fig.subplots(1, n)
        bx, by = _box_xy(grads["box"])
        halo = [pe.Stroke(linewidth=1.8, foreground=OUTLINE_COLOR), pe.Normal()]
        canvas.mpl_image(axes[0], image)
        axes[0].plot(bx, by, color="white", lw=0.9, path_effects=halo)
        axes[0].set_title(f"{grads['label_name']} {grads['score_value']:.2f}")
        for ax, q in zip(axes[1:], QUANTITIES):
            gray = image.mean(-1, keepdims=True).repeat(3, -1).astype(np.uint8)
            canvas.mpl_image(ax, gray, alpha=0.6)
            ax.imshow(normalized(grads[q]), extent=(0, w, h, 0), cmap=GRAD_CMAP, vmin=0, vmax=1, alpha=0.85,
                      interpolation="antialiased", zorder=1)
            ax.plot(bx, by, color="white", lw=0.6, zorder=2)
            ax.set_title(TITLES[q])
        fig.subplots_adjust(left=0.005, right=0.995, top=0.85, bottom=0.01, wspace=0.03)
    return fig


def render_gradient(image: np.ndarray, grads: dict, quantity: str = "score", scale: float | None = None) -> np.ndarray:
    """RGB: one quantity's normalized gradient norm over the dimmed image, with the box."""
    _check(grads, image)
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity must be one of {QUANTITIES}, got {quantity!r}")
    r = Raster(image, scale, dim=0.5)
    r.heat(normalized(grads[quantity]), GRAD_CMAP, alpha=0.9, vmax=1.0)
    r.box(grads["box"], label=f"{TITLES[quantity]}: {grads['label_name']} {grads['score_value']:.2f}")
    return r.array()
