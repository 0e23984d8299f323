"""Attention statistics aggregated over many captures, per layer / head / level.

A checkpoint is judged on a set of images, never on one: ``AttentionStats.add(capture)``
folds one image's ``Capture`` into running *sums and counts*, so that statistics of shards
computed in separate processes merge exactly (``merge``; ``torchrun`` inspection sums the
shards) and ``summary()`` turns them into means. Rows judged per layer:

* encoder: every token that holds image (padding tokens are not looked at by anything);
* decoder: the queries behind the ``decoder_queries`` best detections of each image (what a
  user looks at; the other queries are background and may attend anywhere).

Per (part, layer) the sums are (M heads, L levels, P points):

* ``entropy`` (M,): normalized entropy H / log(L * P) of each head's weights (1 = uniform);
* ``mass`` (M, L): share of each head's attention mass on each level;
* ``padding`` / ``outside`` (M,): share of mass on points in padding / outside the padded map;
* ``offset_level_px`` / ``offset_image_px`` (M, L): weighted mean offset length (location
  minus reference centre), in level and original-image pixels;
* ``direction`` (M, 2): mean unit offset vector (image frame): its angle is where a head
  looks, its length (0..1) how consistently.

Per decoder layer: ``saturated`` counts queries whose reference has a coordinate within
``SATURATION_EPS`` of 0 or 1 (all queries, not just the best). Per image: the top detection
score (``top_score_max`` / ``top_score_sum``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DECODER_QUERIES = 20  # decoder rows per image: the queries of the best detections
SATURATION_EPS = 1e-3  # a reference coordinate this close to 0 or 1: sigmoid saturated

_PER_LAYER = ("entropy", "mass", "padding", "outside", "offset_level_px", "offset_image_px", "direction")


def normalized_entropy(weights: np.ndarray) -> np.ndarray:
    """weights (..., L, P), summing to 1 over (L, P) -> (...,) entropy / log(L * P) in [0, 1]."""
    w = np.asarray(weights, dtype=np.float64).reshape(*weights.shape[:-2], -1)
    w = w / np.maximum(w.sum(-1, keepdims=True), 1e-12)  # float16 storage: renormalize
    h = -(w * np.log(np.clip(w, 1e-300, None))).sum(-1)
    return h / math.log(w.shape[-1]) if w.shape[-1] > 1 else np.zeros_like(h)


def region_masks(locations: np.ndarray, valid_ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """locations (N, M, L, P, 2) op frame; valid_ratios (L, 2) as (w, h) ->
    (in padding, outside the padded map), each (N, M, L, P) bool. A point is in the image when
    0 <= u <= valid_ratio on both axes, in padding when inside [0, 1] but not in the image."""
    u = np.asarray(locations, dtype=np.float64)
    vr = np.asarray(valid_ratios, dtype=np.float64)[None, None, :, None, :]  # (1, 1, L, 1, 2)
    in_map = ((u >= 0) & (u <= 1)).all(-1)
    in_image = ((u >= 0) & (u <= vr)).all(-1)
    return in_map & ~in_image, ~in_map


def layer_rows(capture, part: str, layer: int, decoder_queries: int = DECODER_QUERIES) -> dict:
    """``capture.sampling`` of the rows worth judging (module docstring) of one layer."""
    if part == "encoder":
        valid = ~capture.arrays["padding_mask"].astype(bool)
        return capture.sampling("encoder", layer, np.flatnonzero(valid))
    qi = capture.arrays["dec/query_index"]
    wanted = list(dict.fromkeys(int(q) for q in capture.arrays["det/query_index"][:decoder_queries]))
    pos = [int(np.flatnonzero(qi == q)[0]) for q in wanted if (qi == q).any()]
    return capture.sampling("decoder", layer, np.asarray(pos if pos else np.arange(len(qi)), dtype=np.int64))


@dataclass
class LayerSums:
    """Running sums of one attention layer (module docstring); ``rows`` counts (row, head)
    pairs per head, so every per-head mean is ``sum / rows``."""

    rows: float = 0.0
    sums: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, name: str, value: np.ndarray) -> None:
        v = np.asarray(value, dtype=np.float64)
        self.sums[name] = self.sums[name] + v if name in self.sums else v.copy()


def sample_stats(s: dict, geometry) -> dict[str, np.ndarray]:
    """Per-image sums of the per-layer statistics for rows ``s`` (``capture.sampling`` output:
    locations (N, M, L, P, 2), weights (N, M, L, P), references (N, L, 2|4) or None)."""
    w = np.asarray(s["weights"], dtype=np.float64)
    w = w / np.maximum(w.sum((-1, -2), keepdims=True), 1e-12)  # (N, M, L, P), float16 storage
    loc = np.asarray(s["locations"], dtype=np.float64)
    pad, out = region_masks(loc, geometry.valid_ratios)
    res = {"entropy": normalized_entropy(w).sum(0), "mass": w.sum((0, 3)),
           "padding": (w * pad).sum((0, 2, 3)), "outside": (w * out).sum((0, 2, 3))}
    if s.get("references") is not None:
        ref = np.asarray(s["references"], dtype=np.float64)[:, None, :, None]  # (N, 1, L, 1, 2|4)
        off = geometry.offsets(loc, ref)
        lvl, img = np.linalg.norm(off["level_px"], axis=-1), np.linalg.norm(off["image_px"], axis=-1)
        unit = off["image_px"] / np.maximum(img[..., None], 1e-9)
        res.update(offset_level_px=(w * lvl).sum((0, 3)), offset_image_px=(w * img).sum((0, 3)),
                   direction=(w[..., None] * unit).sum((0, 2, 3)))
    return res


@dataclass
class AttentionStats:
    """Sums over images; ``add`` one capture at a time, ``merge`` shards, ``summary`` means."""

    decoder_queries: int = DECODER_QUERIES
    images: int = 0
    layers: dict[str, LayerSums] = field(default_factory=dict)  # "encoder/0" -> sums
    saturated: dict[str, float] = field(default_factory=dict)  # "decoder/0" -> queries saturated
    queries: dict[str, float] = field(default_factory=dict)  # "decoder/0" -> queries seen
    top_score_sum: float = 0.0
    top_score_max: float = 0.0

    def add(self, capture) -> None:
        g = capture.geometry
        for part, layers in (("encoder", capture.encoder_layers), ("decoder", capture.decoder_layers)):
            for layer in layers:
                s = layer_rows(capture, part, layer, self.decoder_queries)
                n = s["weights"].shape[0]
                if n == 0:
                    continue
                acc = self.layers.setdefault(f"{part}/{layer}", LayerSums())
                acc.rows += n
                for k, v in sample_stats(s, g).items():
                    acc.add(k, v)
        for i in range(int(capture.meta["dec_layers"])):
            ref = capture.arrays.get(f"layer/{i}/reference")
            if ref is None:
                continue
            sat = ((ref < SATURATION_EPS) | (ref > 1 - SATURATION_EPS)).any(-1)
            self.saturated[f"decoder/{i}"] = self.saturated.get(f"decoder/{i}", 0.0) + float(sat.sum())
            self.queries[f"decoder/{i}"] = self.queries.get(f"decoder/{i}", 0.0) + float(len(sat))
        scores = capture.arrays["det/scores"]
        top = float(scores.max()) if scores.size else 0.0
        self.top_score_sum += top
        self.top_score_max = max(self.top_score_max, top)
        self.images += 1

    def merge(self, other: "AttentionStats") -> "AttentionStats":
        """Sum of two shards (a new object); equal to adding both shards' images to one."""
        out = AttentionStats(self.decoder_queries)
        for src in (self, other):
            out.images += src.images
            out.top_score_sum += src.top_score_sum
            out.top_score_max = max(out.top_score_max, src.top_score_max)
            for k, acc in src.layers.items():
                dst = out.layers.setdefault(k, LayerSums())
                dst.rows += acc.rows
                for name, v in acc.sums.items():
                    dst.add(name, v)
            for d, s in ((out.saturated, src.saturated), (out.queries, src.queries)):
                for k, v in s.items():
                    d[k] = d.get(k, 0.0) + v
        return out

    def layer(self, part: str, layer: int) -> dict[str, np.ndarray] | None:
        """Means of one layer: entropy (M,), mass (M, L), level_mass (L,), padding, outside,
        wasted (M,), offset_level_px / offset_image_px (M, L), direction (M, 2)."""
        acc = self.layers.get(f"{part}/{layer}")
        if acc is None or acc.rows == 0:
            return None
        out = {k: v / acc.rows for k, v in acc.sums.items()}
        out["level_mass"] = out["mass"].mean(0)
        out["wasted"] = out["padding"] + out["outside"]
        if "offset_level_px" in out:  # weighted sums / head mass on the level -> mean length
            m = np.maximum(out["mass"], 1e-12)
            out["offset_level_px"] = out["offset_level_px"] / m
            out["offset_image_px"] = out["offset_image_px"] / m
        out["rows"] = np.array(acc.rows)
        return out

    def keys(self) -> list[tuple[str, int]]:
        """(part, layer) of every layer seen, encoder first."""
        parts = [k.split("/") for k in self.layers]
        return sorted(((p, int(i)) for p, i in parts), key=lambda t: (t[0] != "encoder", t[1]))

    def saturation(self) -> dict[int, float]:
        """Decoder layer -> share of queries whose reference is saturated at 0 / 1."""
        return {int(k.split("/")[1]): self.saturated[k] / max(self.queries[k], 1.0) for k in sorted(self.saturated)}

    def summary(self) -> dict:
        """JSON-able means: {"images", "top_score_mean", "top_score_max", "reference_saturation",
        "layers": {"encoder/0": {statistic: nested lists}}}."""
        layers = {}
        for part, i in self.keys():
            m = self.layer(part, i)
            layers[f"{part}/{i}"] = {k: np.round(v, 6).tolist() for k, v in m.items()}
        return {"images": self.images, "top_score_mean": round(self.top_score_sum / max(self.images, 1), 6),
                "top_score_max": round(self.top_score_max, 6),
                "reference_saturation": {str(k): round(v, 6) for k, v in self.saturation().items()},
                "layers": layers}

    # --- plain dict for torch.distributed.all_gather_object / files ---
    def to_state(self) -> dict:
        return {"decoder_queries": self.decoder_queries, "images": self.images,
                "top_score_sum": self.top_score_sum, "top_score_max": self.top_score_max,
                "saturated": dict(self.saturated), "queries": dict(self.queries),
                "layers": {k: {"rows": a.rows, "sums": {n: v.tolist() for n, v in a.sums.items()}}
                           for k, a in self.layers.items()}}

    @classmethod
    def from_state(cls, s: dict) -> "AttentionStats":
        out = cls(s["decoder_queries"], s["images"], top_score_sum=s["top_score_sum"], top_score_max=s["top_score_max"])
        out.saturated, out.queries = dict(s["saturated"]), dict(s["queries"])
        for k, a in s["layers"].items():
            out.layers[k] = LayerSums(a["rows"], {n: np.asarray(v, dtype=np.float64) for n, v in a["sums"].items()})
        return out
