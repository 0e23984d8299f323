"""Which ``transformers`` detectors share our op, and how each one is read.

Every family below calls a ``MultiScaleDeformableAttention`` module with the forward
``(value, value_spatial_shapes, value_spatial_shapes_list, level_start_index,
sampling_locations, attention_weights, im2col_step)``; what differs is where the module sits
(part / layer, read from its qualified name), whether the model uses the pixel mask (valid
ratios) and whether its classes come from a text prompt. One ``Family`` entry holds those
facts; ``layer_outputs`` says how to read every decoder layer's logits and boxes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from .variants import is_v2

# Class names of the kernel modules a capture hooks and ``accelerate`` replaces.
KERNEL_CLASS = "MultiScaleDeformableAttention"
_PART_LAYER = re.compile(r"(?:^|\.)(encoder|decoder)\.layers\.(\d+)\.")


@dataclass(frozen=True)
class LayerOutputs:
    """Per decoder layer (D of them): logits (B, Q, K), boxes (B, Q, 4) cxcywh in [0, 1] of the
    unpadded image, and the layer's input reference (B, Q, 2 | 4); None where the model's
    output does not tell (then captures say so in ``left_out``)."""

    logits: list[torch.Tensor | None]
    boxes: list[torch.Tensor | None]
    references: list[torch.Tensor | None]


def as_box(t: torch.Tensor | None) -> torch.Tensor | None:
    """(..., 4) boxes cxcywh as they are; PP-DocLayout-V4's (..., 10) quads ``[cx, cy, dx1, dy1, ...,
    dx4, dy4]`` (offsets shifted by +0.5) -> the cxcywh box enclosing the four corners."""
    if t is None or t.shape[-1] != 10:
        return t
    x = t[..., :1] + t[..., 2::2] - 0.5  # (..., 4) corner x
    y = t[..., 1:2] + t[..., 3::2] - 0.5
    x0, x1, y0, y1 = x.amin(-1), x.amax(-1), y.amin(-1), y.amax(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)


def _refs(out, D: int) -> list[torch.Tensor | None]:
    init, inter = getattr(out, "init_reference_points", None), getattr(out, "intermediate_reference_points", None)
    init, inter = as_box(init), as_box(inter)
    if init is None or inter is None or inter.dim() != 4 or inter.shape[1] < D - 1:
        return [None] * D
    return [init if i == 0 else inter[:, i - 1] for i in range(D)]


def _recompute_heads(model, out, D: int, class_head: Callable) -> LayerOutputs:
    """Deformable DETR / Grounding DINO: every layer's head applied to its hidden state, with
    the box relative to the layer's input reference, as the models' own forward does."""
    hidden = out.intermediate_hidden_states  # (B, D, Q, C)
    refs = _refs(out, D)
    logits, boxes = [], []
    for i in range(D):
        ref = torch.special.logit(refs[i], eps=1e-5)
        delta = model.bbox_embed[i](hidden[:, i])
        if ref.shape[-1] == 4:
            coord = delta + ref
        else:
            coord = torch.cat([delta[..., :2] + ref, delta[..., 2:]], -1)
        logits.append(class_head(i, hidden[:, i]))
        boxes.append(coord.sigmoid())
    return LayerOutputs(logits, boxes, refs)


def _deformable_detr(model, out, D: int, text) -> LayerOutputs:
    return _recompute_heads(model, out, D, lambda i, h: model.class_embed[i](h))


def _grounding_dino(model, out, D: int, text) -> LayerOutputs:
    def head(i, h):
        return model.class_embed[i](vision_hidden_state=h, text_hidden_state=out.encoder_last_hidden_state_text,
                                    text_token_mask=text["attention_mask"].bool())

    return _recompute_heads(model, out, D, head)


def _intermediates(model, out, D: int, text) -> LayerOutputs:
    """RT-DETR and its descendants return every layer's logits and (refined) boxes."""
    inter_logits = getattr(out, "intermediate_logits", None)
    inter_boxes = getattr(out, "intermediate_reference_points", None)
    if inter_logits is None or inter_boxes is None or inter_logits.shape[1] != D:
        return _final_only(model, out, D, text)
    refs = _refs(out, D)
    if refs[0] is not None:  # RT-DETR returns its initial reference as a logit (reference_points_unact)
        refs[0] = refs[0].sigmoid()
    return LayerOutputs([inter_logits[:, i] for i in range(D)], [as_box(inter_boxes[:, i]) for i in range(D)], refs)


def _final_only(model, out, D: int, text) -> LayerOutputs:
    """Models whose output holds only the last layer's prediction."""
    logits, boxes = final_prediction(out)
    return LayerOutputs([None] * (D - 1) + [logits], [None] * (D - 1) + [boxes], [None] * D)


def final_prediction(out) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, Q, K), boxes (B, Q, 4) cxcywh in [0, 1]) of the last decoder layer. OmDet-Turbo
    names them decoder_class_logits / decoder_coord_logits (the latter already sigmoid-ed: its
    processor scales them to pixels as they are); PP-DocLayout-V4's quads become enclosing boxes."""
    if getattr(out, "pred_boxes", None) is not None:
        return out.logits, as_box(out.pred_boxes)
    return out.decoder_class_logits, out.decoder_coord_logits


@dataclass(frozen=True)
class Family:
    """How one ``model_type`` is read.

    uses_pixel_mask: the model scales references by valid ratios computed from the pixel mask
        (Deformable DETR's convention); otherwise the whole padded input is its frame.
    text: None, "phrases" (one prompt string "cat. dog.", scores per token, Grounding DINO) or
        "classes" (a list of class names, OmDet-Turbo).
    top_k: detections kept by post-processing (top-k over queries x classes).
    """

    model_type: str
    title: str
    uses_pixel_mask: bool
    layer_outputs: Callable[..., LayerOutputs]
    text: str | None = None
    top_k: int = 100


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("deformable_detr", "Deformable DETR", True, _deformable_detr),
    Family("grounding-dino", "Grounding DINO", True, _grounding_dino, text="phrases", top_k=300),
    Family("mm-grounding-dino", "MM Grounding DINO", True, _grounding_dino, text="phrases", top_k=300),
    Family("rt_detr", "RT-DETR", False, _intermediates, top_k=300),
    Family("rt_detr_v2", "RT-DETRv2", False, _intermediates, top_k=300),
    Family("d_fine", "D-FINE", False, _intermediates, top_k=300),
    Family("deimv2", "DEIMv2", False, _intermediates, top_k=300),
    Family("pp_doclayout_v2", "PP-DocLayout-V2", False, _intermediates, top_k=300),
    Family("pp_doclayout_v3", "PP-DocLayout-V3", False, _intermediates, top_k=300),
    Family("pp_doclayout_v4", "PP-DocLayout-V4", False, _intermediates, top_k=300),
    Family("lw_detr", "LW-DETR", True, _final_only, top_k=300),
    Family("rf_detr", "RF-DETR", True, _final_only, top_k=300),
    Family("omdet-turbo", "OmDet-Turbo", False, _final_only, text="classes", top_k=300),
)}

# Close variants a capture does not serve, and why. (The v2 attention of RT-DETRv2, D-FINE and
# DEIMv2 is captured: ``variants``.)
NOT_SUPPORTED = {
    "mask2former": "only its pixel decoder is deformable (an encoder, sampling in a function that could be "
                   "read like the v2 attention); the model predicts masks with masked attention, so there "
                   "are no decoder sampling points, boxes or detections for a capture and predict to hold",
    "oneformer": "the same pixel decoder as Mask2Former and the same mask (not box) decoder",
}


def family_of(model_type: str | None) -> Family | None:
    return FAMILIES.get(model_type or "")


def part_and_layer(qualified_name: str) -> tuple[str, int] | None:
    """("encoder" | "decoder", layer index) of a kernel module from its qualified name, e.g.
    ``model.decoder.layers.3.encoder_attn.attn`` -> ("decoder", 3)."""
    m = _PART_LAYER.search(qualified_name)
    return (m.group(1), int(m.group(2))) if m else None


def kernel_modules(model: torch.nn.Module) -> dict[str, list[tuple[int, str, torch.nn.Module]]]:
    """{"encoder": [(layer, name, module)], "decoder": [...]} of every kernel module (or v2
    attention, ``variants``), sorted by layer. Raises ValueError for one whose place cannot be read (a model this table does not
    describe)."""
    out: dict[str, list] = {"encoder": [], "decoder": []}
    for name, module in model.named_modules():
        if type(module).__name__ not in (KERNEL_CLASS, "AcceleratedMultiScaleDeformableAttention") and not is_v2(module):
            continue
        where = part_and_layer(name)
        if where is None:
            raise ValueError(f"deformable attention module {name} sits outside encoder.layers.N / "
                             "decoder.layers.N; this model family is not supported")
        out[where[0]].append((where[1], name, module))
    for v in out.values():
        v.sort(key=lambda t: t[0])
    return out
