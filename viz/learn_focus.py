"""What the Learn view follows: one row of one deformable-attention layer, with its numbers.

A row is a decoder object query (cross-attention) or an encoder pixel (a token of one level
map, self-attention). ``focus`` reads everything the lesson needs for that row from a
``Capture``: every head's sampling points in three frames (op frame in [0, 1] of the padded
level map, level pixels, image pixels), the raw offsets, the attention weights, the
reference point, and which head / level / point the learner follows. The lesson's steps
(``viz.learn_steps``) draw and explain these numbers; nothing here runs the model.

Shapes: M heads, L levels, P points per level and head (K in the paper).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .heatmap import bilinear_corners, splat
from .selection import resolve_layer

PARTS = ("decoder", "encoder")


@dataclass
class Focus:
    """One row's sampling, all heads.

    locations (M, L, P, 2) op frame; level_px, image_px (M, L, P, 2); weights (M, L, P) (each
    head's L x P weights sum to 1); raw_offsets (M, L, P, 2) the offset layer's output;
    offsets_level_px (M, L, P, 2) location minus reference on each level's map;
    reference (L, 2 | 4) op frame; reference_level_px (L, 2); reference_image_px (2,) centre.
    head: the followed head, or None for all; level, point: the followed sampling point (of
    ``shown_head``; ``point_head`` is its head when all heads are followed). Decoder rows
    carry the query's label, score and box (xyxy image px); encoder rows the token's level
    and cell.
    """

    capture: object
    part: str
    layer: int
    row: int
    head: int | None
    level: int
    point: int
    locations: np.ndarray
    level_px: np.ndarray
    image_px: np.ndarray
    weights: np.ndarray
    raw_offsets: np.ndarray
    offsets_level_px: np.ndarray
    reference: np.ndarray
    reference_level_px: np.ndarray
    reference_image_px: np.ndarray
    label: str | None = None
    score: float | None = None
    box_image_px: np.ndarray | None = None
    token_level: int | None = None
    token_cell: tuple[int, int] | None = None
    point_head: int = 0  # the head of the followed point when all heads are followed

    # ----- sizes -----
    @property
    def n_heads(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_levels(self) -> int:
        return int(self.weights.shape[1])

    @property
    def n_points(self) -> int:
        return int(self.weights.shape[2])

    @property
    def geometry(self):
        return self.capture.geometry

    @property
    def channels(self) -> int:
        """C = d_model (the capture's metadata; 256 in the paper)."""
        return int(self.capture.meta.get("d_model", 256))

    @property
    def head_dim(self) -> int:
        return self.channels // self.n_heads

    @property
    def shown_head(self) -> int:
        """The head whose numbers the single-head steps show: the followed one, else the head
        of the followed point."""
        return self.head if self.head is not None else self.point_head

    @property
    def heads(self) -> list[int]:
        return list(range(self.n_heads)) if self.head is None else [self.head]

    @property
    def box_reference(self) -> bool:
        return self.reference.shape[-1] == 4

    @property
    def what(self) -> str:
        """'decoder query 17' / 'encoder pixel (12, 7) of level 1'."""
        if self.part == "decoder":
            return f"decoder query {self.row}"
        ix, iy = self.token_cell
        return f"encoder pixel ({ix}, {iy}) of level {self.token_level}"

    # ----- derived numbers -----
    def corners(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The followed point's bilinear read: cells (4, 2) (ix, iy), weights (4,) summing to
        1, inside (4,) (cells off the map read zeros)."""
        H, W = (int(v) for v in self.geometry.spatial_shapes[self.level])
        ix, iy, w, inside = bilinear_corners(self.level_px[self.shown_head, self.level, self.point][None], W, H)
        return np.stack([ix[0], iy[0]], -1), w[0], inside[0]

    def cells(self, head: int | None = None) -> list[np.ndarray]:
        """Per level (H_l, W_l): the total coefficient of each value cell in the head's output
        (attention weight x bilinear weight, summed over the points that touch the cell)."""
        m = self.shown_head if head is None else head
        g = self.geometry
        return [splat(self.level_px[m, l], self.weights[m, l], int(g.spatial_shapes[l, 1]), int(g.spatial_shapes[l, 0]))
                for l in range(self.n_levels)]

    def level_mass(self) -> np.ndarray:
        """(M, L): each head's attention weight per level (rows sum to 1)."""
        return self.weights.sum(-1)

    def mean_distance(self) -> np.ndarray:
        """(M,): each head's weighted mean distance (image px) of its points from the reference."""
        d = np.hypot(self.image_px[..., 0] - self.reference_image_px[0],
                     self.image_px[..., 1] - self.reference_image_px[1])  # (M, L, P)
        return (self.weights * d).sum((1, 2))

    def entropy(self, head: int | None = None) -> float:
        """Entropy (nats) of a head's L x P weights: 0 = all on one point, ln(L P) = uniform."""
        w = self.weights[self.shown_head if head is None else head].ravel().astype(np.float64)
        return float(-(w * np.log(np.clip(w, 1e-12, None))).sum())


def heaviest(weights: np.ndarray, head: int | None = None) -> tuple[int, int, int]:
    """(head, level, point) of the largest weight, within ``head`` when given."""
    w = np.asarray(weights)
    if head is not None:
        l, p = np.unravel_index(int(np.argmax(w[head])), w.shape[1:])
        return int(head), int(l), int(p)
    m, l, p = np.unravel_index(int(np.argmax(w)), w.shape)
    return int(m), int(l), int(p)


def default_query(capture) -> int:
    """The query behind the top-scoring detection."""
    return int(capture.detections.query_index[0])


def focus(capture, part: str = "decoder", layer: int = -1, row: int | None = None, head: int | None = None,
          level: int | None = None, point: int | None = None, point_head: int | None = None) -> Focus:
    """Collect one row's numbers. ``row``: decoder query index, or encoder token index (see
    ``Geometry.nearest_token``); default: the top detection's query / the token under its
    box centre on level 0. ``head`` None follows all heads. The followed point is
    (``head`` or ``point_head``, ``level``, ``point``); what is not given defaults to the
    heaviest point that fits what is."""
    if part not in PARTS:
        raise ValueError(f"part must be 'decoder' or 'encoder', got {part!r}")
    layer = resolve_layer(capture, part, layer)
    g = capture.geometry
    extra: dict = {}
    if part == "decoder":
        row = default_query(capture) if row is None else int(row)
        pts = capture.decoder_points(layer, row)
        names = capture.class_names
        extra = dict(label=names[pts["label"]] if pts["label"] < len(names) else f"class {pts['label']}",
                     score=float(pts["score"]), box_image_px=np.asarray(pts["box_image_px"], dtype=np.float64))
    else:
        if row is None:
            x0, y0, x1, y1 = capture.detections.boxes[0].tolist()
            row = int(g.nearest_token((x0 + x1) / 2, (y0 + y1) / 2, 0))
        row = int(row)
        if not 0 <= row < int(g.spatial_shapes.prod(1).sum()):
            raise IndexError(f"encoder token {row} does not exist; this image has tokens 0..{int(g.spatial_shapes.prod(1).sum()) - 1}")
        pts = capture.points("encoder", layer, row)
        lvl, ix, iy = g.token_cell(row)
        extra = dict(token_level=int(lvl), token_cell=(int(ix), int(iy)))
    if pts["reference"] is None:
        raise KeyError("this capture stored sampling locations only, not offsets and references; "
                       "the lesson needs both (capture with the current ddetr)")
    w = np.asarray(pts["weights"], dtype=np.float64)  # (M, L, P)
    M, L, P = w.shape
    for name, v, n in (("head", head, M), ("level", level, L), ("point", point, P)):
        if v is not None and not 0 <= int(v) < n:
            raise IndexError(f"{name} {v} does not exist; the model has {name}s 0..{n - 1}")
    if point_head is not None and not 0 <= int(point_head) < M:
        raise IndexError(f"head {point_head} does not exist; the model has heads 0..{M - 1}")
    ph, hl, hp = heaviest(w, head if head is not None else point_head)
    if level is not None and point is None:
        hp = int(np.argmax(w[ph, level]))
    level = hl if level is None else int(level)
    point = hp if point is None else int(point)
    ref = np.asarray(pts["reference"], dtype=np.float64)  # (L, 2|4)
    f = Focus(
        capture=capture, part=part, layer=int(layer), row=row, head=None if head is None else int(head),
        level=level, point=point, locations=np.asarray(pts["locations"], dtype=np.float64),
        level_px=g.to_level(pts["locations"]), image_px=g.to_image(pts["locations"]), weights=w,
        raw_offsets=np.asarray(pts["offsets"], dtype=np.float64),
        offsets_level_px=np.asarray(pts["offsets_level_px"], dtype=np.float64),
        reference=ref, reference_level_px=g.to_level(ref[:, :2], level_axis=-2),
        reference_image_px=np.asarray(pts["reference_image_px"], dtype=np.float64)[0, :2], point_head=ph, **extra)
    return f


def nearest_point(f: Focus, x: float, y: float) -> tuple[int, int, int]:
    """(head, level, point) of the followed heads' sampling point nearest to image pixel (x, y):
    what a click on the figure selects."""
    best, arg = np.inf, (f.shown_head, f.level, f.point)
    for m in f.heads:
        d = np.hypot(f.image_px[m, ..., 0] - x, f.image_px[m, ..., 1] - y)  # (L, P)
        i = np.unravel_index(int(np.nanargmin(d)), d.shape)
        if d[i] < best:
            best, arg = float(d[i]), (m, int(i[0]), int(i[1]))
    return arg
