"""One look for every figure: colours, marker sizes, and the matplotlib style for papers.

Heads get a colour-blind-safe qualitative palette (Okabe & Ito, "Color Universal Design",
2008, in the order of the R Graphics Cookbook's ``cbPalette`` with grey last); weights get the
perceptually uniform ``viridis``; the reference point is a green cross as in Figure 6 of the
paper (Zhu et al., ICLR 2021). Matplotlib figures are built on ``matplotlib.figure.Figure``
directly, never through ``pyplot``, so no global state or GUI backend is touched and two
threads can draw at once.
"""
from __future__ import annotations

import contextlib
from functools import lru_cache

import matplotlib
import numpy as np
from matplotlib.figure import Figure

# Okabe-Ito; black replaced by grey so the 8th head stays visible on dark images.
HEAD_COLORS: tuple[str, ...] = (
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#009E73",  # bluish green
    "#F0E442",  # yellow
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#999999",  # grey
)
# Levels (finest to coarsest) reuse the palette from the other end, so a head colour and a
# level colour rarely meet in one figure with the same meaning.
LEVEL_COLORS: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#999999")
WEIGHT_CMAP = "viridis"  # sequential, colour-blind safe, monotone in lightness
HEAT_CMAP = "inferno"  # for densities over a photo: dark = nothing, bright = mass
GRAD_CMAP = "magma"
REFERENCE_COLOR = "#00E000"  # Figure 6: "reference point ... green cross"
BOX_COLOR = "#FFFFFF"  # drawn with a dark outline so it reads on any image
OUTLINE_COLOR = "#000000"
PROPOSAL_COLOR = "#56B4E9"
SELECTED_COLOR = "#E69F00"

# Marker area in points^2 for matplotlib (and diameter in px for plotly / raster) as a
# function of the attention weight: a square-root law so that *area* grows with weight,
# clipped below so that weight-0 points are still visible.
MIN_DIAMETER, MAX_DIAMETER = 3.0, 16.0


def head_color(m: int) -> str:
    """Colour of head ``m`` (cycles beyond 8 heads)."""
    return HEAD_COLORS[int(m) % len(HEAD_COLORS)]


def level_color(lvl: int) -> str:
    return LEVEL_COLORS[int(lvl) % len(LEVEL_COLORS)]


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def head_rgb(heads: np.ndarray) -> np.ndarray:
    """(N,) head indices -> (N, 3) uint8 colours."""
    table = np.array([hex_to_rgb(c) for c in HEAD_COLORS], dtype=np.uint8)
    return table[np.asarray(heads, dtype=np.int64) % len(HEAD_COLORS)]


@lru_cache(maxsize=8)
def lut(name: str, n: int = 256) -> np.ndarray:
    """(n, 3) uint8 lookup table of a matplotlib colormap (cached: building one costs ~1 ms)."""
    cmap = matplotlib.colormaps[name]
    return (cmap(np.linspace(0.0, 1.0, n))[:, :3] * 255 + 0.5).astype(np.uint8)


def colormap_rgb(values: np.ndarray, vmin: float, vmax: float, name: str = WEIGHT_CMAP) -> np.ndarray:
    """values (...,) -> (..., 3) uint8 through colormap ``name`` over [vmin, vmax]."""
    table = lut(name)
    span = vmax - vmin if vmax > vmin else 1.0
    idx = np.clip((np.asarray(values, dtype=np.float64) - vmin) / span, 0.0, 1.0) * (len(table) - 1)
    return table[np.round(idx).astype(np.int64)]


def marker_diameter(weights: np.ndarray, wmax: float | None = None) -> np.ndarray:
    """(N,) weights -> (N,) marker diameters (px), area proportional to weight / wmax."""
    w = np.asarray(weights, dtype=np.float64)
    top = float(wmax if wmax is not None else (w.max() if w.size else 1.0)) or 1.0
    return MIN_DIAMETER + (MAX_DIAMETER - MIN_DIAMETER) * np.sqrt(np.clip(w / top, 0.0, 1.0))


# ----------------------------------------------------------------------------- matplotlib

# Figure widths of two-column papers (inches): ICLR/NeurIPS text width is 5.5 in, a
# CVPR/ICCV column 3.25 in and its text width 6.875 in.
COLUMN_WIDTH = 3.25
TEXT_WIDTH = 6.875

PAPER_RC = {
    "font.family": "DejaVu Sans",
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "legend.fontsize": 6,
    "legend.frameon": False,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.0,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "figure.dpi": 100,
    # Text stays text: editable in Illustrator/Inkscape, searchable in the PDF; Type 42
    # (TrueType) instead of Type 3 fonts, which several publishers reject.
    "svg.fonttype": "none",
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "image.interpolation": "nearest",
}


@contextlib.contextmanager
def paper():
    """rcParams for paper figures; wrap both the drawing and the saving (fonttype is read at
    save time)."""
    with matplotlib.rc_context(PAPER_RC):
        yield


def new_figure(width: float = COLUMN_WIDTH, height: float = COLUMN_WIDTH, **kwargs) -> Figure:
    """A pyplot-free figure with the paper style (call inside ``paper()`` for the fonts)."""
    return Figure(figsize=(width, height), **kwargs)


def image_axes(ax, w: float, h: float) -> None:
    """Image axes: pixel frame with y down, edges at integers, no ticks."""
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def style_colorbar(cb, label: str) -> None:
    """Thin outline, plain tick labels (no '1e-3 + offset' header), a label."""
    from matplotlib.ticker import FormatStrFormatter

    cb.set_label(label)
    cb.outline.set_linewidth(0.4)
    cb.ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    cb.ax.tick_params(width=0.4, length=2)


# ----------------------------------------------------------------------------- plotly

PLOTLY_FONT = dict(family="DejaVu Sans, Arial, sans-serif", size=12)


def plotly_rgba(color: str, alpha: float) -> str:
    r, g, b = hex_to_rgb(color)
    return f"rgba({r},{g},{b},{alpha:.3g})"
