"""Hungarian matching between the model's Q predictions and each image's N ground-truth boxes.

DETR-style set prediction (Carion et al., ECCV 2020, Sec. 3.1) trains on a one-to-one assignment
that minimises a matching cost. Deformable DETR (Zhu et al., ICLR 2021) keeps DETR's matcher but
replaces the softmax class cost by a focal-loss-shaped one on sigmoid probabilities, because its
classifier is trained with sigmoid focal loss (official `models/matcher.py`). Weights default to
the official `set_cost_class=2, set_cost_bbox=5, set_cost_giou=2`.

Shapes: B images, Q predictions (queries, or encoder tokens for the two-stage proposals), K
classes, N_b targets in image b, N = sum_b N_b.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from scipy.optimize import linear_sum_assignment

from ddetr.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

Match = tuple[torch.Tensor, torch.Tensor]


def focal_class_cost(prob: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25,
                     gamma: float = 2.0) -> torch.Tensor:
    """Class cost of assigning each prediction to each target (lower = better).

    It is the focal loss of predicting the target's class as positive minus the focal loss of
    predicting it as negative, so the cost measures how much *this* assignment changes the
    classification loss; the 1e-8 keeps log finite at saturated probabilities (official code).

    prob: (Q', K) sigmoid probabilities. labels: (N,) int64 in [0, K). Returns (Q', N).
    """
    p = prob[:, labels]  # (Q', N)
    neg = (1 - alpha) * p.pow(gamma) * -(1 - p + 1e-8).log()
    pos = alpha * (1 - p).pow(gamma) * -(p + 1e-8).log()
    return pos - neg


class HungarianMatcher(torch.nn.Module):
    """Optimal one-to-one assignment of predictions to targets, per image.

    cost = cost_class * focal_class_cost + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU).
    The (B*Q, N) cost matrix is built once for the whole batch on the model's device, then split
    per image and solved on the CPU with scipy (the official code does the same: the cross-image
    blocks are wasted work, but one big matmul-like op beats B small ones on a GPU).
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0, the matching would be arbitrary")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    @torch.no_grad()
    def cost_matrix(self, logits: torch.Tensor, boxes: torch.Tensor,
                    targets: Sequence[dict]) -> torch.Tensor:
        """Batched matching cost.

        logits: (B, Q, K); boxes: (B, Q, 4) cxcywh in [0, 1]; targets: B dicts with 'labels' (N_b,)
        int64 and 'boxes' (N_b, 4) cxcywh in [0, 1]. Returns (B, Q, N) float32 where column block
        b (of width N_b) holds image b's targets; only the diagonal blocks are meaningful.
        """
        B, Q, _ = logits.shape
        prob = logits.flatten(0, 1).float().sigmoid()  # (B*Q, K)
        out_boxes = boxes.flatten(0, 1).float()  # (B*Q, 4)
        tgt_labels = torch.cat([t["labels"] for t in targets]).to(prob.device)  # (N,)
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(out_boxes)  # (N, 4)
        if tgt_labels.numel() == 0:
            return prob.new_zeros(B, Q, 0)
        K = prob.shape[1]
        if tgt_labels.min() < 0 or tgt_labels.max() >= K:
            raise ValueError(f"target labels must lie in [0, {K}) for a {K}-class model, got "
                             f"{tgt_labels.min().item()}..{tgt_labels.max().item()}; build the model "
                             "with num_classes > the largest label (category id)")
        cost = (self.cost_class * focal_class_cost(prob, tgt_labels, self.focal_alpha, self.focal_gamma)
                + self.cost_bbox * torch.cdist(out_boxes, tgt_boxes, p=1)
                - self.cost_giou * generalized_box_iou(box_cxcywh_to_xyxy(out_boxes),
                                                       box_cxcywh_to_xyxy(tgt_boxes)))
        return cost.view(B, Q, -1)

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, boxes: torch.Tensor,
                targets: Sequence[dict]) -> list[Match]:
        """Match predictions to targets.

        logits: (B, Q, K); boxes: (B, Q, 4) cxcywh; targets: B dicts {'labels': (N_b,), 'boxes':
        (N_b, 4)}. Returns B pairs (query_idx, target_idx), each (min(Q, N_b),) int64 on the CPU,
        sorted by query_idx: prediction query_idx[i] is assigned to target target_idx[i].
        """
        if len(targets) != logits.shape[0]:
            raise ValueError(f"HungarianMatcher: {logits.shape[0]} predictions but {len(targets)} "
                             "target dicts; pass exactly one target dict per image")
        if not (torch.isfinite(logits).all() and torch.isfinite(boxes).all()):
            raise FloatingPointError("HungarianMatcher: the model's outputs contain NaN/inf; training "
                                     "diverged (lower the lr, keep grad clipping on, or disable AMP)")
        cost = self.cost_matrix(logits, boxes, targets).cpu()  # (B, Q, N)
        sizes = [len(t["boxes"]) for t in targets]
        matches = []
        for b, block in enumerate(cost.split(sizes, dim=-1)):
            q, t = linear_sum_assignment(block[b].numpy())
            matches.append((torch.as_tensor(q, dtype=torch.int64), torch.as_tensor(t, dtype=torch.int64)))
        return matches
