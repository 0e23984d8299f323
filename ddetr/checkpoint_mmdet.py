"""mmdetection 3.x Deformable DETR checkpoints (detector ``DeformableDETR``, with or without
``with_box_refine`` / ``as_two_stage``): key mapping to and from our (official) layout.

The mapping follows mmdetection's own module tree (open-mmlab/mmdetection 3.x):

* ``mmdet/models/detectors/deformable_detr.py`` (``DeformableDETR._init_layers``): ``level_embed``,
  ``query_embedding`` (not two-stage; split into query_pos, query like the official
  ``query_embed``), ``reference_points_fc`` or, two-stage, ``memory_trans_fc`` /
  ``memory_trans_norm`` / ``pos_trans_fc`` / ``pos_trans_norm``; backbone ``backbone.*``
  (mmdet ``ResNet``: torchvision's names), neck ``neck.convs.i`` / ``neck.extra_convs.0``
  (``ChannelMapper`` of ``ConvModule``: ``.conv`` + ``.gn``; a conv followed by a norm has no
  bias there, ``bias='auto'``);
* ``mmdet/models/layers/transformer/deformable_detr_layers.py``: encoder layers hold
  ``self_attn`` (mmcv ``MultiScaleDeformableAttention``: ``sampling_offsets``,
  ``attention_weights``, ``value_proj``, ``output_proj``, our names), ``ffn`` (mmcv ``FFN``:
  ``layers.0.0`` and ``layers.1``) and ``norms.0-1``; decoder layers ``self_attn`` (mmcv
  ``MultiheadAttention`` wrapping ``nn.MultiheadAttention`` as ``.attn``), ``cross_attn``,
  ``ffn``, ``norms.0-2``. ``DetrTransformerDecoderLayer.forward`` applies norms[0] after
  self-attention, norms[1] after cross-attention, norms[2] after the FFN: the official
  decoder's norm2, norm1, norm3; the encoder's norms[0], norms[1] are norm1, norm2;
* ``mmdet/models/dense_heads/deformable_detr_head.py``: ``bbox_head.cls_branches.i`` (Linear)
  and ``bbox_head.reg_branches.i`` (Linear, ReLU, Linear, ReLU, Linear: ``.0 .2 .4``), one
  per decoder layer plus the proposal head when two-stage, shared when not refining.

The computation is the official one in every part (mmdetection's code is "modified from the
official github repo"), so a mapped state dict computes the same boxes.
"""
from __future__ import annotations

import argparse
import json
import re

import torch

from . import checkpoint_official as official
from .config import DDETRConfig, variant_name

# Our key regex -> mmdetection key template (encoder / decoder layer internals).
_ENC = {"norm1": "norms.0", "norm2": "norms.1", "linear1": "ffn.layers.0.0", "linear2": "ffn.layers.1"}
_DEC = {"norm2": "norms.0", "norm1": "norms.1", "norm3": "norms.2", "linear1": "ffn.layers.0.0",
        "linear2": "ffn.layers.1", "self_attn.in_proj_weight": "self_attn.attn.in_proj_weight",
        "self_attn.in_proj_bias": "self_attn.attn.in_proj_bias", "self_attn.out_proj": "self_attn.attn.out_proj"}
_TOP = {"transformer.level_embed": "level_embed", "query_embed": "query_embedding",
        "transformer.reference_points": "reference_points_fc", "transformer.enc_output_norm": "memory_trans_norm",
        "transformer.enc_output": "memory_trans_fc", "transformer.pos_trans_norm": "pos_trans_norm",
        "transformer.pos_trans": "pos_trans_fc"}
_REG = {"0": "0", "1": "2", "2": "4"}  # our MLP layers.j -> mmdet Sequential index (ReLUs between)


def looks_mmdet(keys) -> bool:
    """mmdetection 3.x DeformableDETR: a bbox_head with cls_branches and a top-level encoder."""
    keys = list(keys)
    return any(k.startswith("bbox_head.cls_branches.") for k in keys) and any(k.startswith("encoder.layers.") for k in keys)


def _swap(rest: str, table: dict[str, str]) -> str:
    for ours, theirs in table.items():
        if rest == ours or rest.startswith(ours + "."):
            return theirs + rest[len(ours):]
    return rest


def ours_to_mmdet(sd: dict[str, torch.Tensor], n_backbone_levels: int) -> dict[str, torch.Tensor]:
    """Our / official state dict -> mmdetection keys. The official duplicates of the heads
    (``transformer.decoder.{class,bbox}_embed``) are dropped: mmdet holds them once."""
    out = {}
    for k, v in sd.items():
        if k.startswith("transformer.decoder.") and re.match(r"transformer\.decoder\.(class|bbox)_embed\.", k):
            continue
        m = re.match(r"backbone\.0\.body\.(.*)", k)
        if m:
            out[f"backbone.{m.group(1)}"] = v
            continue
        m = re.match(r"input_proj\.(\d+)\.([01])\.(.*)", k)
        if m:
            i, part, name = int(m.group(1)), m.group(2), m.group(3)
            if part == "0" and name == "bias":
                continue  # ConvModule before GroupNorm has no bias (see ``to_mmdet``)
            mod = f"neck.convs.{i}" if i < n_backbone_levels else f"neck.extra_convs.{i - n_backbone_levels}"
            out[f"{mod}.{'conv' if part == '0' else 'gn'}.{name}"] = v
            continue
        m = re.match(r"transformer\.(encoder|decoder)\.layers\.(\d+)\.(.*)", k)
        if m:
            part, i, rest = m.groups()
            out[f"{part}.layers.{i}.{_swap(rest, _ENC if part == 'encoder' else _DEC)}"] = v
            continue
        m = re.match(r"class_embed\.(\d+)\.(.*)", k)
        if m:
            out[f"bbox_head.cls_branches.{m.group(1)}.{m.group(2)}"] = v
            continue
        m = re.match(r"bbox_embed\.(\d+)\.layers\.(\d+)\.(.*)", k)
        if m:
            out[f"bbox_head.reg_branches.{m.group(1)}.{_REG[m.group(2)]}.{m.group(3)}"] = v
            continue
        out[_swap(k, _TOP)] = v
    return out


def mmdet_to_ours(sd: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    """mmdetection keys -> our / official keys; the neck's missing conv biases become zeros."""
    n_backbone = len({int(m.group(1)) for k in sd for m in [re.match(r"neck\.convs\.(\d+)\.", k)] if m})
    enc_inv = {v: k for k, v in _ENC.items()}
    dec_inv = {v: k for k, v in _DEC.items()}
    top_inv = {v: k for k, v in _TOP.items()}
    reg_inv = {v: k for k, v in _REG.items()}
    out, added = {}, 0
    for k, v in sd.items():
        if k.startswith("backbone."):
            out[f"backbone.0.body.{k[len('backbone.'):]}"] = v
            continue
        m = re.match(r"neck\.(convs|extra_convs)\.(\d+)\.(conv|gn)\.(.*)", k)
        if m:
            kind, i, sub, name = m.groups()
            i = int(i) + (n_backbone if kind == "extra_convs" else 0)
            out[f"input_proj.{i}.{0 if sub == 'conv' else 1}.{name}"] = v
            if sub == "conv" and name == "weight" and f"neck.{kind}.{m.group(2)}.conv.bias" not in sd:
                out[f"input_proj.{i}.0.bias"] = v.new_zeros(v.shape[0])
                added += 1
            continue
        m = re.match(r"(encoder|decoder)\.layers\.(\d+)\.(.*)", k)
        if m:
            part, i, rest = m.groups()
            out[f"transformer.{part}.layers.{i}.{_swap(rest, enc_inv if part == 'encoder' else dec_inv)}"] = v
            continue
        m = re.match(r"bbox_head\.cls_branches\.(\d+)\.(.*)", k)
        if m:
            out[f"class_embed.{m.group(1)}.{m.group(2)}"] = v
            continue
        m = re.match(r"bbox_head\.reg_branches\.(\d+)\.(\d+)\.(.*)", k)
        if m:
            if m.group(2) not in reg_inv:
                raise ValueError(f"{k}: a box head deeper than 3 linear layers is not supported")
            out[f"bbox_embed.{m.group(1)}.layers.{reg_inv[m.group(2)]}.{m.group(3)}"] = v
            continue
        out[_swap(k, top_inv)] = v
    if added:
        notes.append(f"mmdetection's neck convolutions carry no bias (ConvModule before GroupNorm): "
                     f"{added} input_proj biases set to 0, which is what the file computes")
    return out


def _refines(sd: dict[str, torch.Tensor]) -> bool:
    """Box refinement = per-layer heads: mmdet saves a shared head once per index, so equal
    tensors under every index mean shared (no refinement)."""
    keys = sorted(k for k in sd if re.match(r"bbox_head\.reg_branches\.\d+\.0\.weight$", k))
    return len(keys) > 1 and not all(torch.equal(sd[keys[0]], sd[k]) for k in keys[1:])


def _stated(meta: dict, notes: list[str]) -> argparse.Namespace | None:
    """What mmdetection's saved config text says about heads and queries (official names)."""
    text = meta.get("cfg") or meta.get("config")
    if not isinstance(text, str):
        return None
    found = {}
    for ours, pattern in (("nheads", r"num_heads\s*=\s*(\d+)"), ("num_queries", r"num_queries\s*=\s*(\d+)")):
        m = re.search(pattern, text)
        if m:
            found[ours] = int(m.group(1))
    if found:
        notes.append("read " + ", ".join(f"{k}={v}" for k, v in found.items()) + " from the mmdetection config in the file")
    return argparse.Namespace(**found) if found else None


def build_config(sd: dict[str, torch.Tensor], meta: dict | None, variant: str | None, notes: list[str]):
    """(format, DDETRConfig, state dict in our keys, label source) for an mmdetection state dict."""
    meta = meta if isinstance(meta, dict) else {}
    refine = _refines(sd)
    ours = mmdet_to_ours(sd, notes)
    if refine:  # the official layout also names the refinement heads inside the decoder
        for k in [k for k in ours if k.startswith("bbox_embed.")]:
            ours[f"transformer.decoder.{k}"] = ours[k]
    notes.append("mmdetection 3.x DeformableDETR layout" + (" with box refinement" if refine else ""))
    full = meta.get("ddetr_config")
    if isinstance(full, str):  # written by ``to_mmdet``: our whole config rides along
        return "mmdetection", DDETRConfig.from_dict(json.loads(full)), ours, "checkpoint config"
    # mmdetection's Deformable DETR configs freeze the ResNet's BN (requires_grad=False,
    # norm_eval=True): that is frozen batch norm, which keeps no counter.
    ours = {k: v for k, v in ours.items() if not (k.startswith("backbone.") and k.endswith("num_batches_tracked"))}
    fmt, cfg, ours, label_source = official.build_config(ours, _stated(meta, notes), variant, notes)
    classes = (meta.get("dataset_meta") or {}).get("classes") or meta.get("CLASSES")
    if isinstance(classes, (list, tuple)) and len(classes) == cfg.num_classes:
        cfg.class_names, label_source = tuple(map(str, classes)), "mmdetection dataset_meta classes"
    cfg.variant = variant_name(cfg)
    return "mmdetection", cfg, ours, label_source


def to_mmdet(model) -> dict:
    """``{'meta': ..., 'state_dict': ...}`` as mmdetection saves it, for ``model``. Raises
    ValueError when an input-projection conv has a non-zero bias: mmdetection's neck has no
    place for it (the GroupNorm after it does not cancel a per-channel bias)."""
    sd = model.state_dict()
    nonzero = [k for k, v in sd.items() if re.match(r"input_proj\.\d+\.0\.bias$", k) and bool(v.abs().max() > 0)]
    if nonzero:
        raise ValueError(f"{len(nonzero)} input_proj conv biases are non-zero ({nonzero[0]} ...): mmdetection's "
                         "ChannelMapper convolutions have no bias, so the model cannot be written exactly")
    cfg = model.cfg
    out = ours_to_mmdet({k: v.detach().cpu().clone() for k, v in sd.items()}, cfg.num_backbone_levels)
    for k in [k for k in out if k.startswith("backbone.") and k.endswith(".running_var")]:
        # mmdetection's frozen ResNet is nn.BatchNorm2d in eval mode: it keeps a counter.
        out.setdefault(k[:-len("running_var")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    meta = {"dataset_meta": {"classes": list(cfg.class_names)}, "ddetr_config": cfg.to_json()}
    return {"meta": meta, "state_dict": out}
