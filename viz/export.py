"""Figures to files and arrays: matplotlib -> PNG / SVG / PDF / RGB array, plotly -> HTML.

Saving happens inside ``style.paper()`` because matplotlib reads the font embedding
(``pdf.fonttype = 42``, ``svg.fonttype = 'none'``) at save time, not at draw time.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from .style import paper

FORMATS = ("png", "svg", "pdf")


def save_figure(fig, path, formats: tuple[str, ...] | None = None, dpi: int = 300) -> list[Path]:
    """Write a matplotlib figure. ``path`` with a suffix writes that format; without one (or
    with ``formats``) writes ``path.png``, ``path.svg``, ``path.pdf``. Returns the files."""
    path = Path(path)
    if formats is None:
        suffix = path.suffix.lower().lstrip(".")
        if suffix in FORMATS:
            formats, path = (suffix,), path.with_suffix("")
        elif suffix:
            raise ValueError(f"cannot write a figure as .{suffix}; use one of {', '.join('.' + f for f in FORMATS)}")
        else:
            formats = FORMATS
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown figure formats {bad}; use {FORMATS}")
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    with paper():
        for fmt in formats:
            target = path.parent / f"{path.name}.{fmt}"
            # metadata: no creation date, so the same figure gives the same bytes
            meta = {"Software": None} if fmt == "png" else ({"Date": None} if fmt == "svg" else {"CreationDate": None})
            fig.savefig(target, format=fmt, dpi=dpi, metadata=meta)
            out.append(target)
    return out


def figure_to_array(fig, dpi: int = 100, tight: bool = True) -> np.ndarray:
    """Render a matplotlib figure with Agg -> (H, W, 3) uint8 (no file, no pyplot), cropped
    like the saved files (``bbox_inches='tight'``) unless ``tight=False``."""
    with paper():
        if not tight:
            fig.set_dpi(dpi)
            canvas = FigureCanvasAgg(fig)
            canvas.draw()
            return np.asarray(canvas.buffer_rgba())[..., :3].copy()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        buf.seek(0)
        return np.asarray(Image.open(buf).convert("RGB"))


def save_plotly(fig, path, include_plotlyjs: bool | str = True) -> Path:
    """A plotly figure as a stand-alone HTML file (plotly.js inlined: works offline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(os.fspath(path), include_plotlyjs=include_plotlyjs, full_html=True,
                   config={"displaylogo": False, "scrollZoom": True})
    return path
