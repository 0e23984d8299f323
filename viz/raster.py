"""Fast RGB rendering with PIL, for the explorer's clickable ``gr.Image`` (a few ms a frame).

A ``Raster`` is the original image scaled by ``scale`` (display pixel = scale x image pixel);
every drawing call takes original-image pixels, so a click at display (u, v) is image point
(u / scale, v / scale): ``to_image_px``. ``display_scale`` picks the scale the explorer uses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .style import BOX_COLOR, OUTLINE_COLOR, REFERENCE_COLOR, colormap_rgb, hex_to_rgb

DEFAULT_MAX_SIDE = 800  # display size of the longer side; markers are drawn at this size


def display_scale(image_shape, max_side: int = DEFAULT_MAX_SIDE) -> float:
    """Scale from image pixels to display pixels for an (h, w, ...) image."""
    h, w = int(image_shape[0]), int(image_shape[1])
    return float(max_side) / float(max(h, w))


def to_image_px(u: float, v: float, scale: float) -> tuple[float, float]:
    """A display pixel index (e.g. ``gr.SelectData.index``) -> original-image pixel point
    (the pixel's centre)."""
    return (u + 0.5) / scale, (v + 0.5) / scale


def fit_scale(w: float, h: float, box: tuple[float, float]) -> float:
    """The scale that shows a w x h region as large as fits in a ``box`` (width, height) of
    display pixels: pictures are drawn at the size the browser shows them, never upscaled by it."""
    return min(float(box[0]) / float(w), float(box[1]) / float(h))


@dataclass(frozen=True)
class Panel:
    """One panel of a picture: display pixels [left, left + width) x [top, top + height) show
    image pixels from ``origin`` (x, y) at ``scale``; ``level`` is the feature level it shows
    (None: the image with every level merged)."""

    level: int | None
    left: int
    top: int
    width: int
    height: int
    origin: tuple[float, float]
    scale: float

    def image_point(self, u: float, v: float) -> tuple[float, float] | None:
        """Display pixel index (u, v) of the whole picture -> image point (pixel centre), or
        None when (u, v) is outside this panel."""
        if not (self.left <= u < self.left + self.width and self.top <= v < self.top + self.height):
            return None
        return (self.origin[0] + (u - self.left + 0.5) / self.scale,
                self.origin[1] + (v - self.top + 0.5) / self.scale)


def panel_layout(rect, levels, merged: bool, box: tuple[float, float], gap: int = 4) -> list[Panel]:
    """Panels showing image region ``rect`` (x0, y0, x1, y1) in a picture that fits ``box``:
    one panel when ``merged``, else one per level in a near-square grid (row-major)."""
    x0, y0, x1, y1 = (float(v) for v in rect)
    w, h = x1 - x0, y1 - y0
    n = 1 if merged else len(levels)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    scale = fit_scale(w * cols, h * rows, (box[0] - gap * (cols - 1), box[1] - gap * (rows - 1)))
    pw, ph = max(1, round(w * scale)), max(1, round(h * scale))
    out = []
    for i, lvl in enumerate([None] if merged else list(levels)):
        r, c = divmod(i, cols)
        out.append(Panel(lvl, c * (pw + gap), r * (ph + gap), pw, ph, (x0, y0), scale))
    return out


@lru_cache(maxsize=16)
def label_font(size: int):
    """A scalable font of ``size`` display pixels (Pillow's built-in one when FreeType is there)."""
    try:
        return ImageFont.load_default(size=max(8, int(size)))
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _rgb(c) -> tuple[int, int, int]:
    if isinstance(c, str):
        return hex_to_rgb(c)
    return tuple(int(v) for v in c)[:3]


class Raster:
    """RGB canvas over an image; coordinates in original-image pixels (edges at integers)."""

    def __init__(self, image: np.ndarray, scale: float | None = None, dim: float = 0.0, origin=(0.0, 0.0),
                 picture: np.ndarray | None = None, size: tuple[int, int] | None = None, font_px: float | None = None):
        """``image`` covers image pixels from ``origin`` (x, y) on (a crop has its corner there);
        ``picture`` (any size) is shown instead of it, stretched over it with sharp pixels.
        ``size`` (w, h) fixes the display size (else image size x scale); ``font_px`` the label
        height (else it grows with the picture, 12 px per 600 display px, at least 11)."""
        self.scale = display_scale(image.shape) if scale is None else float(scale)
        self.origin = np.asarray(origin, dtype=np.float64)
        h, w = image.shape[:2]
        self.size = size or (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
        self.font = label_font(round(font_px or max(11.0, max(self.size) / 50.0)))
        if picture is not None:
            base = Image.fromarray(np.ascontiguousarray(picture)).resize(self.size, Image.NEAREST)
        else:
            base = Image.fromarray(np.ascontiguousarray(image))
            if self.size != (w, h):
                base = base.resize(self.size, Image.BILINEAR if self.scale > 1 else Image.BOX)
        if dim > 0:  # darken so that overlays stand out
            base = Image.eval(base, lambda v: int(v * (1.0 - dim)))
        self.im = base.convert("RGB")
        self.draw = ImageDraw.Draw(self.im)

    def _xy(self, xy) -> np.ndarray:
        return (np.asarray(xy, dtype=np.float64).reshape(-1, 2) - self.origin) * self.scale

    def points(self, xy, colors, diameters, outline=OUTLINE_COLOR, order=None) -> None:
        """Filled circles: xy (N, 2) image px, colors (N, 3) uint8, diameters (N,) display px.
        Drawn lightest-first (``order``: indices, e.g. ascending weight) so heavy points stay on top."""
        pts = self._xy(xy)
        cols = np.asarray(colors)
        d = np.broadcast_to(np.asarray(diameters, dtype=np.float64), (len(pts),))
        idx = range(len(pts)) if order is None else order
        out = _rgb(outline) if outline is not None else None
        for i in idx:
            x, y = pts[i]
            if not (np.isfinite(x) and np.isfinite(y)):
                continue
            r = d[i] / 2
            self.draw.ellipse([x - r, y - r, x + r, y + r], fill=_rgb(cols[i]), outline=out, width=1)

    def cross(self, xy, size: float = 14.0, color=REFERENCE_COLOR, width: int = 3) -> None:
        """The reference point: a '+' with a dark outline."""
        for x, y in self._xy(xy):
            r = size / 2
            for col, wd in ((OUTLINE_COLOR, width + 2), (color, width)):
                self.draw.line([x - r, y, x + r, y], fill=_rgb(col), width=wd)
                self.draw.line([x, y - r, x, y + r], fill=_rgb(col), width=wd)

    def box(self, xyxy, color=BOX_COLOR, width: int = 2, label: str | None = None, dashed: bool = False) -> None:
        """An xyxy box (image px) with a dark halo and an optional label above it."""
        x0, y0, x1, y1 = ((np.asarray(xyxy, dtype=np.float64) - np.tile(self.origin, 2)) * self.scale).tolist()
        if dashed:
            self._dashed_rect(x0, y0, x1, y1, color, width)
        else:
            self.draw.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], outline=_rgb(OUTLINE_COLOR), width=width + 2)
            self.draw.rectangle([x0, y0, x1, y1], outline=_rgb(color), width=width)
        if label:
            self.label(x0, y0, label)

    def _dashed_rect(self, x0, y0, x1, y1, color, width, dash: float = 6.0) -> None:
        for a, b in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
            a, b = np.array(a), np.array(b)
            n = max(int(np.linalg.norm(b - a) / dash), 1)
            for k in range(0, n, 2):
                p, q = a + (b - a) * k / n, a + (b - a) * min(k + 1, n) / n
                self.draw.line([tuple(p), tuple(q)], fill=_rgb(color), width=width)

    def label(self, x: float, y: float, text: str) -> None:
        """Text on a dark background, its lower-left corner at display point (x, y)."""
        font = self.font
        l, t, r, b = self.draw.textbbox((0, 0), text, font=font)
        y = max(y - (b - t) - 4, 0)
        self._label_at(x, y, text)

    def _label_at(self, x: float, y: float, text: str) -> None:
        l, t, r, b = self.draw.textbbox((0, 0), text, font=self.font)
        self.draw.rectangle([x, y, x + (r - l) + 4, y + (b - t) + 4], fill=(0, 0, 0))
        self.draw.text((x + 2 - l, y + 2 - t), text, fill=(255, 255, 255), font=self.font)

    def box_labels(self, items) -> int:
        """Labels for boxes without covering each other: ``items`` [(xyxy image px, text)] in
        priority order (the first is always drawn). Each label goes above its box's top-left
        corner, else just inside it, else below the box, shifted left to stay in the picture;
        a label that fits nowhere free is left out (the detections list names every box).
        Returns how many were drawn."""
        W, H = self.size
        taken: list[tuple[float, float, float, float]] = []
        for n, (xyxy, text) in enumerate(items):
            x0, y0, x1, y1 = ((np.asarray(xyxy, dtype=np.float64) - np.tile(self.origin, 2)) * self.scale).tolist()
            l, t, r, b = self.draw.textbbox((0, 0), text, font=self.font)
            w, h = (r - l) + 4, (b - t) + 4
            x = min(max(x0, 0.0), max(W - w, 0.0))
            for y in (y0 - h, y0 + 1, y1 + 1):
                y = min(max(y, 0.0), max(H - h, 0.0))
                rect = (x, y, x + w, y + h)
                if n == 0 or not any(rect[0] < q[2] and q[0] < rect[2] and rect[1] < q[3] and q[1] < rect[3]
                                     for q in taken):
                    taken.append(rect)
                    self._label_at(x, y, text)
                    break
        return len(taken)

    def lines(self, start, end, colors, width: int = 1, head: float = 0.0) -> None:
        """Segments start (N, 2) -> end (N, 2) in image px; ``head`` > 0 adds arrow heads (display px)."""
        s, e = self._xy(start), self._xy(end)
        cols = np.asarray(colors)
        for i in range(len(s)):
            c = _rgb(cols[i] if cols.ndim > 1 else cols)
            self.draw.line([tuple(s[i]), tuple(e[i])], fill=c, width=width)
            v = e[i] - s[i]
            n = np.linalg.norm(v)
            if head > 0 and n > 1e-6:
                u = v / n
                p = np.array([-u[1], u[0]])
                tip = e[i]
                self.draw.polygon([tuple(tip), tuple(tip - u * head + p * head * 0.5),
                                   tuple(tip - u * head - p * head * 0.5)], fill=c)

    def polyline(self, xy, color, width: int = 2) -> None:
        pts = [tuple(p) for p in self._xy(xy)]
        if len(pts) > 1:
            self.draw.line(pts, fill=_rgb(color), width=width)

    def grid(self, xs, ys, color=(255, 255, 255), alpha: float = 0.35) -> None:
        """Cell boundaries: vertical lines at xs, horizontal at ys (image px), translucent."""
        overlay = Image.new("RGBA", self.im.size, (0, 0, 0, 0))
        d = ImageDraw.Draw(overlay)
        rgba = (*_rgb(color), int(255 * alpha))
        xs = (np.asarray(xs, dtype=np.float64) - self.origin[0]) * self.scale
        ys = (np.asarray(ys, dtype=np.float64) - self.origin[1]) * self.scale
        x0, x1, y0, y1 = float(xs[0]), float(xs[-1]), float(ys[0]), float(ys[-1])
        for x in xs:
            d.line([(x, y0), (x, y1)], fill=rgba, width=1)
        for y in ys:
            d.line([(x0, y), (x1, y)], fill=rgba, width=1)
        self.im = Image.alpha_composite(self.im.convert("RGBA"), overlay).convert("RGB")
        self.draw = ImageDraw.Draw(self.im)

    def heat(self, density: np.ndarray, cmap: str, alpha: float = 0.7, vmax: float | None = None) -> None:
        """Blend a (h', w') non-negative map stretched over the whole image: colour from
        ``cmap``, opacity growing with the value so that zero leaves the image visible."""
        d = np.asarray(density, dtype=np.float64)
        top = float(vmax if vmax is not None else (d.max() if d.size else 0.0))
        norm = np.clip(d / top, 0.0, 1.0) if top > 0 else np.zeros_like(d)
        rgb = colormap_rgb(norm, 0.0, 1.0, cmap)  # (h', w', 3)
        a = (np.sqrt(norm) * alpha * 255).astype(np.uint8)
        layer = Image.fromarray(np.dstack([rgb, a]), "RGBA")
        if layer.size != self.im.size:
            layer = layer.resize(self.im.size, Image.BILINEAR)
        self.im = Image.alpha_composite(self.im.convert("RGBA"), layer).convert("RGB")
        self.draw = ImageDraw.Draw(self.im)

    def array(self) -> np.ndarray:
        """(H, W, 3) uint8 display image."""
        return np.asarray(self.im)


def tile(tiles: list[np.ndarray], rows: int, cols: int, gap: int = 4) -> np.ndarray:
    """Equal-sized (h, w, 3) pictures in a rows x cols mosaic on white, row-major."""
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    out = np.full((rows * th + (rows - 1) * gap, cols * tw + (cols - 1) * gap, 3), 255, dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * (th + gap): r * (th + gap) + t.shape[0], c * (tw + gap): c * (tw + gap) + t.shape[1]] = t
    return out
