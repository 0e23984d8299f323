"""What to draw: a ``Selection`` of layer / heads / levels / points, and the flat table of the
sampling points it picks from a ``Capture``.

Every view draws from a ``PointTable``: one row per sampling point (N = heads x levels x
points of the selection, fewer with ``top_k``), with the coordinates taken from the
capture's own accessors (``Capture.decoder_points`` / ``encoder_points``), so a figure shows
exactly the frames the capture computed; nothing here converts between frames.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

COLOR_BY = ("head", "weight")


@dataclass(frozen=True)
class Selection:
    """Which sampling points to draw and how.

    layer: decoder (or encoder) layer, Python indexing over the model's layers (-1 = last).
    heads / levels / points: indices to keep, None for all.
    color_by: "head" (palette, one legend entry per head) or "weight" (viridis).
    top_k: keep only the k heaviest points of the selection (None: all).
    merged: True draws all levels in one picture (the paper's Figure 6); False one panel per
        level, each over that level's feature-map grid ("across scales").
    size_by_weight: marker area proportional to the attention weight.
    """

    layer: int = -1
    heads: tuple[int, ...] | None = None
    levels: tuple[int, ...] | None = None
    points: tuple[int, ...] | None = None
    color_by: str = "head"
    top_k: int | None = None
    merged: bool = True
    size_by_weight: bool = True

    def __post_init__(self) -> None:
        if self.color_by not in COLOR_BY:
            raise ValueError(f"color_by must be one of {COLOR_BY}, got {self.color_by!r}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be a positive number of points or None, got {self.top_k}")
        for name in ("heads", "levels", "points"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, tuple(int(i) for i in (v if isinstance(v, Sequence) else [v])))

    def with_(self, **changes) -> "Selection":
        return replace(self, **changes)


@dataclass
class PointTable:
    """Sampling points of one query (decoder) or token (encoder) at one layer, flattened.

    Per point (N rows): head, level, point (N,) int64; weight (N,); image_px, level_px,
    offset_level_px, offset_image_px (N, 2), x first (offsets NaN when the capture stored
    locations only). Context: reference_image_px (2,) point or (4,) cxcywh box in image
    pixels; box_image_px (4,) xyxy or None; label / score of the query at this layer.
    """

    part: str  # "decoder" | "encoder"
    layer: int
    head: np.ndarray
    level: np.ndarray
    point: np.ndarray
    weight: np.ndarray
    image_px: np.ndarray
    level_px: np.ndarray
    offset_level_px: np.ndarray
    offset_image_px: np.ndarray
    reference_image_px: np.ndarray | None
    n_heads: int
    n_levels: int
    n_points: int
    query: int | None = None  # decoder query index
    token: int | None = None  # encoder token index
    token_level: int | None = None
    box_image_px: np.ndarray | None = None
    label: str | None = None
    score: float | None = None

    def __len__(self) -> int:
        return int(self.weight.shape[0])

    @property
    def title(self) -> str:
        if self.part == "decoder":
            what = f"query {self.query}"
            if self.label is not None:
                what += f": {self.label} {self.score:.2f}"
            return f"decoder layer {self.layer}, {what}"
        return f"encoder layer {self.layer}, level {self.token_level} token {self.token}"

    @property
    def reference_xy(self) -> np.ndarray | None:
        """(2,) the reference point (the centre of a reference box) in image pixels."""
        return None if self.reference_image_px is None else self.reference_image_px[:2]

    def customdata(self) -> np.ndarray:
        """(N, 13) hover fields: layer, head, level, point, weight, offset level px (x, y),
        offset image px (x, y), location image px (x, y), and the first column and row of the
        2 x 2 feature cells its bilinear sample reads (cell centres at i + 0.5)."""
        n = len(self)
        return np.column_stack([
            np.full(n, self.layer), self.head, self.level, self.point, self.weight,
            self.offset_level_px, self.offset_image_px, self.image_px, np.floor(self.level_px - 0.5),
        ])


HOVER_TEMPLATE = (
    "layer %{customdata[0]:d} · head %{customdata[1]:d} · level %{customdata[2]:d} · point %{customdata[3]:d}<br>"
    "attention weight %{customdata[4]:.4f}<br>"
    "offset (%{customdata[5]:.2f}, %{customdata[6]:.2f}) level px<br>"
    "offset (%{customdata[7]:.1f}, %{customdata[8]:.1f}) image px<br>"
    "location (%{customdata[9]:.1f}, %{customdata[10]:.1f}) image px<br>"
    "reads the 2 x 2 level cells from column %{customdata[11]:d}, row %{customdata[12]:d}<extra></extra>"
)


def resolve_layer(capture, part: str, layer: int) -> int:
    """Python-style layer index (``-1`` = last) -> the model's layer number."""
    n = int(capture.meta["dec_layers" if part == "decoder" else "enc_layers"])
    if not -n <= layer < n:
        raise IndexError(f"{part} layer {layer} does not exist; the model has {part} layers 0..{n - 1}")
    return layer % n


def _check_indices(values: tuple[int, ...] | None, n: int, what: str) -> None:
    if values is None:
        return
    bad = [v for v in values if not 0 <= v < n]
    if bad:
        raise IndexError(f"{what} {bad} do not exist; the model has {what} 0..{n - 1}")


def _table(part: str, layer: int, pts: dict, sel: Selection, **context) -> PointTable:
    M, L, P = pts["weights"].shape  # (M, L, P)
    _check_indices(sel.heads, M, "heads")
    _check_indices(sel.levels, L, "levels")
    _check_indices(sel.points, P, "points")
    mm, ll, pp = np.meshgrid(np.arange(M), np.arange(L), np.arange(P), indexing="ij")  # (M, L, P) each
    keep = np.ones((M, L, P), dtype=bool)
    if sel.heads is not None:
        keep &= np.isin(mm, sel.heads)
    if sel.levels is not None:
        keep &= np.isin(ll, sel.levels)
    if sel.points is not None:
        keep &= np.isin(pp, sel.points)
    idx = np.flatnonzero(keep.reshape(-1))
    w = pts["weights"].reshape(-1).astype(np.float64)
    if sel.top_k is not None and sel.top_k < idx.size:
        idx = idx[np.argsort(-w[idx], kind="stable")[: sel.top_k]]
        idx.sort()

    def flat2(a):
        if a is None:
            return np.full((idx.size, 2), np.nan)
        return np.asarray(a, dtype=np.float64).reshape(-1, 2)[idx]  # (M*L*P, 2) -> (N, 2)

    ref = pts.get("reference_image_px")
    ref = None if ref is None else np.asarray(ref, dtype=np.float64)[0]  # same on every level
    return PointTable(
        part=part, layer=layer, head=mm.reshape(-1)[idx], level=ll.reshape(-1)[idx], point=pp.reshape(-1)[idx],
        weight=w[idx], image_px=flat2(pts["image_px"]), level_px=flat2(pts["level_px"]),
        offset_level_px=flat2(pts.get("offsets_level_px")), offset_image_px=flat2(pts.get("offsets_image_px")),
        reference_image_px=ref, n_heads=M, n_levels=L, n_points=P, **context,
    )


def decoder_table(capture, query: int, selection: Selection = Selection()) -> PointTable:
    """The sampling points of decoder ``query`` at ``selection.layer``."""
    layer = resolve_layer(capture, "decoder", selection.layer)
    pts = capture.decoder_points(layer, int(query))
    label = capture.label_name(pts["label"])
    return _table("decoder", layer, pts, selection, query=int(query),
                  box_image_px=np.asarray(pts["box_image_px"], dtype=np.float64), label=label, score=pts["score"])


def encoder_table(capture, x: float, y: float, level: int = 0, selection: Selection = Selection()) -> PointTable:
    """The sampling points of the level-``level`` encoder token under image point (x, y)."""
    layer = resolve_layer(capture, "encoder", selection.layer)
    pts = capture.encoder_points(layer, float(x), float(y), int(level))
    table = _table("encoder", layer, pts, selection, token=int(pts["token"]), token_level=int(pts["level"]))
    if table.reference_image_px is None:  # capture stored locations only: the token's own place
        table.reference_image_px = np.asarray(pts["token_image_px"], dtype=np.float64)
    return table


def detection_queries(capture, threshold: float = 0.0) -> list[tuple[int, int]]:
    """(detection index, query index) of the detections scoring at least ``threshold``,
    best first, one entry per query (a query can produce several class detections)."""
    det = capture.detections
    seen, out = set(), []
    for i, (s, q) in enumerate(zip(det.scores.tolist(), det.query_index.tolist())):
        if s >= threshold and q not in seen:
            seen.add(q)
            out.append((i, int(q)))
    return out
