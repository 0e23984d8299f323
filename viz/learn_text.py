"""The words of the lesson: one short text per step, filled in with the followed row's numbers,
and the glossary. Every symbol is explained where it first appears (the steps are read in
order; ``SYMBOLS`` lists where each one is introduced). At most ~120 words per step.

Notation of Zhu et al., "Deformable DETR" (ICLR 2021), Eq. 3:
    MSDeformAttn(z_q, p̂_q, {x^l}) = Σ_m W_m [ Σ_l Σ_k A_mlqk · W'_m x^l(φ_l(p̂_q) + Δp_mlqk) ]
"""
from __future__ import annotations

import numpy as np

from .cost import human, image_cost
from .learn_focus import Focus

GLOSSARY: dict[str, str] = {
    "query": "The thing that asks 'what is around here?'. In the decoder: one of the object queries, a learned "
             "vector that ends up describing one object (or nothing). In the encoder: every pixel of every feature map.",
    "reference point": "Where a query looks from, p̂, a point in [0, 1] x [0, 1] of the image. Sampling points are "
                       "placed relative to it.",
    "feature level": "One of the L feature maps of the backbone, each at a different resolution (the pyramid). "
                     "Fine levels see small details, coarse levels see large shapes.",
    "stride": "How many input pixels one cell of a feature map spans (8, 16, 32, 64 for the four levels of the "
              "R50 model).",
    "head": "One of M independent attention mechanisms working side by side on their own D = C / M channels; "
            "each has its own points and weights and can specialise (a direction, a level, a distance).",
    "sampling point": "A location where a head reads the feature map: reference point + offset. K points per level "
                      "and head (P in the code).",
    "offset": "Δp: the displacement from the reference point to a sampling point, predicted from the query by a "
              "linear layer (2 numbers per point).",
    "bilinear sampling": "Reading a feature map at a location between cell centres: the four nearest cells, mixed "
                         "with weights that depend on how close the location is to each (they sum to 1).",
    "attention weight": "A: how much a sampling point contributes to its head's output. Predicted from the query by "
                        "a linear layer, then made positive and summing to 1 by a softmax.",
    "softmax over levels x points": "exp(s_i) / Σ_j exp(s_j) taken jointly over all L x K points of one head, so a "
                                    "head can put its weight on any level, not 1/L per level.",
    "value projection": "W'_m: a linear layer applied to every feature cell before sampling, so what is read is a "
                        "learned view of the features (value_proj in the code).",
    "output projection": "W_m: the linear layer that mixes the M heads' results back into one C-channel vector "
                         "(output_proj in the code).",
    "encoder vs decoder": "The encoder lets every feature-map pixel attend to the pyramid (self-attention) and "
                          "produces the memory; the decoder lets the object queries attend to that memory "
                          "(cross-attention) and turns each query into a box and a class.",
    "iterative refinement": "With box refinement each decoder layer predicts a correction of the previous layer's box; "
                            "the next layer samples around the corrected box. Without it all layers share one "
                            "reference point.",
    "two-stage": "A variant where the encoder proposes boxes first and the best proposals become the decoder's "
                 "reference points, instead of points predicted from learned query embeddings.",
}

# Symbol -> (the step that introduces it, its meaning): checked by the tests against the texts.
SYMBOLS: dict[str, tuple[str, str]] = {
    "L": ("pyramid", "number of feature levels"),
    "H_l × W_l": ("pyramid", "cells of level l"),
    "p̂": ("query", "reference point"),
    "φ_l": ("query", "reference point on level l"),
    "M": ("heads", "number of heads"),
    "C": ("heads", "channels of a feature vector"),
    "D": ("heads", "channels per head"),
    "K": ("offsets", "points per level and head"),
    "Δp": ("offsets", "offset"),
    "A": ("weights", "attention weight"),
    "W'": ("sum", "value projection"),
    "W_o": ("sum", "output projection"),
    "N_q": ("cost", "number of queries"),
    "N_k": ("cost", "number of keys"),
}


def _f(v: float, nd: int = 1) -> str:
    return f"{float(v):.{nd}f}"


def _who(f: Focus) -> str:
    if f.part == "decoder":
        return f"decoder query {f.row} ({f.label} {f.score:.2f})"
    return f.what


def _heads_phrase(f: Focus) -> str:
    return "all heads" if f.head is None else f"head {f.head}"


def text_pyramid(f: Focus) -> str:
    g = f.geometry
    levels = "; ".join(f"level {l}: {int(w)} × {int(h)} cells, stride {s}"
                       for l, ((h, w), s) in enumerate(zip(g.spatial_shapes, g.strides)))
    h0, w0 = g.orig_size
    return (f"**The feature pyramid.** The backbone turns the {w0} × {h0} image into L = {g.n_levels} feature maps "
            f"(levels), each a grid of cells; level l has H_l × W_l cells. {levels}. The *stride* is how many input "
            "pixels one cell spans. Each cell holds one feature vector describing what is there. Fine levels "
            "resolve small things, coarse levels see large shapes. Deformable attention reads all levels at once.")


def text_query(f: Focus) -> str:
    l = f.level
    rx, ry = f.reference[l, :2]
    lx, ly = f.reference_level_px[l]
    ix, iy = f.reference_image_px
    W, H = (int(v) for v in f.geometry.level_wh[l])
    if f.part == "decoder":
        who = (f"We follow {_who(f)}: a learned vector that the decoder turns into one box. Its *reference point* "
               f"p̂ is where it looks from")
    else:
        who = (f"We follow {_who(f)}. In the encoder every cell is a query and attends to the whole pyramid; its "
               f"*reference point* p̂ is its own cell centre")
    return (f"**The query and its reference point.** {who}: p̂ = ({_f(rx, 3)}, {_f(ry, 3)}) as a fraction of the "
            f"padded map (green cross), pixel ({_f(ix)}, {_f(iy)}) of the image. On level l it lands at "
            f"φ_l(p̂) = p̂ · (W_l, H_l); on level {l} ({W} × {H}) that is ({_f(lx, 2)}, {_f(ly, 2)}) cells. "
            "The same point is reused on every level.")


def text_heads(f: Focus) -> str:
    fav = f.level_mass().argmax(-1)  # (M,) each head's favourite level
    dist = f.mean_distance()
    near, far = int(np.argmin(dist)), int(np.argmax(dist))
    counts = ", ".join(f"{int((fav == l).sum())} on level {l}" for l in range(f.n_levels) if (fav == l).any())
    return (f"**Heads.** Attention runs as M = {f.n_heads} independent *heads* side by side. The feature vector has "
            f"C = {f.channels} channels; each head works on its own D = C / M = {f.head_dim}, with its own sampling "
            f"points and weights, so heads can specialise. Here head {far} reaches {dist[far]:.0f} px from the "
            f"reference on average, head {near} only {dist[near]:.0f} px; by favourite level: {counts}. "
            f"Showing {_heads_phrase(f)}; colour = head, size = weight. Click a point to follow it.")


def text_offsets(f: Focus) -> str:
    m, l, k = f.shown_head, f.level, f.point
    dx, dy = f.offsets_level_px[m, l, k]
    rdx, rdy = f.raw_offsets[m, l, k]
    px, py = f.level_px[m, l, k]
    ix, iy = f.image_px[m, l, k]
    scale = ("" if not f.box_reference else
             f" With box refinement the raw offset is scaled by the box: Δp / K · (w, h) / 2.")
    return (f"**Offsets.** One linear layer reads the query and predicts, for every head, level and point, an offset "
            f"Δp: 2 numbers each, 2 · M · L · K = {2 * f.n_heads * f.n_levels * f.n_points} in all, with K = "
            f"{f.n_points} points per level and head. Sampling point = reference + offset. Head {m}, level {l}, "
            f"point {k}: the layer outputs ({_f(rdx, 2)}, {_f(rdy, 2)}), an offset of ({_f(dx, 2)}, {_f(dy, 2)}) "
            f"cells of level {l}, so the point sits at ({_f(px, 2)}, {_f(py, 2)}) cells, pixel ({_f(ix)}, {_f(iy)}) "
            f"of the image.{scale}")


def text_bilinear(f: Focus) -> str:
    m, l, k = f.shown_head, f.level, f.point
    px, py = f.level_px[m, l, k]
    cells, w, inside = f.corners()
    fx, fy = px - 0.5 - np.floor(px - 0.5), py - 0.5 - np.floor(py - 0.5)
    parts = "; ".join(f"({cx}, {cy}): {wc:.3f}" + ("" if ins else " (off the map, reads 0)")
                      for (cx, cy), wc, ins in zip(cells.tolist(), w.tolist(), inside.tolist()))
    return (f"**Bilinear sampling.** Sampling points rarely hit cell centres (centres sit at i + 0.5). The value there "
            f"is mixed from the four nearest cells, each weighted by closeness. Point ({_f(px, 2)}, {_f(py, 2)}) "
            f"on level {l} lies fx = {fx:.3f}, fy = {fy:.3f} past the top-left centre, so the cells get "
            f"(1−fx)(1−fy), fx(1−fy), (1−fx)fy, fx·fy: {parts}. They sum to {w.sum():.3f}. "
            "This makes the read smooth, so training can move points by small steps.")


def text_weights(f: Focus) -> str:
    m, l, k = f.shown_head, f.level, f.point
    w = f.weights[m]
    L, P = f.n_levels, f.n_points
    per = ", ".join(f"level {i}: {w[i].sum():.2f}" for i in range(L))
    return (f"**Attention weights.** Another linear layer gives each point of each head a score s; a softmax, "
            f"A = exp(s) / Σ exp(s), turns the {L} · {P} = {L * P} scores of head {m} into *attention weights* A, "
            f"positive and summing to 1 over all levels and points together ({w.sum():.4f}). The followed point "
            f"gets A = {w[l, k]:.4f}. Per level: {per}. Entropy {f.entropy(m):.2f} nats (0 = all weight on one "
            f"point, ln {L * P} = {np.log(L * P):.2f} = spread evenly).")


def text_sum(f: Focus) -> str:
    m = f.shown_head
    cells = f.cells(m)
    n_cells = int(sum((c > 0).sum() for c in cells))
    mass = float(sum(c.sum() for c in cells))
    return (f"**Weighted sum and output projection.** Before sampling, every cell's vector passes through the "
            f"value projection W' (a linear layer), split into the heads' D-channel parts. Head {m} returns "
            f"Σ_l Σ_k A · (bilinear read of W'x at the point): a fixed mix of {n_cells} cells (at most 4 · L · K = "
            f"{4 * f.n_levels * f.n_points}), coefficients summing to {mass:.3f} (the rest fell off the maps). "
            f"The {f.n_heads} heads' results are put side by side ({f.channels} channels) and mixed by the output "
            "projection W_o. Try 'what if' to move a point and see the output change.")


def text_cost(f: Focus) -> str:
    g, m = f.geometry, f.capture.meta
    c = image_cost(g.spatial_shapes, f.channels, f.n_heads, f.n_points, m["num_queries"], m["enc_layers"], m["dec_layers"])
    e_d, e_f = c.encoder_dense, c.encoder_deformable
    return (f"**Dense vs deformable.** Dense attention (the original Transformer) compares every query with "
            f"every key: N_q queries × N_k keys. In this image's encoder N_q = N_k = {c.n_tokens} cells, so one "
            f"layer costs {e_d.formula} = {human(e_d.macs)} multiply-adds and stores {human(e_d.attention_bytes)}B "
            f"of weights. Deformable attention reads only L · K = {f.n_levels * f.n_points} points per head: "
            f"{e_f.formula} = {human(e_f.macs)} multiply-adds, {human(e_f.attention_bytes)}B. That is "
            f"{e_d.macs / e_f.macs:.1f}× fewer operations; the gap grows with the square of the image size.")


def text_layers(f: Focus) -> str:
    m = f.capture.meta
    part = "decoder" if f.part == "decoder" else "encoder"
    n = m["dec_layers"] if f.part == "decoder" else m["enc_layers"]
    if f.part == "decoder":
        how = ("With iterative refinement each layer corrects the box and the next one samples around it."
               if m.get("with_box_refine") else
               "This model has no box refinement: every layer starts from the same reference point, but each "
               "layer's query has changed, so its offsets and weights differ.")
    else:
        how = ("The reference point stays the pixel's own cell centre; what changes is the feature vector of the "
               "query, refined by each layer, and so its offsets and weights.")
    return (f"**Across layers.** The {part} stacks {n} such attention layers; each one's output feeds the next. "
            f"{how} The figure shows the sampling points of {_heads_phrase(f)} in every captured {part} layer "
            f"(this is layer {f.layer}).")


TEXTS = {
    "pyramid": text_pyramid, "query": text_query, "heads": text_heads, "offsets": text_offsets,
    "bilinear": text_bilinear, "weights": text_weights, "sum": text_sum, "cost": text_cost, "layers": text_layers,
}


def glossary_markdown() -> str:
    return "\n".join(f"- **{term}**: {text}" for term, text in GLOSSARY.items())


def word_count(text: str) -> int:
    """Words as a reader counts them: whitespace-separated, markdown stars and numbers included."""
    return len(text.replace("**", "").split())
