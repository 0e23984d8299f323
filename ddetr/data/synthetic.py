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
    # Object size = diameter of its circumscribed circle, from min_object (~ stride 8, the
    # finest level) to max_object_frac of the shorter side (boxes beyond half the image: the
    # stride-64 level). log(size) = lo + (hi - lo) * u ** size_skew, u ~ U(0, 1): 1 would be
    # log-uniform, every octave equally common, which makes half the objects COCO-"small";
    # 0.7 gives about 38% small, 42% medium, 20% large and keeps the full range.
    min_object: float = 10.0
    max_object_frac: float = 0.75
    size_skew: float = 0.7
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
    n_visible: int  # visible.sum()


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
    """A colour that stands out from nearly all (N, 3) pixels it will cover.

    Scored by the 2nd-percentile distance, so a small overlap with an earlier object of a
    similar colour also counts: otherwise the boundary between the two would be invisible.
    """
    cands = np.stack([_random_colour(rng) for _ in range(12)] + [np.float32(255) - under.mean(0)])
    dist = np.linalg.norm(under[None] - cands[:, None], axis=2)  # (13, N)
    return cands[int(np.argmax(np.percentile(dist, 2, axis=1)))]


# ----------------------------------------------------------------------------- background


def _distractor(rng: np.random.Generator, bg: np.ndarray) -> None:
    """Blend one non-object into ``bg`` (H, W, 3) in place: a soft blob or a thin stroke."""
    H, W, _ = bg.shape
    colour, kind = rng.uniform(0, 255, 3).astype(np.float32), int(rng.integers(0, 4))
    if kind == 3:  # soft elongated blob: round-ish but without a sharp edge
        sx, sy, a = rng.uniform(4, 40), rng.uniform(4, 40), rng.uniform(0, np.pi)
        cx, cy, opacity = rng.uniform(0, W), rng.uniform(0, H), rng.uniform(0.3, 0.7)
        r = 3 * max(sx, sy)
        x0, y0 = max(int(cx - r), 0), max(int(cy - r), 0)
        x1, y1 = min(int(cx + r) + 1, W), min(int(cy + r) + 1, H)
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
        u, v = dx * math.cos(a) + dy * math.sin(a), -dx * math.sin(a) + dy * math.cos(a)
        alpha = opacity * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    else:  # thin strokes: straight lines, polylines, open arcs (never a full ring)
        width = int(rng.integers(2, 5))  # drawn at 2x: 1..2 px
        opacity = rng.uniform(0.5, 1.0)
        if kind == 2:
            rad, c = rng.uniform(20, 100), rng.uniform(0, 1, 2) * [W, H]
            start, span = rng.uniform(0, 360), rng.uniform(60, 240)
            lo, hi = c - rad, c + rad
        else:
            pts = rng.uniform(0, 1, (int(rng.integers(3, 6)) if kind == 1 else 2, 2)) * [W, H]
            lo, hi = pts.min(0), pts.max(0)
        x0, y0 = max(int(lo[0]) - 2, 0), max(int(lo[1]) - 2, 0)
        x1, y1 = min(int(hi[0]) + 3, W), min(int(hi[1]) + 3, H)
        if x1 <= x0 or y1 <= y0:
            return
        im = Image.new("L", (2 * (x1 - x0), 2 * (y1 - y0)), 0)
        draw = ImageDraw.Draw(im)
        if kind == 2:
            draw.arc((2 * (lo - [x0, y0])).tolist() + (2 * (hi - [x0, y0])).tolist(),
                     start, start + span, fill=255, width=width)
        else:
            draw.line((2 * (pts - [x0, y0])).ravel().tolist(), fill=255, width=width, joint="curve")
        alpha = opacity / 255 * np.asarray(im.reduce(2), np.float32)
    region = bg[y0:y1, x0:x1]  # view
    region += alpha[..., None] * (colour - region)


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
        _distractor(rng, bg)
    return bg


# ----------------------------------------------------------------------------- scenes


def _place(rng, canvas: np.ndarray, placed: list[_Placed], cid: int, diameter: float,
           max_hidden: float) -> bool:
    """Try to draw one object of class ``cid`` on ``canvas``; False if it never fits."""
    H, W, _ = canvas.shape
    polys0 = _shape(SYNTHETIC_CLASSES[cid - 1], rng, diameter)
    for _ in range(30):
        a = rng.uniform(0, 2 * np.pi)
        rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]) * diameter / 2
        polys = [(p @ rot, f) for p, f in polys0]
        outline = np.concatenate([p for p, f in polys if f])  # (V, 2) the inked polygons
        lo, hi = outline.min(0), outline.max(0)
        if hi[0] - lo[0] > W - 2 or hi[1] - lo[1] > H - 2:
            return False
        cx, cy = rng.uniform(1 - lo[0], W - 1 - hi[0]), rng.uniform(1 - lo[1], H - 1 - hi[1])
        ox, oy = int(math.floor(cx + lo[0])) - 1, int(math.floor(cy + lo[1])) - 1
        ox, oy = max(ox, 0), max(oy, 0)
        w = min(int(math.ceil(cx + hi[0])) + 1, W) - ox
        h = min(int(math.ceil(cy + hi[1])) + 1, H) - oy
        mask = _rasterize([(p + [cx, cy], f) for p, f in polys], ox, oy, w, h)
        n_ink = int(np.count_nonzero(mask))
        obj = _Placed(cid, ox, oy, mask, mask.copy(), n_ink, n_ink)
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
        if all(o.n_visible - lost >= (1 - max_hidden) * o.ink for o, _, lost in covers):
            break
    else:
        return False
    for other, (so, sn), lost in covers:
        other.visible[so] &= ~mask[sn]
        other.n_visible -= lost

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
    diam = np.exp(lo + (hi - lo) * rng.uniform(0, 1, n) ** params.size_skew)
    cids = rng.integers(1, len(SYNTHETIC_CLASSES) + 1, n)
    # Roughly large-to-small, so small objects are not buried; the jitter lets similar sizes
    # occlude each other either way.
    order = np.argsort(-(np.log(diam) + rng.normal(0, 0.3, n)), kind="stable")
    placed: list[_Placed] = []
    for i in order:
        _place(rng, canvas, placed, int(cids[i]), float(diam[i]), params.max_hidden)

    if params.clutter:
        canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(rng.uniform(0, 6))
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    objects = []
    for p in placed:
        rows, cols = np.any(p.visible, 1), np.any(p.visible, 0)
        r0, r1 = np.argmax(rows), len(rows) - np.argmax(rows[::-1])
        c0, c1 = np.argmax(cols), len(cols) - np.argmax(cols[::-1])
        box = (p.ox + int(c0) / _SS, p.oy + int(r0) / _SS, p.ox + int(c1) / _SS, p.oy + int(r1) / _SS)
        objects.append(SceneObject(p.category_id, box, p.n_visible / _SS**2, p.n_visible / p.ink))
    return image, objects


def render_scene(seed: int, params: SceneParams = SceneParams()
                 ) -> tuple[Image.Image, list[tuple[int, tuple[float, float, float, float]]]]:
    """Draw one scene in memory.

    Returns the RGB image and a list of (category_id in 1..K, (x0, y0, x1, y1)) with the
    visible object's tight box in pixels; the name is ``SYNTHETIC_CLASSES[category_id - 1]``.
    """
    image, objects = _render(seed, params)
    return Image.fromarray(image), [(o.category_id, o.box) for o in objects]


# ----------------------------------------------------------------------------- dataset files


def _save(image: np.ndarray, path: Path) -> None:
    if path.suffix == ".png":
        Image.fromarray(image).save(path, compress_level=1)
    else:  # 4:4:4, because 4:2:0 chroma subsampling smears the colour of 10 px objects
        Image.fromarray(image).save(path, quality=95, subsampling=0)


def _write_one(job: tuple) -> tuple[dict, list[dict]]:
    """Render, save and describe image ``index`` of ``split`` (runs in a worker)."""
    out, split, index, seed, params, ext = job
    s = scene_seed(seed, split, index)
    image, objects = _render(s, params)
    image_id = index + 1
    name = f"{image_id:012d}.{ext}"
    _save(image, Path(out) / f"{split}2017" / name)
    record = {"id": image_id, "file_name": name, "height": image.shape[0],
              "width": image.shape[1], "scene_seed": s}
    anns = [{"image_id": image_id, "category_id": o.category_id,
             "bbox": [o.box[0], o.box[1], o.box[2] - o.box[0], o.box[3] - o.box[1]],
             "area": o.area, "iscrowd": 0} for o in objects]
    return record, anns


def _coco_json(images: list[dict], anns: list[dict], description: str) -> dict:
    for i, a in enumerate(anns):
        a["id"] = i + 1
    return {
        "info": {"description": description, "version": "1"},
        "licenses": [],
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"}
                       for i, n in enumerate(SYNTHETIC_CLASSES)],
        "images": images,
        "annotations": anns,
    }


def write_dataset(out: str | os.PathLike, splits: dict[str, int], seed: int = 0, workers: int = 1,
                  params: SceneParams = SceneParams(), ext: str = "jpg", progress: bool = True) -> Path:
    """Write ``out/{split}2017/*.{ext}`` and ``out/annotations/instances_{split}2017.json``.

    ``splits`` maps a split name ("train", "val") to its image count. The bytes written depend
    only on (seed, params, ext), never on ``workers``.
    """
    from tqdm import tqdm

    if ext not in ("jpg", "png"):
        raise ValueError(f"image format must be 'jpg' or 'png', got {ext!r}")
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        bar = tqdm(total=sum(splits.values()), desc="synthetic", unit="img", disable=not progress)
        for split, count in splits.items():
            (out / f"{split}2017").mkdir(exist_ok=True)
            jobs = [(str(out), split, i, seed, params, ext) for i in range(count)]
            results = pool.imap(_write_one, jobs, chunksize=8) if pool else map(_write_one, jobs)
            images, anns = [], []
            for record, image_anns in results:  # imap keeps index order
                images.append(record)
                anns.extend(image_anns)
                bar.update()
            desc = f"synthetic shapes, split {split}, seed {seed}, {asdict(params)}"
            with open(out / "annotations" / f"instances_{split}2017.json", "w") as f:
                json.dump(_coco_json(images, anns, desc), f)
        bar.close()
    finally:
        if pool:
            pool.close()
            pool.join()
    return out


def _is_showcase(objects: list[SceneObject], image: np.ndarray) -> bool:
    """Scenes worth showing in the explorer: several objects, tiny and large together."""
    sides = [max(o.box[2] - o.box[0], o.box[3] - o.box[1]) for o in objects]
    return len(objects) >= 4 and min(sides) <= 24 and max(sides) >= 0.4 * min(image.shape[:2])


def write_examples(out: str | os.PathLike, count: int, seed: int,
                   params: SceneParams = SceneParams()) -> list[Path]:
    """Write ``count`` showcase scenes as PNGs plus their boxes as COCO json (annotations.json)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths, images, anns = [], [], []
    index = 0
    while len(paths) < count:  # deterministic search over the seed's scenes
        s = scene_seed(seed, "examples", index)
        index += 1
        image, objects = _render(s, params)
        if not _is_showcase(objects, image):
            continue
        name = f"synthetic_{len(paths):02d}.png"
        _save(image, out / name)
        paths.append(out / name)
        images.append({"id": len(paths), "file_name": name, "height": image.shape[0],
                       "width": image.shape[1], "scene_seed": s})
        anns += [{"image_id": len(paths), "category_id": o.category_id,
                  "bbox": [o.box[0], o.box[1], o.box[2] - o.box[0], o.box[3] - o.box[1]],
                  "area": o.area, "iscrowd": 0} for o in objects]
    with open(out / "annotations.json", "w") as f:
        json.dump(_coco_json(images, anns, f"synthetic shapes examples, seed {seed}"), f)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", help="dataset root to write (COCO layout)")
    ap.add_argument("--train", type=int, default=0, help="number of training images")
    ap.add_argument("--val", type=int, default=0, help="number of validation images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--min-size", type=int, default=SceneParams.min_size)
    ap.add_argument("--max-size", type=int, default=SceneParams.max_size)
    ap.add_argument("--min-object", type=float, default=SceneParams.min_object,
                    help="smallest object diameter in pixels")
    ap.add_argument("--max-object-frac", type=float, default=SceneParams.max_object_frac,
                    help="largest object diameter as a fraction of the shorter image side")
    ap.add_argument("--size-skew", type=float, default=SceneParams.size_skew,
                    help="1: log-uniform sizes; smaller values favour larger objects")
    ap.add_argument("--format", choices=("jpg", "png"), default="jpg",
                    help="jpg is quality 95 without chroma subsampling")
    ap.add_argument("--examples", metavar="DIR", help="write showcase PNGs here instead")
    ap.add_argument("--count", type=int, default=6, help="number of --examples")
    args = ap.parse_args(argv)
    if args.min_size > args.max_size or args.min_size < 64:
        ap.error(f"need 64 <= --min-size <= --max-size, got {args.min_size}, {args.max_size}")
    if args.seed < 0:
        ap.error("--seed must be >= 0")
    if not 0 < args.min_object < args.max_object_frac * args.min_size or args.size_skew <= 0:
        ap.error("need 0 < --min-object < --max-object-frac * --min-size and --size-skew > 0")
    params = SceneParams(min_size=args.min_size, max_size=args.max_size, min_object=args.min_object,
                         max_object_frac=args.max_object_frac, size_skew=args.size_skew)
    if args.examples:
        for p in write_examples(args.examples, args.count, args.seed, params):
            print(p)
    elif args.out:
        if args.train + args.val <= 0:
            ap.error("nothing to write: give --train N and/or --val N")
        splits = {k: v for k, v in (("train", args.train), ("val", args.val)) if v > 0}
        write_dataset(args.out, splits, args.seed, max(1, args.workers), params, args.format)
    else:
        ap.error("give --out DIR (a dataset) or --examples DIR (showcase images)")


if __name__ == "__main__":
    # Import by module name so worker jobs pickle as ddetr.data.synthetic._write_one.
    from ddetr.data.synthetic import main as _main

    _main()
