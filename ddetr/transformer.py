"""The deformable transformer: level flattening, encoder, (two-stage) query selection, decoder."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import MSDeformAttn
from .decoder import DecoderOutput, DeformableDecoder, DeformableDecoderLayer
from .encoder import DeformableEncoder, DeformableEncoderLayer
from .padding import valid_ratio
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
    proposal_valid: torch.Tensor | None = None  # (B, Lv) bool, tokens whose base proposal is valid


class DeformableTransformer(nn.Module):
    def __init__(self, *, d_model: int = 256, n_heads: int = 8, enc_layers: int = 6, dec_layers: int = 6,
                 d_ffn: int = 1024, dropout: float = 0.1, n_levels: int = 4, n_points: int = 4,
                 two_stage: bool = False, num_queries: int = 300,
                 bbox_embed: nn.ModuleList | None = None, class_embed: nn.ModuleList | None = None):
        super().__init__()
        self.d_model, self.two_stage, self.num_queries = d_model, two_stage, num_queries
        dims = dict(d_model=d_model, d_ffn=d_ffn, dropout=dropout, n_levels=n_levels, n_heads=n_heads, n_points=n_points)
        self.encoder = DeformableEncoder(DeformableEncoderLayer(**dims), enc_layers)
        self.decoder = DeformableDecoder(DeformableDecoderLayer(**dims), dec_layers,
                                         bbox_embed=bbox_embed, class_embed=class_embed)
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

    def query_count(self, n_tokens: int) -> int:
        """Decoder queries for ``n_tokens`` encoder tokens: two-stage selects at most one per token."""
        return min(self.num_queries, n_tokens) if self.two_stage else self.num_queries

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

        memory = self.encoder(src=src_flat, spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                              valid_ratios=valid_ratios, pos=pos_flat, padding_mask=mask_flat)
        B, Lv, C = memory.shape
        enc_logits = enc_boxes = topk = proposal_valid = None
        if self.two_stage:
            out_memory, proposals = encoder_proposals(memory, mask_flat, spatial_shapes)
            proposal_valid = torch.isfinite(proposals).all(-1)  # (B, Lv)
            out_memory = self.enc_output_norm(self.enc_output(out_memory))
            head = self.decoder.num_layers  # the extra (7th) class / box head scores proposals
            enc_logits = self.decoder.class_embed[head](out_memory)  # (B, Lv, K)
            enc_boxes = self.decoder.bbox_embed[head](out_memory) + proposals  # (B, Lv, 4)
            topk = torch.topk(enc_logits[..., 0], self.query_count(Lv), dim=1)[1]  # (B, Q)
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
            dec = self.decoder(tgt=tgt, reference_points=reference_points, src=memory, spatial_shapes=spatial_shapes,
                               level_start_index=level_start_index, valid_ratios=valid_ratios, query_pos=query_pos,
                               padding_mask=mask_flat)
        return TransformerOutput(
            decoder=dec, memory=memory, spatial_shapes=spatial_shapes, level_start_index=level_start_index,
            valid_ratios=valid_ratios, enc_logits=enc_logits, enc_boxes_unact=enc_boxes, proposal_index=topk,
            proposal_valid=proposal_valid)
