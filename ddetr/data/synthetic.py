"""Synthetic shapes: a small detection dataset that needs every feature level.

Eight shape classes, told apart by shape alone (colours are random and independent of the
class), rotated, from ~10 px to ~3/4 of the shorter image side, so objects land on every
level of a stride 8..64 feature pyramid; they overlap partly (never more than ``max_hidden``
of an object is covered) over gradient, striped, checkered or noisy backgrounds with
distractor strokes and soft blobs that are not objects.

Boxes are the tight box of the *visible* pixels (the COCO convention: boxes of the visible
segmentation), measured on a 4x supersampled mask, so they are exact to 1/4 px and include
rotation and occlusion.

Every scene is a pure function of one integer seed; a dataset image's seed is
``scene_seed(seed, split, index)``, so the files do not depend on the number of workers:

    python -m ddetr.data.synthetic --out data/synthetic --train 5000 --val 500 --seed 0
    python -m ddetr.data.synthetic --examples examples/synthetic --count 6 --seed 777
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Category id of SYNTHETIC_CLASSES[i] is i + 1 (COCO ids start at 1; label 0 stays unused,
# as in the official COCO convention, so num_classes = len(SYNTHETIC_CLASSES) + 1).
# A hexagon/octagon was left out on purpose: at 10 px it is indistinguishable from a circle.
SYNTHETIC_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "ring", "ellipse", "crescent",
)

_SS = 4  # supersampling of object masks: anti-aliased edges, boxes exact to 1/4 px


@dataclass(frozen=True)
class SceneParams:
    """How scenes are drawn. Sizes in pixels."""

    min_size: int = 256  # width and height drawn independently from [min_size, max_size]
    max_size: int = 384
    max_objects: int = 10  # 1..max_objects are attempted; some may not fit
    # Object size = diameter of its circumscribed circle, log-uniform so that every octave
    # (hence every pyramid level, strides 8..64) gets the same share of objects.
    min_object: float = 10.0
    max_object_frac: float = 0.75  # of the shorter image side: boxes beyond half the image
    max_hidden: float = 0.3  # objects drawn later may cover at most this fraction of one
    clutter: bool = True  # False: flat background, no distractors, no noise (for tests)


@dataclass(frozen=True)
class SceneObject:
    """One annotated object: category id (1..K), visible box xyxy in pixels, visible area."""

    category_id: int
    box: tuple[float, float, float, float]
    area: float
    visible_fraction: float


def scene_seed(seed: int, split: str, index: int) -> int:
    """The seed of image ``index`` of ``split``: a hash of the three, independent of workers."""
    seq = np.random.SeedSequence(entropy=seed, spawn_key=(zlib.crc32(split.encode()), index))
    lo, hi = seq.generate_state(2, np.uint32)
    return int(hi) << 32 | int(lo)


# ----------------------------------------------------------------------------- shapes


def _circle(n: int, ry: float = 1.0) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), ry * np.sin(t)], 1)


def _shape(name: str, rng: np.random.Generator, diameter: float) -> list[tuple[np.ndarray, int]]:
    """Polygons (V, 2) of a shape of circumradius 1, each with its fill (255 = ink, 0 = hole)."""
    n = int(np.clip(diameter, 24, 96))  # polygonal circles: < 0.1 px off at any size
    if name == "circle":
        return [(_circle(n), 255)]
    if name == "square":
        return [(np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]]) / math.sqrt(2), 255)]
    if name == "triangle":
        t = np.deg2rad([90, 210, 330])
        return [(np.stack([np.cos(t), np.sin(t)], 1), 255)]
    if name == "star":  # sharp points (inner radius 0.42) keep it distinct from a pentagon blob
        t = np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return [(np.stack([r * np.cos(t), r * np.sin(t)], 1), 255)]
    if name == "cross":  # a plus sign, arms a third of its width thick
        w = 0.3
        p = np.array([[w, 1], [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w],
                      [-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w]])
        return [(p / math.hypot(1, w), 255)]
    if name == "ring":  # hole >= 5 px at the smallest size
        return [(_circle(n), 255), (0.55 * _circle(n), 0)]
    if name == "ellipse":  # aspect 2..2.9: never mistaken for a circle
        return [(_circle(n, ry=rng.uniform(0.35, 0.5)), 255)]
    if name == "crescent":
        return [(_circle(n), 255), (0.8 * _circle(n) + [0.45, 0.0], 0)]
    raise ValueError(f"unknown shape {name!r}; known: {SYNTHETIC_CLASSES}")


@dataclass
class _Placed:
    """An object on the canvas: hi-res mask (bool, crop-local) and what is still visible."""

    category_id: int
    ox: int  # crop origin in image pixels
    oy: int
    mask: np.ndarray  # (h*SS, w*SS) bool
    visible: np.ndarray  # same shape, mask minus what later objects cover
    ink: int  # mask.sum()


def _rasterize(polys, ox: int, oy: int, w: int, h: int) -> np.ndarray:
    """Fill polygons given in image pixels into a (h*SS, w*SS) bool mask with origin (ox, oy)."""
    im = Image.new("L", (w * _SS, h * _SS), 0)
    draw = ImageDraw.Draw(im)
    for pts, fill in polys:
        # PIL puts integer coordinates at hi-res pixel centres, hence the -0.5.
        xy = ((pts - [ox, oy]) * _SS - 0.5).ravel().tolist()
        draw.polygon(xy, fill=fill)
    return np.asarray(im) > 127


def _overlap(a: _Placed, b: _Placed):
    """Hi-res slices of a and b covering their common area, or None."""
    ah, aw = a.mask.shape
    bh, bw = b.mask.shape
    x0, y0 = max(a.ox * _SS, b.ox * _SS), max(a.oy * _SS, b.oy * _SS)
    x1, y1 = min(a.ox * _SS + aw, b.ox * _SS + bw), min(a.oy * _SS + ah, b.oy * _SS + bh)
    if x1 <= x0 or y1 <= y0:
        return None
    sa = (slice(y0 - a.oy * _SS, y1 - a.oy * _SS), slice(x0 - a.ox * _SS, x1 - a.ox * _SS))
    sb = (slice(y0 - b.oy * _SS, y1 - b.oy * _SS), slice(x0 - b.ox * _SS, x1 - b.ox * _SS))
    return sa, sb


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    h, s, v = rng.uniform(0, 1), rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, np.float32) * 255


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A colour that stands out from (N, 3) pixels it will cover (10th-percentile distance)."""
    cands = [_random_colour(rng) for _ in range(8)]
    cands.append(np.float32(255) - under.mean(0))  # the complement: a safe fallback
    scores = [np.percentile(np.linalg.norm(under - c, axis=1), 10) for c in cands]
    return cands[int(np.argmax(scores))]


# ----------------------------------------------------------------------------- background


def _stroke_alpha(W: int, H: int, draw_fn) -> np.ndarray:
    """Coverage (H, W) float32 of strokes drawn by ``draw_fn(ImageDraw, scale=2)``, anti-aliased."""
    im = Image.new("L", (2 * W, 2 * H), 0)
    draw_fn(ImageDraw.Draw(im))
    return np.asarray(im.reduce(2), np.float32) / 255


def _background(rng: np.random.Generator, W: int, H: int, clutter: bool) -> np.ndarray:
    """(H, W, 3) float32 background: gradient + texture + distractors (not objects)."""
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    if not clutter:
        return np.broadcast_to(c0, (H, W, 3)).copy()
    xs = np.arange(W, dtype=np.float32)[None, :]
    ys = np.arange(H, dtype=np.float32)[:, None]
    if rng.random() < 0.6:
        a = rng.uniform(0, 2 * np.pi)
        t = xs * math.cos(a) + ys * math.sin(a)
    else:
        t = np.hypot(xs - rng.uniform(0, W), ys - rng.uniform(0, H))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    bg = c0 + (c1 - c0) * t[..., None]  # (H, W, 3)

    u = rng.random()
    if u < 0.3:  # stripes
        a, period, amp = rng.uniform(0, np.pi), rng.uniform(4, 40), rng.uniform(6, 30)
        wave = np.sin(2 * np.pi * (xs * math.cos(a) + ys * math.sin(a)) / period + rng.uniform(0, 6.3))
        bg += amp * wave[..., None] * rng.uniform(0.3, 1.0, 3).astype(np.float32)
    elif u < 0.45:  # checkerboard
        cell, amp = rng.uniform(6, 40), rng.uniform(6, 25)
        bg += amp * ((np.floor(xs / cell) + np.floor(ys / cell)) % 2 * 2 - 1)[..., None]
    elif u < 0.8:  # low-frequency colour noise
        g, amp = int(rng.integers(3, 12)), rng.uniform(10, 40)
        coarse = rng.normal(0, amp, (g, g, 3)).astype(np.float32)
        bg += np.stack([np.asarray(Image.fromarray(coarse[..., c], "F").resize((W, H), Image.BICUBIC))
                        for c in range(3)], -1)

    for _ in range(int(rng.integers(0, 9))):
        colour, kind = rng.uniform(0, 255, 3).astype(np.float32), int(rng.integers(0, 4))
        if kind == 3:  # soft elongated blob: round-ish but without a sharp edge
            sx, sy, a = rng.uniform(4, 40), rng.uniform(4, 40), rng.uniform(0, np.pi)
            cx, cy = rng.uniform(0, W), rng.uniform(0, H)
            dx, dy = xs - cx, ys - cy
            u_, v_ = dx * math.cos(a) + dy * math.sin(a), -dx * math.sin(a) + dy * math.cos(a)
            alpha = rng.uniform(0.3, 0.7) * np.exp(-0.5 * ((u_ / sx) ** 2 + (v_ / sy) ** 2))
        else:  # thin strokes: straight lines, polylines, open arcs (never a full ring)
            width = int(rng.integers(2, 5))  # at 2x scale: 1..2 px
            pts = (rng.uniform(0, 1, (int(rng.integers(2, 6)) if kind == 1 else 2, 2)) * [2 * W, 2 * H])
            arc_r, arc_c = rng.uniform(40, 200), rng.uniform(0, 1, 2) * [2 * W, 2 * H]
            start = rng.uniform(0, 360)
            span = rng.uniform(60, 240)

            def draw_fn(d, kind=kind, pts=pts, width=width):
                if kind == 2:
                    box = [arc_c[0] - arc_r, arc_c[1] - arc_r, arc_c[0] + arc_r, arc_c[1] + arc_r]
                    d.arc(box, start, start + span, fill=255, width=width)
                else:
                    d.line(pts.ravel().tolist(), fill=255, width=width, joint="curve")

            alpha = rng.uniform(0.5, 1.0) * _stroke_alpha(W, H, draw_fn)
        bg += alpha[..., None] * (colour - bg)
    return bg


# ----------------------------------------------------------------------------- scenes


def _place(rng, canvas: np.ndarray, placed: list[_Placed], cid: int, diameter: float,
           max_hidden: float, clutter: bool) -> bool:
    """Try to draw one object of class ``cid`` on ``canvas``; False if it never fits."""
    H, W, _ = canvas.shape
    polys0 = _shape(SYNTHETIC_CLASSES[cid - 1], rng, diameter)
    for _ in range(30):
        a = rng.uniform(0, 2 * np.pi)
        rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]) * diameter / 2
        polys = [(p @ rot, f) for p, f in polys0]
        ink = np.concatenate([p for p, f in polys if f])
        lo, hi = ink.min(0), ink.max(0)
        if hi[0] - lo[0] > W - 2 or hi[1] - lo[1] > H - 2:
            return False
        cx, cy = rng.uniform(1 - lo[0], W - 1 - hi[0]), rng.uniform(1 - lo[1], H - 1 - hi[1])
        ox, oy = int(math.floor(cx + lo[0])) - 1, int(math.floor(cy + lo[1])) - 1
        ox, oy = max(ox, 0), max(oy, 0)
        w = min(int(math.ceil(cx + hi[0])) + 1, W) - ox
        h = min(int(math.ceil(cy + hi[1])) + 1, H) - oy
        mask = _rasterize([(p + [cx, cy], f) for p, f in polys], ox, oy, w, h)
        obj = _Placed(cid, ox, oy, mask, mask.copy(), int(mask.sum()))
        if obj.ink == 0:
            continue
        covers = []
        for other in placed:
            sl = _overlap(other, obj)
            if sl is None:
                continue
            lost = int(np.count_nonzero(other.visible[sl[0]] & mask[sl[1]]))
            if lost:
                covers.append((other, sl, lost))
        if all(o.visible.sum() - lost >= (1 - max_hidden) * o.ink for o, _, lost in covers):
            break
    else:
        return False
    for other, (so, sn), _ in covers:
        other.visible[so] &= ~mask[sn]

    alpha = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).reduce(_SS), np.float32) / 255
    region = canvas[oy:oy + h, ox:ox + w]  # view
    under = region[alpha > 0.5]
    if len(under) > 512:
        under = under[:: len(under) // 512]
    colour = _contrasting_colour(rng, under if len(under) else region.reshape(-1, 3))
    # A soft shading ramp so objects are not perfectly flat (class is the shape, not the look).
    ramp_a, ramp_s = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.2)
    gx = (np.arange(w, dtype=np.float32)[None, :] + ox - cx) * math.cos(ramp_a)
    gy = (np.arange(h, dtype=np.float32)[:, None] + oy - cy) * math.sin(ramp_a)
    fill = colour * (1 + ramp_s * (gx + gy)[..., None] / (diameter / 2))
    region += alpha[..., None] * (np.clip(fill, 0, 255) - region)
    placed.append(obj)
    return True


def _render(seed: int, params: SceneParams) -> tuple[np.ndarray, list[SceneObject]]:
    """(H, W, 3) uint8 image and its visible objects, a pure function of ``seed``."""
    rng = np.random.default_rng(seed)
    W = int(rng.integers(params.min_size, params.max_size + 1))
    H = int(rng.integers(params.min_size, params.max_size + 1))
    canvas = _background(rng, W, H, params.clutter)

    n = int(rng.integers(1, params.max_objects + 1))
    lo, hi = math.log(params.min_object), math.log(params.max_object_frac * min(W, H))
    diam = np.exp(rng.uniform(lo, hi, n))
    cids = rng.integers(1, len(SYNTHETIC_CLASSES) + 1, n)
    # Roughly large-to-small, so small objects are not buried; the jitter lets similar sizes
    # occlude each other either way.
    order = np.argsort(-(np.log(diam) + rng.normal(0, 0.3, n)), kind="stable")
    placed: list[_Placed] = []
    for i in order:
        _place(rng, canvas, placed, int(cids[i]), float(diam[i]), params.max_hidden, params.clutter)

    if params.clutter:
        canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(rng.uniform(0, 6))
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    objects = []
    for p in placed:
        rows, cols = np.any(p.visible, 1), np.any(p.visible, 0)
        r0, r1 = np.argmax(rows), len(rows) - np.argmax(rows[::-1])
        c0, c1 = np.argmax(cols), len(cols) - np.argmax(cols[::-1])
        box = (p.ox + c0 / _SS, p.oy + r0 / _SS, p.ox + c1 / _SS, p.oy + r1 / _SS)
        vis = int(p.visible.sum())
        objects.append(SceneObject(p.category_id, box, vis / _SS**2, vis / p.ink))
    return image, objects


def render_scene(seed: int, params: SceneParams = SceneParams()
                 ) -> tuple[Image.Image, list[tuple[int, tuple[float, float, float, float]]]]:
    """Draw one scene in memory.

    Returns the RGB image and a list of (category_id in 1..K, (x0, y0, x1, y1)) with the
    visible object's tight box in pixels; the name is ``SYNTHETIC_CLASSES[category_id - 1]``.
    """
    image, objects = _render(seed, params)
    return Image.fromarray(image), [(o.category_id, o.box) for o in objects]
