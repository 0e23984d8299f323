"""The official fundamentalvision/Deformable-DETR checkpoint layout: what its ``args`` say, what
its tensors say when there are no args, and the ``args`` we write so the official code (and
we) can read our files back.

Our module names reproduce the official keys, so no renaming happens here. Functions raise
ValueError with the problem; ``ddetr.checkpoint.load`` adds which file it was.
"""
from __future__ import annotations

import argparse
import json
import re

import torch

from .coco_names import COCO_CLASSES
from .config import DDETRConfig, variant_name

# The official get_args_parser defaults of the architecture flags (main.py).
_OFFICIAL_DEFAULTS = dict(
    backbone="resnet50", dilation=False, position_embedding="sine", num_feature_levels=4,
    enc_layers=6, dec_layers=6, dim_feedforward=1024, hidden_dim=256, dropout=0.1, nheads=8,
    num_queries=300, dec_n_points=4, enc_n_points=4, with_box_refine=False, two_stage=False,
    masks=False, dataset_file="coco",
)


def _count(sd, pattern: str) -> int:
    idx = {int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m}
    return max(idx) + 1 if idx else 0


def _shape(sd, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"expected tensor {key!r} is missing")
    return tuple(sd[key].shape)


def looks_official(keys) -> bool:
    """Our / the official layout: ``transformer.*``, ``backbone.0.body.*``, ``input_proj.*``."""
    return any(k.startswith(("transformer.encoder.", "transformer.decoder.", "backbone.0.body.")) for k in keys)


def infer_fields(sd: dict[str, torch.Tensor], n_heads: int | None, notes: list[str]) -> dict:
    """DDETRConfig fields read off key names and tensor shapes (our / official layout).

    Not recoverable from tensors: DC5 dilation (same weights, different strides), the number of
    heads (sampling_offsets rows are heads * levels * points * 2), and two-stage query counts.
    ``n_heads`` comes from args when known; else 8 (every official model) and a note.
    """
    levels = _count(sd, r"^input_proj\.(\d+)\.")
    if levels == 0:
        raise ValueError("no input_proj.* tensors: cannot tell the number of feature levels")
    d_model = _shape(sd, "transformer.level_embed")[1]
    enc_layers = _count(sd, r"^transformer\.encoder\.layers\.(\d+)\.")
    dec_layers = _count(sd, r"^transformer\.decoder\.layers\.(\d+)\.")
    if n_heads is None:
        n_heads = 8
        notes.append("number of attention heads is not stored in the file: assumed 8 (every official model)")
    points = []
    for name, key in (("encoder", "transformer.encoder.layers.0.self_attn.attention_weights.weight"),
                      ("decoder", "transformer.decoder.layers.0.cross_attn.attention_weights.weight")):
        rows = _shape(sd, key)[0]
        if rows % (n_heads * levels):
            raise ValueError(f"{name} attention_weights has {rows} rows, not a multiple of heads ({n_heads}) x levels ({levels})")
        points.append(rows // (n_heads * levels))
    if points[0] != points[1]:
        raise ValueError(f"enc_n_points={points[0]} differs from dec_n_points={points[1]}; only equal counts are supported")
    body = "backbone.0.body."
    bottleneck = f"{body}layer1.0.conv3.weight" in sd
    blocks = tuple(_count(sd, rf"^{re.escape(body)}layer{s}\.(\d+)\.") for s in (1, 2, 3, 4))
    width = _shape(sd, f"{body}conv1.weight")[0]
    norm = "bn" if f"{body}bn1.num_batches_tracked" in sd else "frozen_bn"
    r50 = bottleneck and blocks == (3, 4, 6, 3) and width == 64
    fields = dict(
        backbone="resnet50" if r50 else "resnet_small",
        backbone_norm=norm,
        backbone_width=width,
        backbone_blocks=blocks,
        backbone_block="bottleneck" if bottleneck else "basic",
        train_stem=norm == "bn",
        d_model=d_model,
        n_heads=n_heads,
        n_levels=levels,
        n_points=points[0],
        enc_layers=enc_layers,
        dec_layers=dec_layers,
        dim_feedforward=_shape(sd, "transformer.encoder.layers.0.linear1.weight")[0],
        num_classes=_shape(sd, "class_embed.0.weight")[0],
        with_box_refine=any(k.startswith("transformer.decoder.bbox_embed.") for k in sd),
        two_stage="transformer.enc_output.weight" in sd,
    )
    if "query_embed.weight" in sd:
        fields["num_queries"] = _shape(sd, "query_embed.weight")[0]
    return fields


def fields_from_args(args: argparse.Namespace) -> dict:
    """DDETRConfig fields stated by an official ``args`` Namespace (only those it holds)."""
    a = vars(args)
    if a.get("masks"):
        raise ValueError("args.masks=True: segmentation checkpoints are not supported")
    if a.get("position_embedding", "sine") != "sine":
        raise ValueError(f"args.position_embedding={a['position_embedding']!r}: only 'sine' is supported")
    if "enc_n_points" in a and "dec_n_points" in a and a["enc_n_points"] != a["dec_n_points"]:
        raise ValueError(f"args.enc_n_points={a['enc_n_points']} differs from dec_n_points={a['dec_n_points']}; unsupported")
    names = dict(dilation="dilation", num_feature_levels="n_levels", with_box_refine="with_box_refine",
                 two_stage="two_stage", num_queries="num_queries", hidden_dim="d_model", nheads="n_heads",
                 enc_layers="enc_layers", dec_layers="dec_layers", dim_feedforward="dim_feedforward",
                 dec_n_points="n_points", dropout="dropout")
    return {ours: a[theirs] for theirs, ours in names.items() if a.get(theirs) is not None}


def config_from_args(args: argparse.Namespace) -> dict | None:
    """The full DDETRConfig dict that ``official_args`` embeds (``args.ddetr_config``), if any."""
    raw = getattr(args, "ddetr_config", None)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"args.ddetr_config is not valid JSON ({e})") from None


def official_args(cfg) -> argparse.Namespace:
    """An ``args`` Namespace for ``cfg`` in the official vocabulary (main.py's flags), plus our
    full config as JSON in ``ddetr_config`` (class names, backbone details, image sizes) so a
    round trip through the official format loses nothing. The official code ignores extras."""
    a = dict(_OFFICIAL_DEFAULTS)
    a.update(
        dilation=cfg.dilation, num_feature_levels=cfg.n_levels, enc_layers=cfg.enc_layers,
        dec_layers=cfg.dec_layers, dim_feedforward=cfg.dim_feedforward, hidden_dim=cfg.d_model,
        dropout=cfg.dropout, nheads=cfg.n_heads, num_queries=cfg.num_queries, dec_n_points=cfg.n_points,
        enc_n_points=cfg.n_points, with_box_refine=cfg.with_box_refine, two_stage=cfg.two_stage,
        dataset_file="coco" if cfg.num_classes == 91 else "custom",
        ddetr_config=cfg.to_json(),
    )
    return argparse.Namespace(**a)


def default_class_names(n: int) -> tuple[tuple[str, ...], str]:
    """(names, where they came from) when the file holds none."""
    if n == len(COCO_CLASSES):
        return COCO_CLASSES, "COCO category names (91 logits: label = COCO category id, as officially)"
    return tuple(f"class {i}" for i in range(n)), "none in the file: generic 'class i' (pass class_names=...)"


def resolve_dc5(fields: dict, known: bool, variant: str | None, notes: list[str]) -> None:
    """DC5 and single-scale have the same tensors: take ``variant`` or say we could not tell."""
    if known or fields.get("n_levels", 4) != 1:
        return
    if variant in ("single_scale", "single_scale_dc5"):
        fields["dilation"] = variant == "single_scale_dc5"
        return
    fields["dilation"] = False
    notes.append(
        "single-scale weights fit both single_scale and single_scale_dc5 (DC5 only changes strides); "
        "loaded as single_scale. Pass variant='single_scale_dc5' if this is the DC5 model."
    )


def build_config(sd, args, variant: str | None, notes: list[str]):
    """(format, DDETRConfig, state dict, label source) for a state dict in the official layout.

    A Namespace written by ``official_args`` carries our whole config. Otherwise the tensors
    decide what they can (they are what gets loaded; disagreeing args are noted) and args
    supply what tensors cannot tell: dilation, heads, two-stage query count, dropout.
    """
    full = config_from_args(args) if args is not None else None
    if full is not None:
        return "official", DDETRConfig.from_dict(full), sd, "checkpoint config"
    stated = fields_from_args(args) if args is not None else {}
    fields = infer_fields(sd, stated.get("n_heads"), notes)
    for k, v in stated.items():
        if k in fields and fields[k] != v:
            notes.append(f"args say {k}={v!r} but the tensors say {fields[k]!r}; used the tensors")
        else:
            fields[k] = v
    if fields["two_stage"] and "num_queries" not in fields:
        notes.append("two-stage query count is not stored in the tensors: assumed 300 (official)")
    resolve_dc5(fields, "dilation" in stated, variant, notes)
    fields["class_names"], label_source = default_class_names(fields["num_classes"])
    cfg = DDETRConfig(**fields)
    cfg.variant = variant_name(cfg)
    return "official", cfg, sd, label_source
