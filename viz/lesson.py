"""The lesson: one query's deformable attention, step by step, with the real numbers.

Eq. 3 of Zhu et al. (ICLR 2021) for query q, head m:

    MSDeformAttn_m(z_q, p̂_q, {x^l}) = Σ_l Σ_k A_mlqk · W'_m x^l(φ_l(p̂_q) + Δp_mlqk)

1. the reference point p̂_q (normalized) and where it lands on each level, φ_l(p̂_q);
2. the offsets Δp_mlqk (the arrows) and the sampling locations they give;
3. one location's bilinear read: its four neighbouring cells and their weights;
4. the attention weights A_mlqk, one softmax over all L x K points of the head;
5. the weighted sum: every cell of every level the head reads, with its total coefficient;
6. the cost of dense against deformable attention for this very image (``viz.cost``).

Everything comes from the capture (``Capture.decoder_points``); the figures are in
``viz.lesson_view``. ``Lesson.markdown()`` is the text.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cost import ImageCost, human, image_cost
from .heatmap import bilinear_corners, splat
from .selection import resolve_layer


@dataclass
class Lesson:
    """All numbers of the lesson for (query, layer, head) and one chosen (level, point).

    Per level and point of the head: level_px, image_px, offsets_level_px (L, P, 2),
    raw_offsets (L, P, 2) (the linear layer's output), weights (L, P). reference (L, 2|4) op
    frame; reference_level_px (L, 2); reference_image_px (2,) (centre); corners of the chosen
    point: corner_cells (4, 2) (ix, iy), corner_weights (4,), corner_inside (4,);
    cells: per level (H_l, W_l) coefficient of each value cell in the head's output.
    """

    query: int
    layer: int
    head: int
    level: int
    point: int
    label: str
    score: float
    box_image_px: np.ndarray
    reference: np.ndarray
    reference_level_px: np.ndarray
    reference_image_px: np.ndarray
    raw_offsets: np.ndarray
    offsets_level_px: np.ndarray
    level_px: np.ndarray
    image_px: np.ndarray
    weights: np.ndarray
    corner_cells: np.ndarray
    corner_weights: np.ndarray
    corner_inside: np.ndarray
    cells: list[np.ndarray]
    level_shapes: np.ndarray  # (L, 2) padded (H_l, W_l)
    valid_wh: np.ndarray  # (L, 2)
    strides: tuple[int, ...]
    cost: ImageCost
    channels: int
    n_heads: int

    @property
    def n_levels(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_points(self) -> int:
        return int(self.weights.shape[1])

    @property
    def box_reference(self) -> bool:
        return self.reference.shape[-1] == 4

    @property
    def cells_read(self) -> int:
        """Distinct value cells (over all levels) with a non-zero coefficient."""
        return int(sum((c > 0).sum() for c in self.cells))

    @property
    def mass_on_maps(self) -> float:
        """Sum of all cell coefficients: 1 minus what fell off the maps (read as zeros)."""
        return float(sum(c.sum() for c in self.cells))

    def top_cells(self, k: int = 8) -> list[tuple[int, int, int, float]]:
        """(level, ix, iy, coefficient) of the ``k`` largest coefficients."""
        rows = [(l, ix, iy, float(c[iy, ix])) for l, c in enumerate(self.cells) for iy, ix in zip(*np.nonzero(c))]
        return sorted(rows, key=lambda r: -r[3])[:k]

    def markdown(self) -> str:
        return lesson_markdown(self)


def lesson(capture, query: int, layer: int = -1, head: int | None = None, level: int | None = None,
           point: int | None = None) -> Lesson:
    """Collect the lesson's numbers. head / level / point default to the heaviest sampling
    point of the query (head alone given: that head's heaviest point)."""
    layer = resolve_layer(capture, "decoder", layer)
    pts = capture.decoder_points(layer, int(query))
    w = np.asarray(pts["weights"], dtype=np.float64)  # (M, L, P)
    M, L, P = w.shape
    for name, v, n in (("head", head, M), ("level", level, L), ("point", point, P)):
        if v is not None and not 0 <= v < n:
            raise IndexError(f"{name} {v} does not exist; the model has {name}s 0..{n - 1}")
    # Unspecified indices: those of the heaviest point among the ones that fit the given ones.
    allowed = np.full(w.shape, True)
    for axis, v in ((0, head), (1, level), (2, point)):
        if v is not None:
            allowed &= (np.arange(w.shape[axis]) == v).reshape([-1 if a == axis else 1 for a in range(3)])
    head, level, point = (int(i) for i in np.unravel_index(np.argmax(np.where(allowed, w, -1.0)), w.shape))
    if pts["reference"] is None:
        raise KeyError("this capture stored sampling locations only, not offsets and references; "
                       "the lesson needs both (capture with the current ddetr)")
    g = capture.geometry
    ref = np.asarray(pts["reference"], dtype=np.float64)  # (L, 2|4)
    ref_level = g.to_level(ref[:, :2], level_axis=-2)  # (L, 2)
    level_px = np.asarray(pts["level_px"], dtype=np.float64)[head]  # (L, P, 2)
    H, W = (int(v) for v in g.spatial_shapes[level])
    ix, iy, cw, inside = bilinear_corners(level_px[level, point][None], W, H)
    cells = [splat(level_px[l], w[head, l], int(g.spatial_shapes[l, 1]), int(g.spatial_shapes[l, 0])) for l in range(L)]
    m = capture.meta
    channels = _channels(capture)
    return Lesson(
        query=int(query), layer=layer, head=head, level=int(level), point=int(point),
        label=capture.label_name(pts["label"]), score=float(pts["score"]),
        box_image_px=np.asarray(pts["box_image_px"], dtype=np.float64), reference=ref, reference_level_px=ref_level,
        reference_image_px=np.asarray(pts["reference_image_px"], dtype=np.float64)[0, :2],
        raw_offsets=np.asarray(pts["offsets"], dtype=np.float64)[head],
        offsets_level_px=np.asarray(pts["offsets_level_px"], dtype=np.float64)[head],
        level_px=level_px, image_px=np.asarray(pts["image_px"], dtype=np.float64)[head], weights=w[head],
        corner_cells=np.stack([ix[0], iy[0]], -1), corner_weights=cw[0], corner_inside=inside[0], cells=cells,
        level_shapes=g.spatial_shapes.copy(), valid_wh=g.valid_wh.copy(), strides=g.strides,
        cost=image_cost(g.spatial_shapes, channels, m["n_heads"], m["n_points"], m["num_queries"], m["enc_layers"], m["dec_layers"]),
        channels=channels, n_heads=int(m["n_heads"]),
    )


def _channels(capture) -> int:
    """C = d_model: from the metadata when the capture records it, else the preset's."""
    if "d_model" in capture.meta:
        return int(capture.meta["d_model"])
    from ddetr.config import preset

    try:
        return int(preset(capture.meta["variant"]).d_model)
    except ValueError:
        return 256


def _f(v, nd: int = 2) -> str:
    return f"{v:.{nd}f}"


def lesson_markdown(ls: Lesson) -> str:
    """The six steps as Markdown, every formula filled in with this query's numbers."""
    l, k, m = ls.level, ls.point, ls.head
    L, P = ls.n_levels, ls.n_points
    H, W = ls.level_shapes[l]
    rx, ry = ls.reference[l, :2]
    lx, ly = ls.reference_level_px[l]
    ix, iy = ls.reference_image_px
    out = [f"### Query {ls.query} ({ls.label} {ls.score:.2f}), decoder layer {ls.layer}, head {m}",
           "",
           "**1. Reference point.** The query's reference point p̂ is normalized to the image: "
           f"p̂ = ({_f(rx, 4)}, {_f(ry, 4)}) as the op receives it on level {l} (the unpadded image "
           f"spans the first {ls.valid_wh[l][0]:.0f} x {ls.valid_wh[l][1]:.0f} of the {W} x {H} cells). "
           f"On level {l} (stride {ls.strides[l]}) it sits at φ_{l}(p̂) = p̂ · ({W}, {H}) = "
           f"({_f(lx)}, {_f(ly)}) level px, in the image at ({_f(ix, 1)}, {_f(iy, 1)}) px."]
    if ls.box_reference:
        bw, bh = ls.reference[l, 2:]
        out.append(f"With box refinement the reference is a box: size ({_f(bw, 4)}, {_f(bh, 4)}) of the padded map; "
                   "offsets are then scaled by the box: location = centre + Δ / K · (w, h) / 2.")
    dx, dy = ls.offsets_level_px[l, k]
    rdx, rdy = ls.raw_offsets[l, k]
    px, py = ls.level_px[l, k]
    formula = (f"({_f(lx)}, {_f(ly)}) + ({_f(rdx)}, {_f(rdy)})" if not ls.box_reference else
               f"({_f(lx)}, {_f(ly)}) + ({_f(rdx)}, {_f(rdy)}) / {P} · ({_f(ls.reference[l, 2] * W)}, "
               f"{_f(ls.reference[l, 3] * H)}) / 2")
    out += ["",
            f"**2. Offsets.** A linear layer on the query predicts 2 · M · L · K = {2 * ls.n_heads * L * P} numbers: "
            f"for head {m} one offset per level and point. Point {k} on level {l}: raw Δp = ({_f(rdx)}, {_f(rdy)}), "
            f"location = {formula} = **({_f(px)}, {_f(py)}) level px** "
            f"(offset ({_f(dx)}, {_f(dy)}) level px from the reference; the point lies at "
            f"({_f(ls.image_px[l, k, 0], 1)}, {_f(ls.image_px[l, k, 1], 1)}) in image px)."]
    corners = []
    for (cx, cy), cwt, ins in zip(ls.corner_cells.tolist(), ls.corner_weights.tolist(), ls.corner_inside.tolist()):
        corners.append(f"cell ({cx}, {cy}): {cwt:.3f}" + ("" if ins else " (off the map: reads 0)"))
    fx, fy = px - 0.5 - np.floor(px - 0.5), py - 0.5 - np.floor(py - 0.5)
    out += ["",
            f"**3. Bilinear sampling.** Cell centres are at i + 0.5, so ({_f(px)}, {_f(py)}) lies between cells "
            f"with fractions fx = {fx:.3f}, fy = {fy:.3f}; x^l at that point = Σ g_c · V[c] with "
            + "; ".join(corners) + f" (sum {ls.corner_weights.sum():.3f})."]
    wl = ls.weights
    ent = float(-(wl * np.log(np.clip(wl, 1e-12, None))).sum())
    out += ["",
            f"**4. Attention weights.** Another linear layer predicts M · L · K = {ls.n_heads * L * P} logits; "
            f"for head {m} one softmax over its L · K = {L * P} points (all levels together): "
            f"A = exp(s) / Σ exp(s). Point {k} on level {l} gets A = **{wl[l, k]:.4f}**; "
            f"per level: " + ", ".join(f"level {i}: {wl[i].sum():.3f}" for i in range(L))
            + f" (sum {wl.sum():.4f}); entropy {ent:.3f} nats of at most ln {L * P} = {np.log(L * P):.3f}."]
    top = ls.top_cells(5)
    out += ["",
            f"**5. Weighted sum.** Head {m} returns Σ_l Σ_k A_lk · Σ_c g_c · V_l[c]: a fixed linear combination of "
            f"{ls.cells_read} value cells (at most 4 · L · K = {4 * L * P}), coefficients summing to "
            f"{ls.mass_on_maps:.4f} (the rest fell off the maps). Largest: "
            + "; ".join(f"level {a} cell ({b}, {c}): {d:.4f}" for a, b, c, d in top)
            + f". The {ls.n_heads} heads' {ls.channels // ls.n_heads}-channel results are concatenated and "
            f"projected by W_m (C = {ls.channels})."]
    c = ls.cost
    n = c.n_tokens
    out += ["",
            f"**6. Cost for this image** ({n} tokens over {L} levels: "
            + ", ".join(f"{w_}x{h_}" for h_, w_ in c.spatial_shapes) + f"; C = {ls.channels}, M = {ls.n_heads}, "
            f"K = {P}). Dense attention (Eq. 1, counted as {c.encoder_dense.formula} multiply-adds, "
            f"{c.encoder_dense.source}) against deformable attention (counted as {c.encoder_deformable.formula}: "
            f"the paper's {c.encoder_deformable.paper_formula} with the N_v C² value projection the "
            f"implementation does, {c.encoder_deformable.source}):",
            "",
            "| module | attention | query-key pairs | multiply-adds |",
            "|---|---|---:|---:|"]
    for mod, kind, pairs, macs in c.rows():
        out.append(f"| {mod} | {kind} | {human(pairs)} | {human(macs)} |")
    out += ["",
            f"Per encoder layer deformable attention needs {c.encoder_dense.macs / c.encoder_deformable.macs:.1f}x fewer "
            f"multiply-adds and {c.encoder_dense.pairs / c.encoder_deformable.pairs:.0f}x fewer query-key pairs; over "
            f"all {c.enc_layers} encoder and {c.dec_layers} decoder layers {human(c.total('dense'))} against "
            f"{human(c.total('deformable'))} multiply-adds (attention only; softmax, norms and FFNs left out, as in the paper)."]
    return "\n".join(out)
