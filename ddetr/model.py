"""Deformable DETR: backbone -> input projections -> deformable transformer -> per-layer heads.

Module names reproduce the official checkpoint keys, so official ``.pth`` files load without
renaming (``backbone.0.body.*``, ``input_proj.i.{0,1}``, ``transformer.*``, ``class_embed.i``,
``bbox_embed.i.layers.j``, ``query_embed``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from .backbone import Backbone
from .box_ops import inverse_sigmoid
from .config import DDETRConfig
from .heads import build_heads
from .position_encoding import PositionEmbeddingSine
from .postprocess import Detections, postprocess
from .precision import check as check_precision, dense, use as use_precision
from .preprocess import Batch, prepare
from .transformer import DeformableTransformer


class LayerOutput(NamedTuple):
    logits: torch.Tensor  # (B, Q, K)
    boxes: torch.Tensor  # (B, Q, 4) cxcywh in [0, 1] of the unpadded image


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, Q, K), last decoder layer
    boxes: torch.Tensor  # (B, Q, 4)
    aux: list[LayerOutput] = field(default_factory=list)  # decoder layers 0 .. N-2
    enc: LayerOutput | None = None  # two-stage proposals over all Lv encoder tokens
    proposal_index: torch.Tensor | None = None  # (B, Q) tokens that became queries
    references: list[torch.Tensor] = field(default_factory=list)  # per layer (B, Q, 2|4), the layer's input reference
    spatial_shapes: torch.Tensor | None = None  # (L, 2)
    level_start_index: torch.Tensor | None = None  # (L,)
    valid_ratios: torch.Tensor | None = None  # (B, L, 2)

    @property
    def layers(self) -> list[LayerOutput]:
        """Every decoder layer's prediction, last included: the refinement trajectory."""
        return [*self.aux, LayerOutput(self.logits, self.boxes)]


class DeformableDETR(nn.Module):
    def __init__(self, cfg: DDETRConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        # ModuleList([.]) only to reproduce the official key prefix ``backbone.0``.
        self.backbone = nn.ModuleList([Backbone(cfg)])
        self.position_embedding = PositionEmbeddingSine(d // 2)
        num_pred = cfg.dec_layers + 1 if cfg.two_stage else cfg.dec_layers
        self.class_embed, self.bbox_embed = build_heads(d, cfg.num_classes, num_pred, cfg.with_box_refine, cfg.two_stage)
        self.transformer = DeformableTransformer(
            d, cfg.n_heads, cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward, cfg.dropout,
            cfg.n_levels, cfg.n_points, cfg.two_stage, cfg.num_queries,
            bbox_embed=self.bbox_embed if cfg.with_box_refine else None,
            class_embed=self.class_embed if cfg.two_stage else None,
        )
        if not cfg.two_stage:
            self.query_embed = nn.Embedding(cfg.num_queries, d * 2)
        channels = self.backbone[0].num_channels
        proj = [nn.Sequential(nn.Conv2d(c, d, 1), nn.GroupNorm(32, d)) for c in channels]
        in_ch = channels[-1]
        for _ in range(cfg.n_levels - len(channels)):  # extra levels: 3x3 stride-2 convs on C5
            proj.append(nn.Sequential(nn.Conv2d(in_ch, d, 3, stride=2, padding=1), nn.GroupNorm(32, d)))
            in_ch = d
        self.input_proj = nn.ModuleList(proj)
        for p in self.input_proj:
            nn.init.xavier_uniform_(p[0].weight, gain=1)
            nn.init.constant_(p[0].bias, 0)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.cfg.class_names

    @property
    def variant(self) -> str:
        return self.cfg.variant

    def forward(self, images: torch.Tensor, mask: torch.Tensor, *, batch: Batch | None = None) -> ModelOutput:
        """images (B, 3, H, W) normalized; mask (B, H, W) bool, True at padding.

        ``batch`` is not used by the computation; ``predict`` passes it so that a capture's
        forward hook can record the image metadata (sizes, scales, originals).
        """
        with dense(images):
            feats = self.backbone[0](images, mask)
        srcs, masks = [], []
        for lvl, (f, m) in enumerate(feats):
            srcs.append(self._project(lvl, f))
            masks.append(m)
        for lvl in range(len(feats), self.cfg.n_levels):
            src = self._project(lvl, feats[-1][0] if lvl == len(feats) else srcs[-1])
            m = nn.functional.interpolate(mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0]
            srcs.append(src)
            masks.append(m)
        pos = [self.position_embedding(m).to(s.dtype) for s, m in zip(srcs, masks)]
        query_embed = None if self.cfg.two_stage else self.query_embed.weight
        t = self.transformer(srcs, masks, pos, query_embed)

        layers = []
        for lvl, (hidden, reference) in enumerate(zip(t.decoder.hidden, t.decoder.references)):
            logits = self.class_embed[lvl](hidden)
            delta = self.bbox_embed[lvl](hidden)
            ref = inverse_sigmoid(reference)
            if ref.shape[-1] == 4:
                boxes = (delta + ref).sigmoid()
            else:
                boxes = torch.cat([delta[..., :2] + ref, delta[..., 2:]], -1).sigmoid()
            layers.append(LayerOutput(logits, boxes))
        enc = None
        if t.enc_logits is not None:
            enc = LayerOutput(t.enc_logits, t.enc_boxes_unact.sigmoid())
        return ModelOutput(
            layers[-1].logits, layers[-1].boxes, layers[:-1], enc, t.proposal_index,
            t.decoder.references, t.spatial_shapes, t.level_start_index, t.valid_ratios,
        )

    def _project(self, lvl: int, feature: torch.Tensor) -> torch.Tensor:
        """Input projection of one level, (B, C_l, H, W) -> (B, d_model, H, W) float32: the
        convolution is a dense region (bfloat16 under ``precision.use("bf16")``), the
        GroupNorm and everything after it run in float32 (the transformer's residual stream)."""
        conv, norm = self.input_proj[lvl]
        with dense(feature):
            out = conv(feature)
        return norm(out.float())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def prepare(self, images) -> Batch:
        """Convert, resize, normalize and pad ``images`` (one or a list) as the model expects."""
        c = self.cfg
        return prepare(images, c.min_size, c.max_size, c.pixel_mean, c.pixel_std, device=self.device)

    @torch.inference_mode()
    def predict(self, images, score_threshold: float = 0.0, top_k: int | None = None,
                precision: str = "fp32") -> list[Detections]:
        """Detect objects in one image or a list of images of any sizes.

        Accepts PIL images (any mode), numpy arrays (H, W[, C]) and tensors ([C,] H, W) of
        uint8, uint16 or float in [0, 1]. Returns one ``Detections`` per image: boxes xyxy in
        original-image pixels, scores, labels, label names and the index of the query that
        produced each detection; top-k over queries x classes as officially, then thresholded.

        precision: "fp32" (default) or "bf16": the backbone, input projections, value/output
        projections and FFNs in bfloat16, everything that places or scores a box in float32
        (``ddetr.precision``; R50 at 800x1333 on a CPU with AVX-512 BF16: 1.6-2x faster).
        """
        check_precision(precision)
        was_training = self.training
        self.eval()
        try:
            batch = self.prepare(images)
            with use_precision(precision):
                out = self(batch.images, batch.mask, batch=batch)
        finally:
            self.train(was_training)
        return postprocess(out.logits, out.boxes, batch.orig_sizes, self.cfg.class_names,
                           top_k or self.cfg.top_k, score_threshold)


def build_model(cfg: DDETRConfig) -> DeformableDETR:
    """A randomly initialized model (official initialization) for ``cfg``."""
    return DeformableDETR(cfg)
