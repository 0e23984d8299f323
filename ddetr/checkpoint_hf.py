"""Hugging Face ``transformers`` Deformable DETR checkpoints <-> our (= the official) key layout.

Functions here know formats, not files: they raise ValueError with the problem, and
``ddetr.checkpoint.load`` adds which file it was.

``transformers`` names the same weights differently, and has done so in two ways:

* v4 names, which is also what ``save_pretrained`` of transformers 5.x still writes to disk
  (it reverses its own load-time renaming): ``model.backbone.conv_encoder.model.layer1.0.conv1.weight``,
  ``model.decoder.layers.0.self_attn.out_proj.weight``, ``model.encoder.layers.0.fc1.weight``;
* v5 in-memory names (``model.state_dict()`` of transformers 5.x, see the ``"deformable_detr"``
  entry of ``transformers/conversion_mapping.py``): ``model.backbone.model.*``,
  ``self_attn.o_proj``, ``layers.N.mlp.fc1``.

Both map onto ours by the table below; the decoder self-attention's separate q/k/v projections
become ``nn.MultiheadAttention``'s fused ``in_proj_weight`` (rows q, k, v). The backbone is
either timm's ResNet (same names as torchvision, used by the hub checkpoints) or transformers'
own ``ResNetBackbone`` (``embedder.*`` / ``encoder.stages.*``). ``ours_to_hf`` is the exact
inverse of ``hf_to_ours`` and is what the parity tests use to build the transformers model.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from . import checkpoint_official as official
from .config import DDETRConfig, variant_name

# (ours, transformers v4) key prefixes; "{i}" is a layer index.
_RULES: list[tuple[str, str]] = [
    ("backbone.0.body.", "model.backbone.conv_encoder.model."),
    ("input_proj.", "model.input_proj."),
    ("query_embed.", "model.query_position_embeddings."),
    ("transformer.level_embed", "model.level_embed"),
    ("transformer.reference_points.", "model.reference_points."),
    ("transformer.enc_output.", "model.enc_output."),
    ("transformer.enc_output_norm.", "model.enc_output_norm."),
    ("transformer.pos_trans.", "model.pos_trans."),
    ("transformer.pos_trans_norm.", "model.pos_trans_norm."),
    ("transformer.encoder.layers.{i}.self_attn.", "model.encoder.layers.{i}.self_attn."),
    ("transformer.encoder.layers.{i}.norm1.", "model.encoder.layers.{i}.self_attn_layer_norm."),
    ("transformer.encoder.layers.{i}.linear1.", "model.encoder.layers.{i}.fc1."),
    ("transformer.encoder.layers.{i}.linear2.", "model.encoder.layers.{i}.fc2."),
    ("transformer.encoder.layers.{i}.norm2.", "model.encoder.layers.{i}.final_layer_norm."),
    ("transformer.decoder.layers.{i}.cross_attn.", "model.decoder.layers.{i}.encoder_attn."),
    ("transformer.decoder.layers.{i}.norm1.", "model.decoder.layers.{i}.encoder_attn_layer_norm."),
    ("transformer.decoder.layers.{i}.self_attn.out_proj.", "model.decoder.layers.{i}.self_attn.out_proj."),
    ("transformer.decoder.layers.{i}.norm2.", "model.decoder.layers.{i}.self_attn_layer_norm."),
    ("transformer.decoder.layers.{i}.linear1.", "model.decoder.layers.{i}.fc1."),
    ("transformer.decoder.layers.{i}.linear2.", "model.decoder.layers.{i}.fc2."),
    ("transformer.decoder.layers.{i}.norm3.", "model.decoder.layers.{i}.final_layer_norm."),
    ("transformer.decoder.bbox_embed.", "model.decoder.bbox_embed."),
    ("transformer.decoder.class_embed.", "model.decoder.class_embed."),
    ("class_embed.", "class_embed."),
    ("bbox_embed.", "bbox_embed."),
]
# transformers 5.x in-memory renames, (v4, v5), from its conversion_mapping.py.
_V4_V5: list[tuple[str, str]] = [
    (r"^model\.backbone\.conv_encoder\.model\.", "model.backbone.model."),
    (r"\.self_attn\.out_proj\.", ".self_attn.o_proj."),
    (r"(\.layers\.\d+)\.(fc[12])\.", r"\1.mlp.\2."),
]
_V5_V4: list[tuple[str, str]] = [
    (r"^model\.backbone\.model\.", "model.backbone.conv_encoder.model."),
    (r"\.self_attn\.o_proj\.", ".self_attn.out_proj."),
    (r"(\.layers\.\d+)\.mlp\.(fc[12])\.", r"\1.\2."),
]
_QKV = re.compile(r"^model\.decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")
_IN_PROJ = re.compile(r"^transformer\.decoder\.layers\.(\d+)\.self_attn\.in_proj_(weight|bias)$")
_HF_BACKBONE = "model.backbone.conv_encoder.model."
_OUR_BACKBONE = "backbone.0.body."


def _compile(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(\d+)"))


_OURS_TO_HF = [(_compile(o), h) for o, h in _RULES]
_HF_TO_OURS = [(_compile(h), o) for o, h in _RULES]


def _rename(key: str, rules) -> str | None:
    for pattern, template in rules:
        m = pattern.match(key)
        if m:
            new = template.replace("{i}", m.group(1)) if m.groups() else template
            return new + key[m.end():]
    return None


# --- transformers' own ResNetBackbone (use_timm_backbone=False) <-> torchvision layout ---
def _hf_resnet_to_tv(suffix: str) -> str | None:
    m = re.match(r"^embedder\.embedder\.(convolution|normalization)\.(.+)$", suffix)
    if m:
        return ("conv1." if m.group(1) == "convolution" else "bn1.") + m.group(2)
    m = re.match(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.(convolution|normalization)\.(.+)$", suffix)
    if m:
        s, b, kind, rest = m.groups()
        return f"layer{int(s) + 1}.{b}.downsample.{0 if kind == 'convolution' else 1}.{rest}"
    m = re.match(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.(convolution|normalization)\.(.+)$", suffix)
    if m:
        s, b, k, kind, rest = m.groups()
        return f"layer{int(s) + 1}.{b}.{'conv' if kind == 'convolution' else 'bn'}{int(k) + 1}.{rest}"
    return None


def _tv_to_hf_resnet(suffix: str) -> str:
    m = re.match(r"^(conv1|bn1)\.(.+)$", suffix)
    if m:
        return f"embedder.embedder.{'convolution' if m.group(1) == 'conv1' else 'normalization'}.{m.group(2)}"
    m = re.match(r"^layer(\d)\.(\d+)\.downsample\.([01])\.(.+)$", suffix)
    if m:
        s, b, i, rest = m.groups()
        return f"encoder.stages.{int(s) - 1}.layers.{b}.shortcut.{'convolution' if i == '0' else 'normalization'}.{rest}"
    m = re.match(r"^layer(\d)\.(\d+)\.(conv|bn)(\d)\.(.+)$", suffix)
    if m:
        s, b, kind, k, rest = m.groups()
        name = "convolution" if kind == "conv" else "normalization"
        return f"encoder.stages.{int(s) - 1}.layers.{b}.layer.{int(k) - 1}.{name}.{rest}"
    raise ValueError(f"backbone key {suffix!r} has no transformers ResNet equivalent")


def is_hf_state_dict(keys) -> bool:
    """True for a ``DeformableDetrForObjectDetection`` state dict (v4 or v5 names)."""
    return any(k.startswith(("model.encoder.layers.", "model.decoder.layers.", "model.backbone.")) for k in keys)


def is_hf_base_model(keys) -> bool:
    """A ``DeformableDetrModel`` (no detection heads): keys lack the ``model.`` prefix."""
    return any(k.startswith("backbone.conv_encoder.") for k in keys) and any(k.startswith("encoder.layers.") for k in keys)


def hf_to_ours(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Rename a transformers state dict (v4 or v5 names) to our keys.

    Returns (state dict in our layout, info) with info["names"] in {"v4", "v5"},
    info["backbone"] in {"timm", "transformers ResNet"}; keys without an equivalent keep their
    name (so strict loading reports them as unexpected).
    """
    names = "v5" if any(re.search(p, k) for k in sd for p, _ in _V5_V4) else "v4"
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    hf_resnet = False
    for key, value in sd.items():
        for pattern, repl in _V5_V4:
            key = re.sub(pattern, repl, key)
        m = _QKV.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        if key.startswith(_HF_BACKBONE):
            suffix = key[len(_HF_BACKBONE):]
            tv = _hf_resnet_to_tv(suffix)
            hf_resnet |= tv is not None
            out[_OUR_BACKBONE + (tv or suffix)] = value
            continue
        out[_rename(key, _HF_TO_OURS) or key] = value
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(
                f"decoder layer {layer} self-attention has only the {sorted(parts)} projections "
                f"({kind}); q, k and v are all needed"
            )
        # nn.MultiheadAttention's in_proj rows are [q; k; v].
        out[f"transformer.decoder.layers.{layer}.self_attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out, {"names": names, "backbone": "transformers ResNet" if hf_resnet else "timm"}


def ours_to_hf(sd: dict[str, torch.Tensor], names: str = "v5", backbone: str = "timm") -> dict[str, torch.Tensor]:
    """Inverse of ``hf_to_ours``: our state dict -> transformers names ("v4" as saved on disk,
    "v5" as in a transformers 5.x model's ``state_dict()``); backbone "timm" or "transformers ResNet"."""
    if names not in ("v4", "v5"):
        raise ValueError(f"names must be 'v4' or 'v5', got {names!r}")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue  # transformers freezes every batch norm; frozen ones keep no counter
        m = _IN_PROJ.match(key)
        if m:
            layer, kind = m.groups()
            for part, chunk in zip("qkv", value.chunk(3)):
                out[f"model.decoder.layers.{layer}.self_attn.{part}_proj.{kind}"] = chunk.clone()
            continue
        if key.startswith(_OUR_BACKBONE) and backbone != "timm":
            new = _HF_BACKBONE + _tv_to_hf_resnet(key[len(_OUR_BACKBONE):])
        else:
            new = _rename(key, _OURS_TO_HF)
        if new is None:
            raise ValueError(f"key {key!r} has no transformers equivalent")
        out[new] = value
    if names == "v5":
        renamed = {}
        for key, value in out.items():
            for pattern, repl in _V4_V5:
                key = re.sub(pattern, repl, key)
            renamed[key] = value
        out = renamed
    return out


def fill_hf_tied_heads(sd: dict[str, torch.Tensor], num_pred: int, notes: list[str]) -> None:
    """transformers ties ``class_embed.N`` / ``bbox_embed.N`` (N > 0) to head 0 when the config
    has ``tie_word_embeddings`` (its default) and then saves only head 0; its own loader
    re-ties them. Do the same, in our key space, for heads the file does not hold."""
    for head in ("class_embed", "bbox_embed"):
        zero = {k: v for k, v in sd.items() if k.startswith(f"{head}.0.")}
        filled = []
        for n in range(1, num_pred):
            if any(k.startswith((f"{head}.{n}.", f"transformer.decoder.{head}.{n}.")) for k in sd):
                continue
            for k, v in zero.items():
                sd[f"{head}.{n}." + k[len(f"{head}.0."):]] = v
            if zero:
                filled.append(n)
        if filled:
            notes.append(
                f"{head}.{filled[0]}-{filled[-1]} are not in the file: filled from {head}.0, as transformers "
                "does (tie_word_embeddings=true ties every layer's head to head 0)"
            )


_SUPPORTED_BACKBONES = ("resnet50",)


def config_fields_from_hf(c: dict, notes: list[str]) -> dict:
    """DDETRConfig fields from a transformers ``config.json`` dict (v4 or v5)."""
    if c.get("model_type") != "deformable_detr":
        raise ValueError(
            f"config.json has model_type={c.get('model_type')!r}; only 'deformable_detr' "
            "(DeformableDetrForObjectDetection) checkpoints are supported"
        )
    problems = []
    for a, b in (("encoder_ffn_dim", "decoder_ffn_dim"), ("encoder_attention_heads", "decoder_attention_heads"),
                 ("encoder_n_points", "decoder_n_points")):
        if c.get(a, 0) != c.get(b, 0):
            problems.append(f"{a}={c.get(a)} differs from {b}={c.get(b)}")
    if c.get("position_embedding_type", "sine") != "sine":
        problems.append(f"position_embedding_type={c['position_embedding_type']!r} (only 'sine')")
    if c.get("activation_function", "relu") != "relu":
        problems.append(f"activation_function={c['activation_function']!r} (only 'relu')")
    bc = c.get("backbone_config") or {}
    if bc.get("model_type") == "resnet":
        depths, layer_type = tuple(bc.get("depths", (3, 4, 6, 3))), bc.get("layer_type", "bottleneck")
        width = bc.get("embedding_size", 64)
        if bc.get("downsample_in_bottleneck") or bc.get("downsample_in_first_stage"):
            problems.append("transformers ResNet with downsample_in_bottleneck/first_stage (torchvision layout needed)")
        backbone = dict(backbone="resnet50" if (depths, layer_type, width) == ((3, 4, 6, 3), "bottleneck", 64) else "resnet_small",
                        backbone_blocks=depths, backbone_block=layer_type, backbone_width=width)
        if c.get("dilation"):
            problems.append("dilation with a transformers ResNet backbone (transformers supports it only with timm)")
    else:
        name = bc.get("backbone") or c.get("backbone") or "resnet50"
        if bc.get("model_type", "timm_backbone") != "timm_backbone" or name not in _SUPPORTED_BACKBONES:
            problems.append(f"backbone {bc.get('model_type', 'timm')}:{name} (supported: timm resnet50, transformers ResNet)")
        backbone = dict(backbone="resnet50")
    if problems:
        raise ValueError("unsupported transformers Deformable DETR config: " + "; ".join(problems))
    two_stage = bool(c.get("two_stage", False))
    id2label = c.get("id2label") or {}
    num_classes = c.get("num_labels") or (max(int(i) for i in id2label) + 1 if id2label else None)
    fields = dict(
        backbone_norm="frozen_bn",
        dilation=bool(c.get("dilation") or False),
        d_model=c.get("d_model", 256),
        n_heads=c.get("encoder_attention_heads", 8),
        n_levels=c.get("num_feature_levels", 4),
        n_points=c.get("encoder_n_points", 4),
        enc_layers=c.get("encoder_layers", 6),
        dec_layers=c.get("decoder_layers", 6),
        dim_feedforward=c.get("encoder_ffn_dim", 1024),
        dropout=float(c.get("dropout", 0.1)),
        num_queries=c.get("two_stage_num_proposals", 300) if two_stage else c.get("num_queries", 300),
        with_box_refine=bool(c.get("with_box_refine", False)),
        two_stage=two_stage,
        **backbone,
    )
    if num_classes:
        fields["num_classes"] = int(num_classes)
    return fields


def class_names_from_hf(c: dict, num_classes: int) -> tuple[tuple[str, ...], str]:
    """Names from ``id2label`` (label index -> name); gaps become 'N/A'. Returns (names, source)."""
    id2label = {int(k): str(v) for k, v in (c.get("id2label") or {}).items()}
    if not id2label or all(re.fullmatch(r"LABEL_\d+", v) for v in id2label.values()):
        return tuple(f"class {i}" for i in range(num_classes)), "none in the file (config.json id2label has only generic LABEL_i): generic 'class i'"
    names = tuple(id2label.get(i, "N/A") for i in range(num_classes))
    extra = sorted(i for i in id2label if not 0 <= i < num_classes)
    source = "config.json id2label"
    if extra:
        source += f" (ignored ids {extra[:5]} outside the {num_classes} logits)"
    return names, source


def preprocess_fields_from_hf(p: dict) -> dict:
    """min/max size and normalization from a ``preprocessor_config.json`` dict, when present."""
    out = {}
    size = p.get("size") or {}
    if isinstance(size, dict) and "shortest_edge" in size and "longest_edge" in size:
        out.update(min_size=int(size["shortest_edge"]), max_size=int(size["longest_edge"]))
    if p.get("image_mean") and p.get("image_std"):
        out.update(pixel_mean=tuple(p["image_mean"]), pixel_std=tuple(p["image_std"]))
    return out


def hf_config_dict(cfg) -> dict:
    """A transformers ``config.json`` dict describing ``cfg`` (for ``DeformableDetrConfig(**d)``)."""
    if cfg.n_levels > 1 and cfg.num_backbone_levels != 3:
        raise ValueError("transformers takes layer2-4 for every multi-scale model; n_levels must be 1 or >= 3")
    d = dict(
        model_type="deformable_detr",
        architectures=["DeformableDetrForObjectDetection"],
        d_model=cfg.d_model,
        encoder_layers=cfg.enc_layers,
        decoder_layers=cfg.dec_layers,
        encoder_ffn_dim=cfg.dim_feedforward,
        decoder_ffn_dim=cfg.dim_feedforward,
        encoder_attention_heads=cfg.n_heads,
        decoder_attention_heads=cfg.n_heads,
        encoder_n_points=cfg.n_points,
        decoder_n_points=cfg.n_points,
        num_feature_levels=cfg.n_levels,
        num_queries=cfg.num_queries,
        two_stage_num_proposals=cfg.num_queries,
        with_box_refine=cfg.with_box_refine,
        two_stage=cfg.two_stage,
        dilation=cfg.dilation,
        # Official: one dropout rate for residual, attention and FFN activations alike.
        dropout=cfg.dropout,
        attention_dropout=cfg.dropout,
        activation_dropout=cfg.dropout,
        # Without refinement every layer's head is one module (official); with it, they differ.
        tie_word_embeddings=not cfg.with_box_refine,
        id2label={str(i): n for i, n in enumerate(cfg.class_names)},
        ddetr_variant=cfg.variant,  # our name for it; transformers keeps unknown keys as attributes
        label2id={n: i for i, n in enumerate(cfg.class_names)},
    )
    if cfg.backbone == "resnet50":
        d.update(use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=False)
    else:
        if cfg.dilation:
            raise ValueError("transformers supports dilation only with a timm backbone")
        stages = ["stage2", "stage3", "stage4"] if cfg.n_levels > 1 else ["stage4"]
        w = cfg.backbone_width
        mult = 4 if cfg.backbone_block == "bottleneck" else 1
        d.update(use_timm_backbone=False, backbone_config=dict(
            model_type="resnet", embedding_size=w, depths=list(cfg.backbone_blocks),
            hidden_sizes=[w * 2**i * mult for i in range(4)], layer_type=cfg.backbone_block,
            out_features=stages, downsample_in_bottleneck=False, downsample_in_first_stage=False,
        ))
    return d


def build_config(sd, hf_cfg: dict | None, hf_pre: dict, variant: str | None, notes: list[str]):
    """(format, DDETRConfig, state dict in our keys, label source) for transformers weights."""
    sd, info = hf_to_ours(sd)
    notes.append(f"transformers {info['names']} key names, {info['backbone']} backbone")
    if hf_cfg is None:
        notes.append("no config.json next to the weights: architecture read off the tensors")
        fields = official.infer_fields(sd, None, notes)
        official.resolve_dc5(fields, False, variant, notes)
        names, label_source = official.default_class_names(fields["num_classes"])
    else:
        fields = config_fields_from_hf(hf_cfg, notes)
        fields.update(preprocess_fields_from_hf(hf_pre))
        head = sd.get("class_embed.0.weight")
        if head is not None and fields.get("num_classes") not in (None, head.shape[0]):
            notes.append(f"config.json says {fields['num_classes']} labels, the class head has {head.shape[0]}; used the head")
        if head is not None:
            fields["num_classes"] = head.shape[0]
        names, label_source = class_names_from_hf(hf_cfg, fields.get("num_classes", 91))
    cfg = DDETRConfig(**fields, class_names=names)
    stated = (hf_cfg or {}).get("ddetr_variant")  # written by our save(format="hf")
    cfg.variant = stated if isinstance(stated, str) and stated else variant_name(cfg)
    if cfg.with_box_refine and (hf_cfg or {}).get("tie_word_embeddings", True):
        fill_hf_tied_heads(sd, cfg.dec_layers + (1 if cfg.two_stage else 0), notes)
    return "transformers", cfg, sd, label_source


def from_hub(repo_id: str) -> Path:
    """Local folder of a hub snapshot (cache first, then network); ValueError naming the id."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        raise ValueError(f"{repo_id!r} is not a local path, and huggingface_hub is not installed to fetch it") from None
    from huggingface_hub import constants

    patterns = ["config.json", "preprocessor_config.json", "model.safetensors"]
    offline = constants.HF_HUB_OFFLINE
    last = None
    for local_only in (True,) if offline else (True, False):
        try:
            folder = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=local_only))
            if not (folder / "model.safetensors").is_file():  # older repos hold only a .bin
                folder = Path(snapshot_download(repo_id, allow_patterns=patterns[:2] + ["pytorch_model.bin"],
                                                local_files_only=local_only))
            return folder
        except Exception as e:  # offline, unknown repo, gated ... (tests cover the cache, not the network)
            last = e
    if offline:
        raise ValueError(
            f"{repo_id!r} is not a local path, and not in the Hugging Face cache ({constants.HF_HUB_CACHE}); "
            f"HF_HUB_OFFLINE=1 forbids downloading it. Fetch it where there is network (`hf download {repo_id}` "
            "into this cache, or `--local-dir DIR` and pass the folder), or unset HF_HUB_OFFLINE.")
    raise ValueError(
        f"{repo_id!r} is not a local path, and fetching it from the Hugging Face Hub failed "
        f"({type(last).__name__}: {str(last).splitlines()[0] if str(last) else ''}). Without network, download it "
        f"elsewhere (`hf download {repo_id} --local-dir DIR`) and pass the folder, or check the path."
    )
