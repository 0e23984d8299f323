"""The padding mask of a batch: which part of each padded map holds image.

Images of different sizes are padded bottom/right to one tensor (``preprocess.pad_batch``);
every level map inherits a mask (True at padding). Its valid extent is read from the first
row and column, the one formula behind the valid ratios the transformer scales its
reference points by, the two-stage proposals, and the unpadded sizes of the inputs.
"""
from __future__ import annotations

import torch


def valid_sizes(mask: torch.Tensor) -> torch.Tensor:
    """Valid columns and rows of each padded map: mask (B, H, W) bool -> (B, 2) int64 as (w, h)."""
    return torch.stack([(~mask[:, 0, :]).sum(1), (~mask[:, :, 0]).sum(1)], -1)


def valid_ratio(mask: torch.Tensor) -> torch.Tensor:
    """Fraction of each padded map (B, H, W) that holds image, as (w, h): (B, 2) float32."""
    _, H, W = mask.shape
    valid = valid_sizes(mask).float()
    return torch.stack([valid[:, 0] / W, valid[:, 1] / H], -1)
