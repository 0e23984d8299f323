"""A/B comparison of two checkpoints of one architecture on the same image.

Two captures (A and B, e.g. two epochs, or before and after a fine-tune) of one image ->
both attention views of a detection side by side, and what changed: per-level attention
mass, per-head offset distance and how far each head's weights moved (total variation:
0 = the same distribution over its L * P points, 1 = disjoint). Queries are matched by box:
two-stage models pick their queries per image, so query *i* of A need not be query *i* of B;
the query of B whose final box overlaps A's most is A's counterpart.

Pure functions of captures; ``python -m viz --compare CKPT_A CKPT_B --image IMG`` runs the models.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .query_view import render_query_overlay
from .selection import Selection, resolve_layer

_ARCH = ("n_heads", "n_levels", "n_points", "enc_layers", "dec_layers", "d_model")


def check_comparable(a, b) -> None:
    """ValueError unless A and B are captures of one image by models of one attention geometry."""
    diff = [k for k in _ARCH if a.meta[k] != b.meta[k]]
    if diff:
        raise ValueError("the two checkpoints differ in " + ", ".join(f"{k} ({a.meta[k]} vs {b.meta[k]})" for k in diff)
                         + "; compare checkpoints of one architecture")
    if a.image.shape != b.image.shape or not np.array_equal(a.image, b.image):
        raise ValueError("the two captures are of different images; capture both on the same image")


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[..., 2:] - x[..., :2], 0, None).prod(-1)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


def matching_query(a, b, query: int, layer: int = -1) -> tuple[int, float]:
    """(query of B, IoU): B's query whose box at ``layer`` overlaps A's ``query`` box most,
    among the queries B's capture stored."""
    la, lb = resolve_layer(a, "decoder", layer), resolve_layer(b, "decoder", layer)
    box = a.geometry.box_to_image(a.arrays[f"layer/{la}/boxes"][query])
    stored = b.arrays["dec/query_index"]
    boxes = b.geometry.box_to_image(b.arrays[f"layer/{lb}/boxes"][stored])
    ious = _iou(box, boxes)
    i = int(np.argmax(ious))
    return int(stored[i]), float(ious[i])


@dataclass
class QueryDiff:
    """One detection in A and B at one decoder layer. level_mass_a / _b (L,) shares of the
    attention mass; distance_a / _b (M,) attention-weighted mean offset length in image px;
    weight_change (M,) total variation between A's and B's weights of each head (0..1);
    point_shift (M,) weighted mean distance between corresponding sampling points, image px."""

    query_a: int
    query_b: int
    iou: float
    layer: int
    level_mass_a: np.ndarray
    level_mass_b: np.ndarray
    distance_a: np.ndarray
    distance_b: np.ndarray
    weight_change: np.ndarray
    point_shift: np.ndarray

    @property
    def level_mass_change(self) -> np.ndarray:
        return self.level_mass_b - self.level_mass_a

    def to_dict(self) -> dict:
        out = {k: (np.round(v, 6).tolist() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}
        out["level_mass_change"] = np.round(self.level_mass_change, 6).tolist()
        return out


def _per_head(points: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w = points["weights"].astype(np.float64)  # (M, L, P)
    w = w / np.maximum(w.sum((-1, -2), keepdims=True), 1e-12)
    level = w.sum(-1).mean(0)  # (L,)
    dist = np.linalg.norm(points["offsets_image_px"], axis=-1) if points["offsets_image_px"] is not None else None
    return w, level, (w * dist).sum((-1, -2)) if dist is not None else np.full(w.shape[0], np.nan)


def compare_query(a, b, query_a: int, query_b: int | None = None, layer: int = -1) -> QueryDiff:
    """What changed for one detection between A and B (``query_b`` defaults to the matched one)."""
    check_comparable(a, b)
    iou = 1.0
    if query_b is None:
        query_b, iou = matching_query(a, b, query_a, layer)
    la = resolve_layer(a, "decoder", layer)
    pa, pb = a.decoder_points(la, query_a), b.decoder_points(la, query_b)
    wa, lma, da = _per_head(pa)
    wb, lmb, db = _per_head(pb)
    tv = 0.5 * np.abs(wa - wb).sum((-1, -2))  # (M,)
    shift = np.linalg.norm(pa["image_px"] - pb["image_px"], axis=-1)  # (M, L, P)
    shift = (0.5 * (wa + wb) * shift).sum((-1, -2))
    return QueryDiff(query_a, query_b, iou, la, lma, lmb, da, db, tv, shift)


def layer_differences(a, b) -> dict[str, dict[str, list]]:
    """Per captured layer: level mass, entropy and wasted share in A and B (whole image:
    all image tokens / the queries of the best detections; see ``ddetr.attention_stats``)."""
    from ddetr.attention_stats import AttentionStats

    check_comparable(a, b)
    sa, sb = AttentionStats(), AttentionStats()
    sa.add(a)
    sb.add(b)
    out = {}
    for part, i in sa.keys():
        x, y = sa.layer(part, i), sb.layer(part, i)
        if y is None:
            continue
        out[f"{part}/{i}"] = {k: [np.round(x[k], 6).tolist(), np.round(y[k], 6).tolist()]
                              for k in ("level_mass", "entropy", "wasted")}
    return out


def _title(capture, query: int, layer: int, tag: str) -> str:
    p = capture.decoder_points(layer, query)
    name = capture.class_names[p["label"]] if p["label"] < len(capture.class_names) else f"class {p['label']}"
    return f"{tag}: query {query}, {name} {p['score']:.2f}"


def compare_figure(a, b, diff: QueryDiff, selection: Selection = Selection(), names=("A", "B")) -> go.Figure:
    """Plotly: A's and B's query views side by side, then level mass, offset distance and
    weight change per head."""
    sel = selection.with_(layer=diff.layer)
    ra = render_query_overlay(a, diff.query_a, sel)
    rb = render_query_overlay(b, diff.query_b, sel)
    fig = make_subplots(rows=2, cols=3, specs=[[{"colspan": 2}, None, {}], [{}, {}, {}]],
                        row_heights=[0.62, 0.38], vertical_spacing=0.1,
                        subplot_titles=(f"{_title(a, diff.query_a, diff.layer, names[0])}  |  "
                                        f"{_title(b, diff.query_b, diff.layer, names[1])}", "",
                                        "attention mass per level", "offset distance per head (px)",
                                        "weight change per head (0..1)"))
    gap = np.full((ra.shape[0], 8, 3), 255, np.uint8)
    fig.add_trace(go.Image(z=np.concatenate([ra, gap, rb], 1), hoverinfo="skip"), 1, 1)
    levels = [f"level {i}" for i in range(len(diff.level_mass_a))]
    heads = [f"h{m}" for m in range(len(diff.distance_a))]
    for x, ya, yb, col in ((levels, diff.level_mass_a, diff.level_mass_b, 1), (heads, diff.distance_a, diff.distance_b, 2)):
        fig.add_trace(go.Bar(x=x, y=ya, name=names[0], marker_color="#1f77b4", showlegend=col == 1), 2, col)
        fig.add_trace(go.Bar(x=x, y=yb, name=names[1], marker_color="#ff7f0e", showlegend=col == 1), 2, col)
    fig.add_trace(go.Bar(x=heads, y=diff.weight_change, marker_color="#555", showlegend=False,
                         hovertext=[f"points moved {s:.1f} px" for s in diff.point_shift]), 2, 3)
    fig.update_xaxes(visible=False, row=1, col=1)
    fig.update_yaxes(visible=False, row=1, col=1)
    fig.update_yaxes(range=[0, 1], row=2, col=3)
    fig.update_layout(barmode="group", height=760, width=1100, margin=dict(l=30, r=20, t=60, b=30),
                      title=f"A/B at decoder layer {diff.layer} (box IoU of the matched queries {diff.iou:.2f})")
    return fig


def compare_figure_mpl(a, b, diff: QueryDiff, selection: Selection = Selection(), names=("A", "B")):
    """Matplotlib version of ``compare_figure`` (for PNG / PDF files)."""
    import matplotlib.pyplot as plt

    sel = selection.with_(layer=diff.layer)
    fig = plt.figure(figsize=(10, 7.5))
    grid = fig.add_gridspec(2, 3, height_ratios=[1.6, 1])
    for col, (cap, q, tag) in enumerate(((a, diff.query_a, names[0]), (b, diff.query_b, names[1]))):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(render_query_overlay(cap, q, sel))
        ax.set_title(_title(cap, q, diff.layer, tag), fontsize=8)
        ax.axis("off")
    ax = fig.add_subplot(grid[0, 2])
    ax.bar(np.arange(len(diff.weight_change)), diff.weight_change, color="#555")
    ax.set_ylim(0, 1)
    ax.set_title("weight change per head (0..1)", fontsize=8)
    ax.set_xlabel("head")
    x = np.arange(len(diff.level_mass_a))
    ax = fig.add_subplot(grid[1, 0:2])
    ax.bar(x - 0.2, diff.level_mass_a, 0.4, label=names[0])
    ax.bar(x + 0.2, diff.level_mass_b, 0.4, label=names[1])
    ax.set_xticks(x, [f"level {i}" for i in x])
    ax.set_title("attention mass per level", fontsize=8)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[1, 2])
    h = np.arange(len(diff.distance_a))
    ax.bar(h - 0.2, diff.distance_a, 0.4, label=names[0])
    ax.bar(h + 0.2, diff.distance_b, 0.4, label=names[1])
    ax.set_title("offset distance per head (image px)", fontsize=8)
    ax.set_xlabel("head")
    fig.suptitle(f"A/B at decoder layer {diff.layer} (box IoU of the matched queries {diff.iou:.2f})", fontsize=9)
    fig.tight_layout()
    return fig
