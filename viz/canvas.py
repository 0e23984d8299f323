"""The image under every figure, in the three backends, all in one frame.

Frame: original-image pixels, continuous, edges at integers (pixel i spans [i, i + 1)), the
convention of ``ddetr.frames`` and of ``Detections`` boxes. Plotly draws the image with
``x0 = y0 = 0.5`` (its x0 is a pixel *centre*), matplotlib with ``extent=(0, w, h, 0)``, and
the raster backend scales by ``s`` (display pixel = s * image pixel), so points, boxes and
images overlay without half-pixel corrections.
"""
from __future__ import annotations

import base64
import io
import weakref

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from . import fastplot as fp
from .style import PLOTLY_FONT, image_axes

_CACHES: dict[int, tuple[weakref.ref, dict]] = {}


def image_cache(image: np.ndarray) -> dict:
    """A dict that lives as long as ``image`` (keyed by the array object): derived pictures
    (PNG encodings, level-resolution versions) are made once per capture, not per redraw."""
    key = id(image)
    hit = _CACHES.get(key)
    if hit is not None and hit[0]() is image:
        return hit[1]
    try:
        ref = weakref.ref(image, lambda _r, k=key: _CACHES.pop(k, None))
    except TypeError:  # not weak-referenceable: a throwaway dict, no caching
        return {}
    _CACHES[key] = (ref, {})
    return _CACHES[key][1]


def _encode_jpeg(image: np.ndarray) -> str:
    # JPEG, not PNG: the picture is a backdrop under the figure's marks, and a photograph (or a
    # noisy synthetic scene) is 5-8x smaller as a quality-90 JPEG (a 276x312 scene: 242 KiB as a
    # fast PNG, ~35 KiB here). Every plotly figure carries it, a heatmap figure once per panel, so
    # its size was most of what a tab sent and what the browser decoded on opening it.
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).convert("RGB").save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_data_uri(image: np.ndarray, cache_on: np.ndarray | None = None, key=None) -> str:
    """(h, w, 3) uint8 -> 'data:image/jpeg;base64,...' (encoding a 320x427 image costs ~2 ms;
    the explorer redraws the same image many times, so the result is cached on ``cache_on``
    (default: the image itself) under ``key``)."""
    cache = image_cache(image if cache_on is None else cache_on)
    k = ("jpeg", key)
    if k not in cache:
        cache[k] = _encode_jpeg(image)
    return cache[k]


def image_size(image: np.ndarray) -> tuple[int, int]:
    """(w, h) of an (h, w, 3) image."""
    return int(image.shape[1]), int(image.shape[0])


# ----------------------------------------------------------------------------- plotly

def plotly_image(image: np.ndarray, xaxis: str = "x", yaxis: str = "y", opacity: float = 1.0,
                 cache_on: np.ndarray | None = None, key=None) -> go.Image:
    """The image as a trace whose pixel i spans [i, i + 1) on both axes."""
    return fp.Image(source=image_data_uri(image, cache_on, key), x0=0.5, y0=0.5, dx=1, dy=1, xaxis=xaxis, yaxis=yaxis,
                    hoverinfo="skip", opacity=opacity)


def plotly_image_at(image: np.ndarray, rect, xaxis: str = "x", yaxis: str = "y", cache_on=None, key=None) -> go.Image:
    """An (h', w', 3) picture stretched over the image-pixel rectangle rect = (x0, y0, x1, y1)
    (a crop, or a downscaled crop: one picture pixel then spans several image pixels)."""
    x0, y0, x1, y1 = (float(v) for v in rect)
    h, w = image.shape[:2]
    dx, dy = (x1 - x0) / w, (y1 - y0) / h
    return fp.Image(source=image_data_uri(image, cache_on, key), x0=x0 + dx / 2, y0=y0 + dy / 2, dx=dx, dy=dy,
                    xaxis=xaxis, yaxis=yaxis, hoverinfo="skip")


def crop(image: np.ndarray, rect, max_side: int | None = None, fill: int = 221
         ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The part of ``image`` in rect = (x0, y0, x1, y1) (image px, grown to whole pixels);
    what lies outside the image is grey (``fill``). Downscaled so that its longer side is
    at most ``max_side``. Returns (picture, the rectangle it covers)."""
    w, h = image_size(image)
    X0, Y0 = int(np.floor(rect[0])), int(np.floor(rect[1]))
    X1, Y1 = max(int(np.ceil(rect[2])), X0 + 1), max(int(np.ceil(rect[3])), Y0 + 1)
    pic = np.full((Y1 - Y0, X1 - X0, 3), fill, dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(X0, 0), max(Y0, 0), min(X1, w), min(Y1, h)
    if sx1 > sx0 and sy1 > sy0:
        pic[sy0 - Y0: sy1 - Y0, sx0 - X0: sx1 - X0] = image[sy0:sy1, sx0:sx1]
    if max_side is not None and max(pic.shape[:2]) > max_side:
        f = max_side / max(pic.shape[:2])
        size = (max(1, round(pic.shape[1] * f)), max(1, round(pic.shape[0] * f)))
        pic = np.asarray(Image.fromarray(pic).resize(size, Image.BOX))
    return pic, (float(X0), float(Y0), float(X1), float(Y1))


def image_axis_layout(w: float, h: float, anchor: str = "x", domain_x=(0.0, 1.0), domain_y=(0.0, 1.0)) -> tuple[dict, dict]:
    """(xaxis, yaxis) layout dicts of an image panel: y down, equal aspect, no ticks."""
    ax = dict(range=[0, w], domain=list(domain_x), showgrid=False, zeroline=False, showticklabels=False,
              ticks="", constrain="domain")
    ay = dict(range=[h, 0], domain=list(domain_y), showgrid=False, zeroline=False, showticklabels=False,
              ticks="", scaleanchor=anchor, scaleratio=1, constrain="domain")
    return ax, ay


def plotly_panels(rows: int, cols: int, w: float, h: float, titles: list[str] | None = None,
                  gap: float = 0.02, title_space: float = 0.04) -> tuple[dict, list[tuple[str, str]]]:
    """Layout of a rows x cols grid of image panels, built directly (``make_subplots`` costs
    ~5 ms per panel, too slow for 24 panels at interactive speed).

    Returns (layout dict, [(xaxis name, yaxis name)] in row-major order), names as traces
    use them ("x", "x2", ...).
    """
    layout: dict = {}
    names = []
    annotations = []
    cw = (1.0 - gap * (cols - 1)) / cols
    ch = (1.0 - gap * (rows - 1)) / rows
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c + 1
            xn, yn = ("x", "y") if i == 1 else (f"x{i}", f"y{i}")
            x0 = c * (cw + gap)
            y1 = 1.0 - r * (ch + gap)
            top = y1 - (title_space if titles else 0.0)  # room for the panel title
            ax, ay = image_axis_layout(w, h, anchor=xn, domain_x=(x0, x0 + cw), domain_y=(max(y1 - ch, 0.0), top))
            ax["anchor"], ay["anchor"] = yn, xn
            layout["xaxis" if i == 1 else f"xaxis{i}"] = ax
            layout["yaxis" if i == 1 else f"yaxis{i}"] = ay
            names.append((xn, yn))
            if titles and i - 1 < len(titles):
                annotations.append(dict(text=titles[i - 1], x=x0 + cw / 2, y=y1, xref="paper", yref="paper",
                                        xanchor="center", yanchor="top", showarrow=False, font=dict(size=11)))
    layout["annotations"] = annotations
    return layout, names


def base_layout(title: str | None = None, width: int | None = None, height: int | None = None,
                legend: bool = True) -> dict:
    return dict(title=dict(text=title, x=0.01, xanchor="left", font=dict(size=14)) if title else None,
                font=PLOTLY_FONT, margin=dict(l=8, r=8, t=40 if title else 8, b=8), width=width, height=height,
                showlegend=legend, plot_bgcolor="white", paper_bgcolor="white", hovermode="closest",
                legend=dict(itemsizing="constant", bgcolor="rgba(255,255,255,0.8)"), dragmode="pan")


# ----------------------------------------------------------------------------- matplotlib

def mpl_image(ax, image: np.ndarray, alpha: float = 1.0, extent_of: np.ndarray | None = None) -> None:
    """Draw ``image`` on ``ax`` in the image-pixel frame (and set up the axes for it);
    ``extent_of``: stretch a smaller picture (a level's) over that image's extent, its
    pixels kept sharp."""
    w, h = image_size(image if extent_of is None else extent_of)
    interp = "antialiased" if extent_of is None else "nearest"
    ax.imshow(image, extent=(0, w, h, 0), interpolation=interp, alpha=alpha, zorder=0)
    image_axes(ax, w, h)


# ----------------------------------------------------------------------------- level resolution

def level_picture(image: np.ndarray, geometry, level: int) -> np.ndarray:
    """The image as level ``level`` resolves it: one pixel per valid feature cell, the mean
    colour of the image pixels the cell covers. (h, w, 3) uint8 -> (valid_h, valid_w, 3).

    Which cell covers a pixel is ``geometry.image_to_level`` of the pixel centre, the
    model's own mapping (``ddetr.frames``); the picture spans the whole image, so draw it
    with the image's extent. Cached per image and geometry.
    """
    key = ("level", level, geometry.spatial_shapes.tobytes(), geometry.valid_ratios.tobytes())
    cache = image_cache(image)
    if key not in cache:
        w, h = image_size(image)
        ix, iy = level_cells(geometry, level, w, h)
        vw, vh = np.maximum(np.round(geometry.valid_wh[level]).astype(np.int64), 1)
        cell = (iy[:, None] * vw + ix[None, :]).ravel()  # (h * w,) flat cell index
        counts = np.maximum(np.bincount(cell, minlength=vw * vh), 1).astype(np.float64)
        pic = np.stack([np.bincount(cell, weights=image[..., c].ravel().astype(np.float64), minlength=vw * vh) / counts
                        for c in range(3)], -1)
        cache[key] = np.round(pic).astype(np.uint8).reshape(vh, vw, 3)
    return cache[key]


def level_cells(geometry, level: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Column (w,) and row (h,) of the level-``level`` cell that holds each image pixel centre."""
    xs = geometry.image_to_level(np.stack([np.arange(w) + 0.5, np.full(w, 0.5)], -1), level)[:, 0]
    ys = geometry.image_to_level(np.stack([np.full(h, 0.5), np.arange(h) + 0.5], -1), level)[:, 1]
    vw, vh = np.maximum(np.round(geometry.valid_wh[level]).astype(np.int64), 1)
    return np.clip(np.floor(xs).astype(np.int64), 0, vw - 1), np.clip(np.floor(ys).astype(np.int64), 0, vh - 1)


def level_grid_lines(geometry, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell boundaries of level ``level`` in image pixels: (xs, ys) of the vertical and
    horizontal lines over the valid (unpadded) part of the map."""
    vw, vh = np.round(geometry.valid_wh[level]).astype(np.int64)
    xs = geometry.level_to_image(np.stack([np.arange(vw + 1), np.zeros(vw + 1)], -1), level)[:, 0]
    ys = geometry.level_to_image(np.stack([np.zeros(vh + 1), np.arange(vh + 1)], -1), level)[:, 1]
    return xs, ys


def grid_polyline(xs: np.ndarray, ys: np.ndarray) -> tuple[list, list]:
    """Grid lines as one plotly polyline with None breaks (one trace instead of hundreds)."""
    px, py = [], []
    y0, y1 = float(ys[0]), float(ys[-1])
    x0, x1 = float(xs[0]), float(xs[-1])
    for x in xs.tolist():
        px += [x, x, None]
        py += [y0, y1, None]
    for y in ys.tolist():
        px += [x0, x1, None]
        py += [y, y, None]
    return px, py


def box_polyline(boxes: np.ndarray) -> tuple[list, list]:
    """(N, 4) xyxy boxes -> one closed polyline per box, None-separated."""
    px, py = [], []
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4).tolist():
        px += [x0, x1, x1, x0, x0, None]
        py += [y0, y0, y1, y1, y0, None]
    return px, py

