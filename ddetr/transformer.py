"""The deformable transformer: level flattening, encoder, (two-stage) query selection, decoder."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import MSDeformAttn
from .decoder import DecoderOutput, DeformableDecoder, DeformableDecoderLayer
from .encoder import DeformableEncoder, DeformableEncoderLayer
from .position_encoding import proposal_position_embedding
from .precision import float32
from .two_stage import encoder_proposals


@dataclass
class TransformerOutput:
    decoder: DecoderOutput
    memory: torch.Tensor  # (B, Lv, C)
    spatial_shapes: torch.Tensor  # (L, 2)
    level_start_index: torch.Tensor  # (L,)
    valid_ratios: torch.Tensor  # (B, L, 2), (w, h)
    enc_logits: torch.Tensor | None = None  # (B, Lv, K) two-stage proposal scores
    enc_boxes_unact: torch.Tensor | None = None  # (B, Lv, 4) logit-space proposal boxes
    proposal_index: torch.Tensor | None = None  # (B, Q) encoder tokens that became queries


def valid_ratio(mask: torch.Tensor) -> torch.Tensor:
    """Fraction of a padded map (B, H, W) that holds image, as (w, h): (B, 2)."""
    _, H, W = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1)
    valid_w = (~mask[:, 0, :]).sum(1)
    return torch.stack([valid_w.float() / W, valid_h.float() / H], -1)


class DeformableTransformer(nn.Module):
    def __init__(self, d_model=256, n_heads=8, enc_layers=6, dec_layers=6, d_ffn=1024, dropout=0.1,
                 n_levels=4, n_points=4, two_stage=False, num_queries=300,
                 bbox_embed: nn.ModuleList | None = None, class_embed: nn.ModuleList | None = None):
        super().__init__()
        self.d_model, self.two_stage, self.num_queries = d_model, two_stage, num_queries
        enc_layer = DeformableEncoderLayer(d_model, d_ffn, dropout, n_levels, n_heads, n_points)
        self.encoder = DeformableEncoder(enc_layer, enc_layers)
        dec_layer = DeformableDecoderLayer(d_model, d_ffn, dropout, n_levels, n_heads, n_points)
        self.decoder = DeformableDecoder(dec_layer, dec_layers, bbox_embed, class_embed)
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            # The heads are owned (and initialized) by the detector; only this module's own weights here.
            if p.dim() > 1 and not name.startswith(("decoder.bbox_embed", "decoder.class_embed")):
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embed)

    def forward(self, srcs, masks, pos_embeds, query_embed: torch.Tensor | None) -> TransformerOutput:
        """srcs, pos_embeds: per level (B, C, H_l, W_l); masks per level (B, H_l, W_l);
        query_embed (Q, 2C) learned queries (None when two-stage)."""
        src_flat, mask_flat, pos_flat, shapes = [], [], [], []
        for lvl, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            shapes.append(src.shape[-2:])
            src_flat.append(src.flatten(2).transpose(1, 2))  # (B, HW, C)
            mask_flat.append(mask.flatten(1))  # (B, HW)
            pos_flat.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        src_flat, mask_flat, pos_flat = torch.cat(src_flat, 1), torch.cat(mask_flat, 1), torch.cat(pos_flat, 1)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src_flat.device)  # (L, 2)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([valid_ratio(m) for m in masks], 1)  # (B, L, 2)

        memory = self.encoder(src_flat, spatial_shapes, level_start_index, valid_ratios, pos_flat, mask_flat)
        B, _, C = memory.shape
        enc_logits = enc_boxes = topk = None
        if self.two_stage:
            out_memory, proposals = encoder_proposals(memory, mask_flat, spatial_shapes)
            out_memory = self.enc_output_norm(self.enc_output(out_memory))
            head = self.decoder.num_layers  # the extra (7th) class / box head scores proposals
            enc_logits = self.decoder.class_embed[head](out_memory)  # (B, Lv, K)
            enc_boxes = self.decoder.bbox_embed[head](out_memory) + proposals  # (B, Lv, 4)
            k = min(self.num_queries, enc_logits.shape[1])
            topk = torch.topk(enc_logits[..., 0], k, dim=1)[1]  # (B, Q)
            coords = torch.gather(enc_boxes, 1, topk.unsqueeze(-1).expand(-1, -1, 4)).detach()
            reference_points = coords.sigmoid()
            pos_trans = self.pos_trans_norm(self.pos_trans(proposal_position_embedding(coords, C // 2)))
            query_pos, tgt = torch.split(pos_trans, C, dim=2)
        else:
            query_pos, tgt = torch.split(query_embed, C, dim=1)
            query_pos = query_pos.unsqueeze(0).expand(B, -1, -1)
            tgt = tgt.unsqueeze(0).expand(B, -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()  # (B, Q, 2)
        with float32():  # the decoder places the boxes: float32 in every precision (ddetr.precision)
            dec = self.decoder(tgt, reference_points, memory, spatial_shapes, level_start_index, valid_ratios,
                               query_pos, mask_flat)
        return TransformerOutput(dec, memory, spatial_shapes, level_start_index, valid_ratios,
                                 enc_logits, enc_boxes, topk)
