"""The lesson as slides: one 16:9 page per step (figure left, text right, fonts readable from
the back of a lecture room), written as one PDF and one PNG per step.

    files = export_slides(f, stacks, "lesson_q17")   # files.pdf, files.pngs

Matplotlib, built on ``Figure`` directly (no pyplot state), like every file figure here.
"""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from . import canvas
from .cost import image_cost
from .learn_figures import nonzero_window
from .learn_focus import Focus
from .learn_steps import STEPS, layer_stack
from .learn_text import TEXTS
from .style import REFERENCE_COLOR, SELECTED_COLOR, head_color, level_color, marker_diameter

PAGE_IN = (13.333, 7.5)  # 16:9, PowerPoint's widescreen size
TITLE_PT, TEXT_PT, LABEL_PT = 30, 16, 14  # PowerPoint-like sizes on a 13.3-inch-wide page
TEXT_WRAP = 52  # characters per line of the text column at TEXT_PT
PNG_DPI = 110


@dataclass
class SlideFiles:
    pdf: Path
    pngs: list[Path]


def plain(markdown: str) -> str:
    """The step text without its bold title (the slide has one) and without Markdown emphasis."""
    return re.sub(r"\*+", "", re.sub(r"^\*\*[^*]+\*\*\s*", "", markdown))


def _ref(ax, x, y):
    ax.plot(x, y, marker="+", ms=22, mew=4, color=REFERENCE_COLOR, zorder=6)


def _image_ax(ax, f: Focus, rect=None):
    h0, w0 = f.geometry.orig_size
    rect = rect or (0, 0, w0, h0)
    pic, prect = canvas.crop(f.capture.image, rect, 900)
    ax.imshow(pic, extent=(prect[0], prect[2], prect[3], prect[1]), interpolation="antialiased")
    ax.set_xlim(rect[0], rect[2])
    ax.set_ylim(rect[3], rect[1])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def _crop(f: Focus, pad: float = 0.12):
    p = np.concatenate([f.image_px[f.heads].reshape(-1, 2), f.reference_image_px[None]])
    p = p[np.isfinite(p).all(1)]
    lo, hi = p.min(0), p.max(0)
    m = pad * max(hi[0] - lo[0], hi[1] - lo[1], 24.0)
    return lo[0] - m, lo[1] - m, hi[0] + m, hi[1] + m


def _points(ax, f: Focus, xy, scale: float = 4.0):
    for m in f.heads:
        s = (marker_diameter(f.weights[m].ravel()) * scale) ** 2 / 4
        ax.scatter(xy[m, ..., 0].ravel(), xy[m, ..., 1].ravel(), s=s, color=head_color(m), edgecolors="black",
                   linewidths=0.6, zorder=4, label=f"head {m}")


# ----------------------------------------------------------------------------- one panel per step
def draw_pyramid(fig: Figure, box, f: Focus):
    g = f.geometry
    axes = fig.add_gridspec(2, 2, left=box[0], right=box[1], bottom=0.08, top=0.85, wspace=0.05, hspace=0.2).subplots()
    h0, w0 = g.orig_size
    for l, ax in enumerate(axes.ravel()[:g.n_levels]):
        ax.imshow(canvas.level_picture(f.capture.image, g, l), extent=(0, w0, h0, 0), interpolation="nearest")
        xs, ys = canvas.level_grid_lines(g, l)
        ax.vlines(xs, 0, h0, colors="white", lw=0.4, alpha=0.6)
        ax.hlines(ys, 0, w0, colors="white", lw=0.4, alpha=0.6)
        _ref(ax, *f.reference_image_px)
        H, W = g.spatial_shapes[l]
        ax.set_title(f"level {l}: {W}×{H}, stride {g.strides[l]}", fontsize=LABEL_PT)
        ax.set_xlim(0, w0)
        ax.set_ylim(h0, 0)
        ax.set_xticks([])
        ax.set_yticks([])


def draw_query(fig, box, f: Focus):
    ax = _one(fig, box)
    _image_ax(ax, f)
    if f.box_image_px is not None:
        x0, y0, x1, y1 = f.box_image_px
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", lw=3))
    if f.token_cell is not None:
        (cx0, cy0), (cx1, cy1) = f.geometry.level_to_image(np.array([f.token_cell, np.add(f.token_cell, 1)], float),
                                                           f.token_level)
        ax.add_patch(Rectangle((cx0, cy0), cx1 - cx0, cy1 - cy0, fill=False, ec="white", lw=3))
    _ref(ax, *f.reference_image_px)


def draw_heads(fig, box, f: Focus):
    ax = _one(fig, box)
    _image_ax(ax, f, _crop(f))
    rx, ry = f.reference_image_px
    for m in f.heads:
        for p in f.image_px[m].reshape(-1, 2):
            ax.plot([rx, p[0]], [ry, p[1]], color=head_color(m), lw=0.8, alpha=0.7, zorder=3)
    _points(ax, f, f.image_px)
    _ref(ax, rx, ry)
    ax.legend(fontsize=LABEL_PT - 3, loc="lower right", ncol=2, markerscale=0.6)


def draw_offsets(fig, box, f: Focus):
    g = f.geometry
    axes = fig.add_gridspec(2, 2, left=box[0], right=box[1], bottom=0.08, top=0.85, wspace=0.15, hspace=0.25).subplots()
    for l, ax in enumerate(axes.ravel()[:f.n_levels]):
        vw, vh = g.valid_wh[l]
        ax.imshow(canvas.level_picture(f.capture.image, g, l), extent=(0, vw, vh, 0), interpolation="nearest")
        ref = f.reference_level_px[l]
        for m in f.heads:
            for k in range(f.n_points):
                ax.annotate("", f.level_px[m, l, k], ref, arrowprops=dict(arrowstyle="-|>", color=head_color(m), lw=1.5))
        pts = np.concatenate([f.level_px[f.heads, l].reshape(-1, 2), ref[None]])
        lo, hi = pts.min(0) - 1.5, pts.max(0) + 1.5
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(hi[1], lo[1])
        ax.set_aspect("equal")
        _ref(ax, *ref)
        ax.set_title(f"level {l} (cells)", fontsize=LABEL_PT)
        ax.tick_params(labelsize=LABEL_PT - 4)


def draw_bilinear(fig, box, f: Focus, radius: int = 2):
    ax = _one(fig, box)
    m, l, k = f.shown_head, f.level, f.point
    px, py = f.level_px[m, l, k]
    cells, w, inside = f.corners()
    x0, x1 = np.floor(px - 0.5) - radius + 1, np.floor(px - 0.5) + radius + 1
    y0, y1 = np.floor(py - 0.5) - radius + 1, np.floor(py - 0.5) + radius + 1
    ax.vlines(np.arange(x0, x1 + 1), y0, y1, colors="#BBBBBB", lw=1)
    ax.hlines(np.arange(y0, y1 + 1), x0, x1, colors="#BBBBBB", lw=1)
    for (ix, iy), wc, ins in zip(cells.tolist(), w.tolist(), inside.tolist()):
        ax.add_patch(Rectangle((ix, iy), 1, 1, facecolor=SELECTED_COLOR, alpha=0.12 + 0.7 * wc, edgecolor=SELECTED_COLOR))
        ax.text(ix + 0.5, iy + 0.8, f"{wc:.3f}" + ("" if ins else " (off)"), ha="center", fontsize=TEXT_PT)
        ax.plot([ix + 0.5, px], [iy + 0.5, py], color=SELECTED_COLOR, lw=1 + 5 * wc)
    ax.plot(px, py, "o", ms=16, color=head_color(m), mec="black")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_aspect("equal")
    ax.set_xlabel(f"x (cells of level {l})", fontsize=LABEL_PT)
    ax.tick_params(labelsize=LABEL_PT - 2)


def draw_weights(fig, box, f: Focus):
    ax = _one(fig, box, square=False)
    m, L, P = f.shown_head, f.n_levels, f.n_points
    w = f.weights[m].ravel()
    ax.bar(np.arange(L * P), w, color=[level_color(l) for l in range(L) for _ in range(P)],
           edgecolor=["black" if (l, k) == (f.level, f.point) else "none" for l in range(L) for k in range(P)], lw=2.5)
    ax.set_xticks([l * P + (P - 1) / 2 for l in range(L)], [f"level {l}" for l in range(L)], fontsize=LABEL_PT)
    ax.set_ylabel(f"A of head {m} (sum 1)", fontsize=LABEL_PT)
    ax.tick_params(labelsize=LABEL_PT - 2)


def draw_sum(fig, box, f: Focus):
    cells = f.cells()
    axes = fig.add_gridspec(2, 2, left=box[0], right=box[1], bottom=0.08, top=0.85, wspace=0.15, hspace=0.3).subplots()
    vmax = max(float(max(c.max() for c in cells)), 1e-6)
    for l, (ax, c) in enumerate(zip(axes.ravel(), cells)):
        ax.imshow(c, cmap="inferno", vmin=0, vmax=vmax, extent=(0, c.shape[1], c.shape[0], 0), interpolation="nearest")
        x0, x1, y0, y1 = nonzero_window(c)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y1, y0)
        ax.set_title(f"level {l}: Σ = {c.sum():.3f}", fontsize=LABEL_PT)
        ax.set_xticks([])
        ax.set_yticks([])


def draw_cost(fig, box, f: Focus):
    ax = _one(fig, box, square=False)
    g, meta = f.geometry, f.capture.meta
    c = image_cost(g.spatial_shapes, f.channels, f.n_heads, f.n_points, meta["num_queries"], meta["enc_layers"],
                   meta["dec_layers"])
    rows = [("encoder", c.encoder_dense, c.encoder_deformable), ("decoder", c.decoder_dense, c.decoder_deformable)]
    xs = np.arange(len(rows))
    ax.bar(xs - 0.2, [r[1].macs for r in rows], 0.4, color="#999999", label="dense")
    ax.bar(xs + 0.2, [r[2].macs for r in rows], 0.4, color="#0072B2", label="deformable")
    ax.set_yscale("log")
    ax.set_xticks(xs, [r[0] + " layer" for r in rows], fontsize=LABEL_PT)
    ax.set_ylabel("multiply-adds", fontsize=LABEL_PT)
    ax.legend(fontsize=LABEL_PT)
    ax.tick_params(labelsize=LABEL_PT - 2)


def draw_layers(fig, box, f: Focus, stacks: dict[int, Focus]):
    layers = sorted(stacks)
    n = len(layers)
    cols = min(n, 3)
    rows = -(-n // cols)
    axes = np.atleast_1d(fig.add_gridspec(rows, cols, left=box[0], right=box[1], bottom=0.08, top=0.85,
                                          wspace=0.05, hspace=0.2).subplots()).ravel()
    pts = np.concatenate([stacks[i].image_px[f.heads].reshape(-1, 2) for i in layers])
    pts = pts[np.isfinite(pts).all(1)]
    lo, hi = pts.min(0), pts.max(0)
    pad = 0.1 * max(hi[0] - lo[0], hi[1] - lo[1], 24.0)
    rect = (lo[0] - pad, lo[1] - pad, hi[0] + pad, hi[1] + pad)
    for ax, i in zip(axes, layers):
        s = stacks[i]
        _image_ax(ax, f, rect)
        _points(ax, s, s.image_px, scale=2.5)
        _ref(ax, *s.reference_image_px)
        ax.set_title(f"layer {i}", fontsize=LABEL_PT)
    for ax in axes[n:]:
        ax.set_visible(False)


def _one(fig, box, square: bool = True):
    return fig.add_axes([box[0], 0.1, box[1] - box[0], 0.74])


DRAW = {"pyramid": draw_pyramid, "query": draw_query, "heads": draw_heads, "offsets": draw_offsets,
        "bilinear": draw_bilinear, "weights": draw_weights, "sum": draw_sum, "cost": draw_cost}


def slide(f: Focus, index: int, stacks: dict[int, Focus] | None = None) -> Figure:
    """One 16:9 slide for step ``index``: title, the figure on the left, the text on the right."""
    step = STEPS[index]
    fig = Figure(figsize=PAGE_IN, facecolor="white")
    fig.text(0.03, 0.93, f"{index + 1}. {step.title}", fontsize=TITLE_PT, weight="bold", va="center")
    fig.text(0.97, 0.93, f"{f.what}, layer {f.layer}", fontsize=LABEL_PT, ha="right", va="center", color="#555555")
    box = (0.04, 0.50)
    if step.id == "layers":
        draw_layers(fig, box, f, stacks if stacks is not None else layer_stack(f.capture, f))
    else:
        DRAW[step.id](fig, box, f)
    body = plain(TEXTS[step.id](f))
    fig.text(0.54, 0.84, "\n".join(textwrap.wrap(body, TEXT_WRAP)), fontsize=TEXT_PT, va="top", linespacing=1.3)
    return fig


def export_slides(f: Focus, stacks: dict[int, Focus] | None, out_dir, stem: str = "lesson") -> SlideFiles:
    """Write ``stem.pdf`` (one page per step) and ``stem_NN.png`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stacks = stacks if stacks is not None else layer_stack(f.capture, f)
    pdf_path, pngs = out / f"{stem}.pdf", []
    with PdfPages(pdf_path) as pdf:
        for i in range(len(STEPS)):
            fig = slide(f, i, stacks)
            pdf.savefig(fig)
            png = out / f"{stem}_{i + 1:02d}_{STEPS[i].id}.png"
            fig.savefig(png, dpi=PNG_DPI)
            pngs.append(png)
    return SlideFiles(pdf_path, pngs)
