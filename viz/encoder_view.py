"""Where an encoder token samples: pick any image point and a level, see the token there (its
own cell centre is its reference point, the green cross) and its points on every level.

(x, y) are original-image pixels (e.g. a click mapped with ``viz.raster.to_image_px``); the
token is the level-``level`` cell that holds the point (``Capture.encoder_points``).
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .query_view import table_figure, table_figure_mpl, table_raster
from .selection import Selection, encoder_table


def encoder_figure(capture, x: float, y: float, level: int = 0, selection: Selection = Selection(),
                   title: str | None = None) -> go.Figure:
    """Plotly view of the encoder token under (x, y) on ``level`` at ``selection.layer``."""
    return table_figure(capture, encoder_table(capture, x, y, level, selection), selection, title)


def encoder_figure_mpl(capture, x: float, y: float, level: int = 0, selection: Selection = Selection(),
                       title: str | None = None):
    """Matplotlib (paper) version of ``encoder_figure``."""
    return table_figure_mpl(capture, encoder_table(capture, x, y, level, selection), selection, title)


def render_encoder_overlay(capture, x: float, y: float, level: int = 0, selection: Selection = Selection(),
                           scale: float | None = None) -> np.ndarray:
    """RGB (H, W, 3) uint8 of ``encoder_figure`` for the explorer's clickable image."""
    return table_raster(capture, encoder_table(capture, x, y, level, selection), selection, scale)
