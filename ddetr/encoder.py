"""The deformable encoder: every pixel of every level attends to L x P points around itself."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MSDeformAttn
from .linear import Linear
from .precision import dense


def _ffn(x, linear1, linear2, dropout_a, dropout_b, norm):
    """Post-norm FFN: norm(x + W2 relu(W1 x)); the layers own the modules (official names).
    The two linears are a dense region (``ddetr.precision``); the residual sum and the norm
    stay in x's dtype."""
    with dense(x):
        h = linear2(dropout_a(F.relu(linear1(x), inplace=True)))
    return norm(x + dropout_b(h))


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention over all levels, then FFN."""

    def __init__(self, *, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.1, n_levels: int = 4,
                 n_heads: int = 8, n_points: int = 4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model=d_model, n_levels=n_levels, n_heads=n_heads, n_points=n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask):
        """src, pos (B, Lv, C); reference_points (B, Lv, L, 2); padding_mask (B, Lv) -> (B, Lv, C)."""
        src2 = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.dropout1(src2))
        return _ffn(src, self.linear1, self.linear2, self.dropout2, self.dropout3, self.norm2)


def encoder_reference_points(spatial_shapes: torch.Tensor, valid_ratios: torch.Tensor) -> torch.Tensor:
    """Each token's own pixel centre, on every level.

    spatial_shapes (L, 2) rows (H, W); valid_ratios (B, L, 2) as (w, h) fractions of the padded
    map that hold image. The centre (i + 0.5) is first normalized by the *valid* extent of its
    own level, then mapped into every level by that level's valid ratio, so a pixel means the
    same image point on all levels even when padding differs by rounding (official
    ``get_reference_points``). Returns (B, Lv, L, 2), x first.
    """
    refs = []
    for lvl, (H, W) in enumerate(spatial_shapes.tolist()):
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, H - 0.5, H, dtype=torch.float32, device=valid_ratios.device),
            torch.linspace(0.5, W - 0.5, W, dtype=torch.float32, device=valid_ratios.device),
            indexing="ij",
        )
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * H)  # (B, HW)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * W)
        refs.append(torch.stack((ref_x, ref_y), -1))  # (B, HW, 2)
    ref = torch.cat(refs, 1)  # (B, Lv, 2)
    return ref[:, :, None] * valid_ratios[:, None]  # (B, Lv, L, 2)


class DeformableEncoder(nn.Module):
    def __init__(self, layer: DeformableEncoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.num_layers = num_layers

    def forward(self, src, spatial_shapes, level_start_index, valid_ratios, pos, padding_mask):
        """src, pos (B, Lv, C); valid_ratios (B, L, 2); padding_mask (B, Lv) -> memory (B, Lv, C)."""
        reference_points = encoder_reference_points(spatial_shapes, valid_ratios)
        out = src
        for layer in self.layers:
            out = layer(out, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return out
