"""What attention costs for one image: dense (Eq. 1) against deformable (Eq. 2/3) attention.

Formulas of Zhu et al., "Deformable DETR", ICLR 2021 (arXiv 2010.04159):

* Sec. 3, multi-head attention (Eq. 1): "the computational complexity of Eq. 1 is of
  O(N_q C^2 + N_k C^2 + N_q N_k C)"; with pixels as queries and keys (N_q = N_k >> C) the
  third term dominates, quadratic in the feature-map size.
* Appendix A.1, deformable attention (Eq. 2): computing the offsets and weights costs
  O(3 N_q C M K) (one linear layer with 3MK outputs); given them, Eq. 2 costs
  O(N_q C^2 + min(HW C^2, N_q K C^2) + 5 N_q K C), "the factor of 5 in 5N_qKC is because of
  bilinear interpolation and the weighted sum in attention"; the min is the choice between
  projecting the whole map once (HW C^2) or each sampled value (N_q K C^2).
* Multi-scale (Eq. 3) samples L K points per query and head from sum_l H_l W_l value tokens:
  the same counting with K -> L K and HW -> N_v = sum_l H_l W_l (our derivation; the paper
  states only the single-scale formula).

Below, every term is counted as multiply-adds for the shapes of this very image. The value
projection is counted as the implementation does it (official code and ours: project all N_v
tokens once, ``value_proj``), i.e. the HW C^2 branch of the min, even where the other branch
would be smaller (the decoder: N_q L K < N_v). ``AttentionCost.formula`` is the sum of exactly
the counted terms; ``paper_formula`` is the paper's O(.) form it comes from. Softmax, layer
norms and the feed-forward network are left out on both sides, as in the paper.

Memory: what one module holds per image for its attention, in float32 (``attention_bytes``):
dense attention M N_q N_k weights; deformable attention M N_q L K weights plus 2 M N_q L K
sampling coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass, field

CITATION = "Zhu et al., Deformable DETR, ICLR 2021 (arXiv 2010.04159)"


@dataclass(frozen=True)
class AttentionCost:
    """Cost of one attention module for one image.

    pairs: query-key pairs whose weight is computed, over all heads (dense: M N_q N_k;
    deformable: M N_q L K sampling points, each reading 4 neighbouring value tokens).
    terms: multiply-adds per term of the formula, in the order of ``formula``.
    """

    name: str
    n_queries: int
    n_keys: int
    pairs: int
    terms: dict[str, int] = field(default_factory=dict)
    formula: str = ""  # the sum of exactly the counted terms
    source: str = ""
    paper_formula: str = ""  # the paper's O(.) form
    attention_floats: int = 0  # per-image attention state: weights (+ sampling coordinates)

    @property
    def macs(self) -> int:
        return int(sum(self.terms.values()))

    @property
    def attention_bytes(self) -> int:
        """float32 bytes of ``attention_floats``."""
        return 4 * int(self.attention_floats)


def dense_attention_cost(n_queries: int, n_keys: int, channels: int, heads: int,
                         name: str = "dense attention") -> AttentionCost:
    """Eq. 1 with M heads of C / M channels: N_q C^2 (queries) + N_k C^2 (keys) + N_k C^2
    (values) + N_q C^2 (output) + N_q N_k C (logits) + N_q N_k C (weighted sum)."""
    q, k, c = int(n_queries), int(n_keys), int(channels)
    terms = {
        "query projection N_q C²": q * c * c,
        "key projection N_k C²": k * c * c,
        "value projection N_k C²": k * c * c,
        "output projection N_q C²": q * c * c,
        "logits q.k N_q N_k C": q * k * c,
        "weighted sum N_q N_k C": q * k * c,
    }
    return AttentionCost(name, q, k, int(heads) * q * k, terms,
                         "2 N_q C² + 2 N_k C² + 2 N_q N_k C", f"{CITATION}, sec. 3, Eq. 1",
                         "O(N_q C² + N_k C² + N_q N_k C)", int(heads) * q * k)


def deformable_attention_cost(n_queries: int, n_values: int, channels: int, heads: int, levels: int,
                              points: int, name: str = "deformable attention") -> AttentionCost:
    """Eq. 3: 3 N_q C M L K (offsets and weights) + N_v C^2 (values) + N_q C^2 (output)
    + 5 N_q L K C (4 bilinear taps and 1 weighted-sum multiply-add per channel and point;
    C = M D, so summed over the M heads)."""
    q, v, c, m, lk = int(n_queries), int(n_values), int(channels), int(heads), int(levels) * int(points)
    terms = {
        "offsets + weights 3 N_q C M L K": 3 * q * c * m * lk,
        "value projection N_v C²": v * c * c,
        "output projection N_q C²": q * c * c,
        "bilinear + weighted sum 5 N_q L K C": 5 * q * lk * c,
    }
    return AttentionCost(name, q, v, m * q * lk, terms,
                         "3 N_q C M L K + N_v C² + N_q C² + 5 N_q L K C",
                         f"{CITATION}, appendix A.1 (K -> LK, HW -> N_v for Eq. 3)",
                         "O(N_q C² + min(N_v C², N_q L K C²) + 5 N_q L K C + 3 N_q C M L K)", 3 * m * q * lk)


@dataclass(frozen=True)
class ImageCost:
    """Dense against deformable attention for one image, per layer and over the model."""

    spatial_shapes: tuple[tuple[int, int], ...]
    encoder_dense: AttentionCost
    encoder_deformable: AttentionCost
    decoder_dense: AttentionCost
    decoder_deformable: AttentionCost
    enc_layers: int
    dec_layers: int

    @property
    def n_tokens(self) -> int:
        return sum(h * w for h, w in self.spatial_shapes)

    def total(self, kind: str) -> int:
        """Multiply-adds over all attention layers for ``kind`` in {"dense", "deformable"}."""
        if kind == "dense":
            return self.enc_layers * self.encoder_dense.macs + self.dec_layers * self.decoder_dense.macs
        if kind == "deformable":
            return self.enc_layers * self.encoder_deformable.macs + self.dec_layers * self.decoder_deformable.macs
        raise ValueError(f"kind must be 'dense' or 'deformable', got {kind!r}")

    def rows(self) -> list[tuple[str, str, int, int]]:
        """(module, attention kind, query-key pairs, multiply-adds) for a table."""
        return [
            ("encoder layer", "dense", self.encoder_dense.pairs, self.encoder_dense.macs),
            ("encoder layer", "deformable", self.encoder_deformable.pairs, self.encoder_deformable.macs),
            ("decoder cross-attention", "dense", self.decoder_dense.pairs, self.decoder_dense.macs),
            ("decoder cross-attention", "deformable", self.decoder_deformable.pairs, self.decoder_deformable.macs),
        ]


def image_cost(spatial_shapes, channels: int, heads: int, points: int, n_queries: int,
               enc_layers: int, dec_layers: int) -> ImageCost:
    """spatial_shapes (L, 2) rows (H_l, W_l) of this image's padded level maps.

    Encoder: every token queries every token (N_q = N_k = N_v = sum H_l W_l). Decoder
    cross-attention: the object queries (N_q = Q) query all tokens.
    """
    shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
    n = sum(h * w for h, w in shapes)
    L = len(shapes)
    return ImageCost(
        shapes,
        dense_attention_cost(n, n, channels, heads, "encoder, dense self-attention"),
        deformable_attention_cost(n, n, channels, heads, L, points, "encoder, deformable self-attention"),
        dense_attention_cost(n_queries, n, channels, heads, "decoder, dense cross-attention"),
        deformable_attention_cost(n_queries, n, channels, heads, L, points, "decoder, deformable cross-attention"),
        int(enc_layers), int(dec_layers),
    )


def pyramid_shapes(height: int, width: int, levels: int = 4) -> tuple[tuple[int, int], ...]:
    """(H_l, W_l) of the multi-scale maps of a ResNet backbone for an input of that size:
    strides 8, 16, 32 (C3-C5) and one more stride-2 convolution per extra level. Every
    stride-2 layer (3x3 or 7x7, padding (k - 1) / 2) maps n to ceil(n / 2), so the stride-8 map
    is three halvings of the input; 800 x 1333 gives 100x167, 50x84, 25x42, 13x21."""
    if height < 1 or width < 1 or levels < 1:
        raise ValueError(f"image size and levels must be positive, got {height}x{width}, {levels} levels")
    h, w = int(height), int(width)
    for _ in range(3):
        h, w = -(-h // 2), -(-w // 2)
    shapes = []
    for _ in range(int(levels)):
        shapes.append((h, w))
        h, w = -(-h // 2), -(-w // 2)
    return tuple(shapes)


def human(n: float) -> str:
    """12345678 -> '12.3 M' (SI prefixes, 3 significant digits)."""
    n = float(n)
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n:.3g}"
