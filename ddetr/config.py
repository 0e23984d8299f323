"""One config dataclass at the edge of the model, and presets named after the official configs.

The official presets are the five rows of Table 1 / configs/*.sh of
fundamentalvision/Deformable-DETR; ``small`` is the model this project trains and ships.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .coco_names import COCO_CLASSES


def label_name(class_names, label: int) -> str:
    """The name of class id ``label``; ids beyond the names (a head with more logits than
    names) are called 'class <id>'. Every label shown to a user goes through here."""
    label = int(label)
    if 0 <= label < len(class_names):
        return class_names[label]
    return f"class {label}"


@dataclass
class DDETRConfig:
    """Everything needed to build a Deformable DETR; defaults are the official R50 model."""

    # --- backbone ---
    backbone: str = "resnet50"  # "resnet50" (torchvision layout) or "resnet_small"
    # Official: ImageNet-pretrained ResNet with frozen BN. From scratch (small preset) the
    # statistics must be learned, so plain BatchNorm is offered too.
    backbone_norm: str = "frozen_bn"  # "frozen_bn" | "bn"
    backbone_width: int = 64  # stem width; stages use width * (1, 2, 4, 8) (x4 for bottleneck)
    backbone_blocks: tuple[int, ...] = (3, 4, 6, 3)  # ResNet-50
    backbone_block: str = "bottleneck"  # "bottleneck" | "basic"
    dilation: bool = False  # DC5: dilate the last stage instead of striding (stride 16)
    # Official trains layer2-4 only: the stem and layer1 stay at ImageNet values.
    train_stem: bool = False
    # --- transformer ---
    d_model: int = 256
    n_heads: int = 8
    n_levels: int = 4  # 1 for single-scale (stride 32, or 16 with DC5)
    n_points: int = 4
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 1024
    dropout: float = 0.1
    num_queries: int = 300
    with_box_refine: bool = False
    two_stage: bool = False
    # --- heads ---
    num_classes: int = 91  # COCO category ids run 1..90; 91 logits as in the official code
    class_names: tuple[str, ...] = field(default_factory=lambda: tuple(COCO_CLASSES))
    # --- pre/post-processing: the official eval transform (shorter side 800, longer <= 1333) ---
    min_size: int = 800
    max_size: int = 1333
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    top_k: int = 100  # detections kept per image, over queries x classes (official)
    variant: str = "multi_scale"  # informational name of the preset this came from

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        self.backbone_blocks = tuple(self.backbone_blocks)
        self.pixel_mean = tuple(self.pixel_mean)
        self.pixel_std = tuple(self.pixel_std)
        problems = []
        if self.d_model % self.n_heads:
            problems.append(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.d_model % 32 and self.d_model >= 32:
            problems.append(f"d_model={self.d_model} must be a multiple of 32 (GroupNorm(32))")
        if self.n_levels < 1 or self.n_levels > 8:
            problems.append(f"n_levels={self.n_levels} must be in 1..8")
        if self.backbone not in ("resnet50", "resnet_small"):
            problems.append(f"backbone={self.backbone!r} must be 'resnet50' or 'resnet_small'")
        if self.backbone_norm not in ("frozen_bn", "bn"):
            problems.append(f"backbone_norm={self.backbone_norm!r} must be 'frozen_bn' or 'bn'")
        if self.two_stage and self.n_levels < 1:
            problems.append("two_stage needs at least one level")
        if self.num_classes < 1:
            problems.append(f"num_classes={self.num_classes} must be >= 1")
        if self.min_size < 1 or self.max_size < self.min_size:
            problems.append(f"min_size={self.min_size}, max_size={self.max_size}: need 1 <= min <= max")
        if problems:
            raise ValueError("invalid DDETRConfig: " + "; ".join(problems))

    @property
    def num_backbone_levels(self) -> int:
        """Feature maps taken from the backbone: layer2-4 when multi-scale, else layer4 only."""
        return min(3, self.n_levels) if self.n_levels > 1 else 1

    def label_name(self, label: int) -> str:
        return label_name(self.class_names, label)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "DDETRConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}; known fields: {sorted(known)}")
        return cls(**d)


_PRESETS: dict[str, dict] = {
    # configs/r50_deformable_detr_single_scale.sh: --num_feature_levels 1
    "single_scale": dict(n_levels=1),
    # configs/r50_deformable_detr_single_scale_dc5.sh: --num_feature_levels 1 --dilation
    "single_scale_dc5": dict(n_levels=1, dilation=True),
    # configs/r50_deformable_detr.sh
    "multi_scale": dict(),
    # configs/r50_deformable_detr_plus_iterative_bbox_refinement.sh
    "multi_scale_box_refine": dict(with_box_refine=True),
    # configs/r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage.sh
    "multi_scale_two_stage": dict(with_box_refine=True, two_stage=True),
    # The shipped model, trained from scratch on the synthetic shapes (see ddetr/data).
    # It keeps the paper's attention geometry (8 heads, 4 levels, 4 points, refinement)
    # so what a user learns from it transfers; width, depth, backbone and image size shrink.
    # Two-stage proposals give the decoder a good start, which matters from scratch.
    "small": dict(
        backbone="resnet_small",
        backbone_norm="bn",
        backbone_width=32,
        backbone_blocks=(2, 2, 2, 1),
        backbone_block="basic",
        train_stem=True,
        d_model=128,
        enc_layers=3,
        dec_layers=3,
        dim_feedforward=512,
        dropout=0.0,
        num_queries=100,
        with_box_refine=True,
        two_stage=True,
        # 256-pixel inputs: the synthetic scenes are drawn at 256-384 pixels, and the model
        # is trained on a 2-core CPU, where every pixel costs.
        min_size=256,
        max_size=416,
    ),
}

PRESET_NAMES = tuple(_PRESETS)


def preset(name: str, **overrides) -> DDETRConfig:
    """Config of a named preset, with field overrides (e.g. ``num_classes=7``)."""
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    fields = dict(_PRESETS[name], variant=name)
    fields.update(overrides)
    if "num_classes" in overrides and "class_names" not in overrides:
        n = overrides["num_classes"]
        fields["class_names"] = tuple(
            COCO_CLASSES[i] if n == len(COCO_CLASSES) else f"class {i}" for i in range(n)
        )
    return DDETRConfig(**fields)


def variant_name(cfg: DDETRConfig) -> str:
    """Official variant name implied by the architecture flags."""
    if cfg.two_stage:
        return "multi_scale_two_stage"
    if cfg.with_box_refine:
        return "multi_scale_box_refine"
    if cfg.n_levels == 1:
        return "single_scale_dc5" if cfg.dilation else "single_scale"
    return "multi_scale"
