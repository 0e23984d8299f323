"""The deformable decoder: query self-attention, deformable cross-attention, iterative refinement."""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from .attention import MSDeformAttn
from .box_ops import refine_boxes
from .encoder import _ffn


class DeformableDecoderLayer(nn.Module):
    """Post-norm layer: self-attention among queries, cross-attention into the encoder memory, FFN."""

    def __init__(self, *, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.1, n_levels: int = 4,
                 n_heads: int = 8, n_points: int = 4):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model=d_model, n_levels=n_levels, n_heads=n_heads, n_points=n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt, query_pos, reference_points, src, spatial_shapes, level_start_index, padding_mask):
        """tgt, query_pos (B, Q, C); reference_points (B, Q, L, 2|4), already scaled by the
        valid ratios; src (B, Lv, C); padding_mask (B, Lv) -> (B, Q, C)."""
        q = k = tgt + query_pos
        # No weights: PyTorch then takes its fused attention path. A capture recomputes the
        # per-head weights from the inputs it records (``capture.self_attention_weights``).
        tgt2 = self.self_attn(query=q, key=k, value=tgt, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.cross_attn(tgt + query_pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        return _ffn(tgt, self.linear1, self.linear2, self.dropout3, self.dropout4, self.norm3)


class DecoderOutput(NamedTuple):
    hidden: list[torch.Tensor]  # per layer (B, Q, C)
    references: list[torch.Tensor]  # per layer, the reference each layer started from (B, Q, 2|4) in [0, 1]


class DeformableDecoder(nn.Module):
    """Stack of decoder layers.

    With iterative box refinement (sec. 4.1 / A.4), ``bbox_embed`` holds one box head per layer
    and is given here explicitly: after layer d the reference becomes
    sigmoid(bbox_embed[d](h) + logit(reference)), detached, as in the paper.
    ``class_embed`` is only held (two-stage) so the encoder-proposal head sits where the
    official checkpoints put it (``transformer.decoder.class_embed.6``).
    """

    def __init__(self, layer: DeformableDecoderLayer, num_layers: int, *,
                 bbox_embed: nn.ModuleList | None = None, class_embed: nn.ModuleList | None = None):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.bbox_embed = bbox_embed
        self.class_embed = class_embed

    def forward(self, tgt, reference_points, src, spatial_shapes, level_start_index, valid_ratios,
                query_pos, padding_mask) -> DecoderOutput:
        """tgt, query_pos (B, Q, C); reference_points (B, Q, 2|4); valid_ratios (B, L, 2)."""
        hidden, references = [], []
        out = tgt
        for lid, layer in enumerate(self.layers):
            references.append(reference_points)
            if reference_points.shape[-1] == 4:
                ref_input = reference_points[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            else:
                ref_input = reference_points[:, :, None] * valid_ratios[:, None]  # (B, Q, L, 2)
            out = layer(out, query_pos, ref_input, src, spatial_shapes, level_start_index, padding_mask)
            hidden.append(out)
            if self.bbox_embed is not None:
                reference_points = refine_boxes(self.bbox_embed[lid](out), reference_points).detach()
        return DecoderOutput(hidden, references)
