"""What if one sampling point moved, or weighed more? Recompute one query's attention output.

    inputs = layer_inputs(model, image, "decoder", layer=1)        # one forward pass
    r = what_if(inputs, query=17, head=3, level=0, point=2, shift_level_px=(1.5, 0.0))
    r.head_change, r.output_change                                  # relative L2 changes

``layer_inputs`` runs the model once with a forward hook on one layer's ``SamplingCore``
and keeps exactly what the op consumed there: the projected ``value`` tensor (B=1, Lv, M, D),
the level shapes, and every query's sampling locations and attention weights, plus that
layer's output projection. ``what_if`` then changes one point of one head of one query
(moves it by some level pixels, or gives it another attention weight, the head's other
weights rescaled so that they still sum to 1, as the softmax guarantees) and calls the
project's op (``ops.ms_deform_attn``) once on the original and once on the changed inputs.
Only that query's row is recomputed: rows of the op are independent of each other.

The rest of the network (the layer's residual, norm, feed-forward, later layers) is not
re-run: the answer is the change of this attention module's output, which is what the
lesson's "weighted sum" step explains.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PARTS = ("encoder", "decoder")


@dataclass
class LayerInputs:
    """The sampling core's inputs in one attention layer for one image (float32, CPU).

    value (1, Lv, M, D); spatial_shapes (L, 2) rows (H_l, W_l); level_start_index (L,);
    locations (1, Lq, M, L, P, 2) in [0, 1] of each padded level map, x first;
    weights (1, Lq, M, L, P); references (1, Lq, L, 2 | 4) the reference points (or boxes);
    output_weight (C, C) and output_bias (C,) of the layer's ``output_proj``. Lq = number of
    object queries (decoder) or of tokens (encoder). ``detections``: what predict returned.
    """

    part: str
    layer: int
    value: torch.Tensor
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor
    locations: torch.Tensor
    weights: torch.Tensor
    output_weight: torch.Tensor
    output_bias: torch.Tensor
    references: torch.Tensor | None = None
    detections: object = None

    @property
    def n_rows(self) -> int:
        return int(self.locations.shape[1])


def _attention(model, part: str, layer: int):
    if part not in PARTS:
        raise ValueError(f"part must be 'encoder' or 'decoder', got {part!r}")
    layers = model.transformer.encoder.layers if part == "encoder" else model.transformer.decoder.layers
    if not 0 <= layer < len(layers):
        raise IndexError(f"{part} layer {layer} does not exist; the model has {part} layers 0..{len(layers) - 1}")
    return layers[layer].self_attn if part == "encoder" else layers[layer].cross_attn


def layer_inputs(model, image, part: str, layer: int) -> LayerInputs:
    """Run ``model.predict(image)`` once and keep what the op consumed in ``part`` ``layer``.

    ``image``: anything ``model.predict`` accepts, one image. The hook exists only during
    this call (and is removed even if the forward pass fails)."""
    attn = _attention(model, part, layer)
    got: dict[str, torch.Tensor] = {}

    def hook(module, args, kwargs, output):
        value, shapes, lsi, loc, w = args[:5]
        got.update(value=value, spatial_shapes=shapes, level_start_index=lsi, locations=loc, weights=w,
                   references=kwargs.get("reference_points"))

    handle = attn.core.register_forward_hook(hook, with_kwargs=True)
    try:
        dets = model.predict(image)[0]
    finally:
        handle.remove()
    if not got:
        raise RuntimeError(f"{part} layer {layer}: the sampling core was not called during predict")
    if got["value"].shape[0] != 1:
        raise ValueError("layer_inputs takes one image, not a batch")
    f32 = lambda t: t.detach().to("cpu", torch.float32).contiguous()  # noqa: E731
    return LayerInputs(part, int(layer), f32(got["value"]), got["spatial_shapes"].detach().cpu(),
                       got["level_start_index"].detach().cpu(), f32(got["locations"]), f32(got["weights"]),
                       f32(attn.output_proj.weight), f32(attn.output_proj.bias),
                       None if got["references"] is None else f32(got["references"]), dets)


@dataclass
class WhatIf:
    """One query's attention output before and after the change.

    before / after (C,): the op's output (the M heads' D-channel results side by side);
    projected_before / projected_after (C,): after the layer's output projection;
    head: the changed head (its channels are ``head * D : (head + 1) * D``);
    location_before / location_after (2,) the point in level pixels (x, y);
    weight_before / weight_after: the point's attention weight;
    weights_after (L, P): the head's weights after the change (sum 1).
    """

    before: np.ndarray
    after: np.ndarray
    projected_before: np.ndarray
    projected_after: np.ndarray
    head: int
    head_dim: int
    location_before: np.ndarray
    location_after: np.ndarray
    weight_before: float
    weight_after: float
    weights_after: np.ndarray

    @property
    def head_slice(self) -> slice:
        return slice(self.head * self.head_dim, (self.head + 1) * self.head_dim)

    @property
    def head_change(self) -> float:
        """|after - before| / |before| over the changed head's D channels."""
        s = self.head_slice
        return _relative(self.after[s], self.before[s])

    @property
    def output_change(self) -> float:
        """|after - before| / |before| of the projected C-channel output of the module."""
        return _relative(self.projected_after, self.projected_before)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def reweighted(weights: torch.Tensor, level: int, point: int, new_weight: float) -> torch.Tensor:
    """A head's weights (L, P) with one point set to ``new_weight`` and the others scaled so
    that the sum stays 1 (shared evenly when they were all zero)."""
    if not 0.0 <= new_weight <= 1.0:
        raise ValueError(f"an attention weight is a softmax output in [0, 1], got {new_weight}")
    w = weights.clone()
    others = torch.ones_like(w, dtype=torch.bool)
    others[level, point] = False
    rest = float(w[others].sum())
    if rest > 1e-12:
        w[others] = w[others] * ((1.0 - new_weight) / rest)
    else:
        w[others] = (1.0 - new_weight) / max(int(others.sum()), 1)
    w[level, point] = new_weight
    return w


def modified_inputs(inputs: LayerInputs, query: int, head: int, level: int, point: int,
                    shift_level_px=(0.0, 0.0), weight: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(locations (1, 1, M, L, P, 2), weights (1, 1, M, L, P)) of row ``query`` with the change
    applied: the point moved by ``shift_level_px`` (x, y) pixels of its level's map and, when
    ``weight`` is given, its weight set to it (the head's others rescaled to keep the sum 1)."""
    _, Lq, M, L, P, _ = inputs.locations.shape
    for name, v, n in (("query", query, Lq), ("head", head, M), ("level", level, L), ("point", point, P)):
        if not 0 <= int(v) < n:
            raise IndexError(f"{name} {v} does not exist; this layer has {name}s 0..{n - 1}")
    loc = inputs.locations[:, query:query + 1].clone()  # (1, 1, M, L, P, 2)
    w = inputs.weights[:, query:query + 1].clone()  # (1, 1, M, L, P)
    H, W = (int(v) for v in inputs.spatial_shapes[level])
    dx, dy = (float(v) for v in shift_level_px)
    loc[0, 0, head, level, point, 0] += dx / W
    loc[0, 0, head, level, point, 1] += dy / H
    if weight is not None:
        w[0, 0, head] = reweighted(w[0, 0, head], level, point, float(weight))
    return loc, w


def what_if(inputs: LayerInputs, query: int, head: int, level: int, point: int,
            shift_level_px=(0.0, 0.0), weight: float | None = None) -> WhatIf:
    """Recompute row ``query`` of the op with one point of one head changed (see
    ``modified_inputs``); both calls go through ``ops.ms_deform_attn``."""
    import ops  # builds or loads the kernel on first use

    loc_after, w_after = modified_inputs(inputs, query, head, level, point, shift_level_px, weight)
    loc_before = inputs.locations[:, query:query + 1]
    w_before = inputs.weights[:, query:query + 1]
    args = (inputs.value, inputs.spatial_shapes, inputs.level_start_index)
    with torch.no_grad():
        before = ops.ms_deform_attn(*args, loc_before, w_before)[0, 0]  # (C,)
        after = ops.ms_deform_attn(*args, loc_after, w_after)[0, 0]
        proj = lambda x: torch.nn.functional.linear(x, inputs.output_weight, inputs.output_bias)  # noqa: E731
        pb, pa = proj(before), proj(after)
    H, W = (int(v) for v in inputs.spatial_shapes[level])
    scale = torch.tensor([W, H], dtype=torch.float32)
    return WhatIf(before.numpy(), after.numpy(), pb.numpy(), pa.numpy(), int(head), int(inputs.value.shape[-1]),
                  (loc_before[0, 0, head, level, point] * scale).numpy(),
                  (loc_after[0, 0, head, level, point] * scale).numpy(),
                  float(w_before[0, 0, head, level, point]), float(w_after[0, 0, head, level, point]),
                  w_after[0, 0, head].numpy())
