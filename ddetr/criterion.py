"""Set-prediction losses of Deformable DETR: sigmoid focal classification, L1 and GIoU boxes.

Mirrors the official `SetCriterion` (fundamentalvision/Deformable-DETR, `models/deformable_detr.py`):
the same matching per decoder layer, the same normalisation by the number of target boxes
averaged over workers, the same auxiliary ('_0'..'_{n-2}') and two-stage encoder ('_enc') terms,
and the official weights (cls 2, bbox 5, giou 2).

Shapes: B images, Q predictions, K classes, N_b targets in image b, M = total matched pairs.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddetr.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from ddetr.matcher import HungarianMatcher, Match

# Official `--cls_loss_coef 2 --bbox_loss_coef 5 --giou_loss_coef 2`.
DEFAULT_WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
_SUFFIX = re.compile(r"_(\d+|enc)$")


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, num_boxes: float,
                       alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al., ICCV 2017, Eq. 5) summed and divided by num_boxes.

    logits, targets: (B, Q, K), targets in {0, 1}. Returns a scalar.

    The official code returns `loss.mean(1).sum() / num_boxes` and the caller multiplies by Q;
    that is exactly `loss.sum() / num_boxes`, which is what we compute: every (query, class)
    pair contributes, normalised by the number of objects, not by Q * K.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum() / num_boxes


def average_num_boxes(targets: Sequence[Mapping[str, torch.Tensor]], device: torch.device) -> float:
    """Number of target boxes per worker, averaged over the process group, at least 1.

    Every worker must normalise by the same number, otherwise DDP's gradient averaging weighs
    workers with few boxes more (official code; DETR issue #136).
    """
    n = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    world = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(n)
        world = torch.distributed.get_world_size()
    return max(n.item() / world, 1.0)


class SetCriterion(nn.Module):
    """Losses for one model output against a batch of targets.

    `forward(outputs, targets)` takes any object with attributes `logits` (B, Q, K), `boxes`
    (B, Q, 4) cxcywh in [0, 1], `aux` (list of objects with `logits`/`boxes`, decoder layers
    0..n-2) and `enc` (None, or encoder proposals with `logits` (B, S, K), `boxes` (B, S, 4)),
    i.e. `ddetr.model.ModelOutput`, and targets: B dicts {'labels': (N_b,) int64, 'boxes':
    (N_b, 4) cxcywh in [0, 1] of the unpadded image}. It returns a dict of scalar tensors:
    loss_ce, loss_bbox, loss_giou (with grad), class_error and cardinality_error (logging only),
    the same with suffix '_i' for aux layer i and '_enc' for the encoder proposals.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher | None = None,
                 weights: Mapping[str, float] | None = None, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.weight_dict = dict(DEFAULT_WEIGHTS if weights is None else weights)
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def weight_of(self, name: str) -> float:
        """Weight of a loss term; 'loss_ce_3' and 'loss_ce_enc' weigh like 'loss_ce'; logs get 0."""
        return self.weight_dict.get(_SUFFIX.sub("", name), 0.0)

    def weighted_total(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Sum of weight * term over all weighted terms (the quantity to backpropagate)."""
        terms = [self.weight_of(k) * v for k, v in losses.items() if self.weight_of(k) != 0]
        if not terms:
            raise ValueError(f"weighted_total: none of {sorted(losses)} has a weight in "
                             f"{self.weight_dict}")
        return torch.stack(terms).sum()

    def layer_losses(self, logits: torch.Tensor, boxes: torch.Tensor,
                     targets: Sequence[Mapping[str, torch.Tensor]], matches: Sequence[Match],
                     num_boxes: float, log: bool = False) -> dict[str, torch.Tensor]:
        """Losses of one prediction layer given its matching.

        logits: (B, Q, K); boxes: (B, Q, 4); matches: B pairs (query_idx, target_idx).
        """
        device = logits.device
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(matches)]).to(device)  # (M,)
        query_idx = torch.cat([q for q, _ in matches]).to(device)  # (M,)
        tgt_labels = torch.cat([t["labels"][j.to(t["labels"].device)]
                                for t, (_, j) in zip(targets, matches)]).to(device)  # (M,)
        tgt_boxes = torch.cat([t["boxes"][j.to(t["boxes"].device)]
                               for t, (_, j) in zip(targets, matches)]).to(boxes)  # (M, 4)

        onehot = torch.zeros_like(logits)  # (B, Q, K): unmatched queries are negatives for all K
        onehot[batch_idx, query_idx, tgt_labels] = 1
        losses = {"loss_ce": sigmoid_focal_loss(logits, onehot, num_boxes, self.focal_alpha,
                                                self.focal_gamma)}

        src_boxes = boxes[batch_idx, query_idx]  # (M, 4)
        losses["loss_bbox"] = F.l1_loss(src_boxes, tgt_boxes, reduction="none").sum() / num_boxes
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src_boxes),
                                              box_cxcywh_to_xyxy(tgt_boxes)))  # (M,)
        losses["loss_giou"] = (1 - giou).sum() / num_boxes

        with torch.no_grad():
            # The official cardinality counts queries whose argmax is not the last class, a
            # left-over from DETR's softmax "no-object" class that means nothing with sigmoid
            # outputs; we count queries whose best class probability exceeds 0.5 instead.
            n_pred = (logits.sigmoid().amax(-1) > 0.5).sum(1).float()  # (B,)
            n_tgt = torch.tensor([float(len(t["labels"])) for t in targets], device=device)
            losses["cardinality_error"] = F.l1_loss(n_pred, n_tgt)
            if log:
                if tgt_labels.numel():
                    hit = logits[batch_idx, query_idx].argmax(-1) == tgt_labels
                    losses["class_error"] = 100 - 100 * hit.float().mean()
                else:
                    losses["class_error"] = logits.new_zeros(())
        return losses

    def forward(self, outputs: Any, targets: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """All loss terms for a model output (see the class docstring)."""
        logits = outputs.logits.float()  # losses in fp32 even under autocast
        device = logits.device
        targets = [{"labels": t["labels"].to(device), "boxes": t["boxes"].to(device).float()}
                   for t in targets]
        num_boxes = average_num_boxes(targets, device)

        def one_layer(layer_logits, layer_boxes, tgts, log=False):
            layer_logits, layer_boxes = layer_logits.float(), layer_boxes.float()
            matches = self.matcher(layer_logits, layer_boxes, tgts)
            return self.layer_losses(layer_logits, layer_boxes, tgts, matches, num_boxes, log)

        losses = one_layer(logits, outputs.boxes, targets, log=True)
        for i, aux in enumerate(getattr(outputs, "aux", None) or []):
            losses.update({f"{k}_{i}": v for k, v in one_layer(aux.logits, aux.boxes, targets).items()})
        enc = getattr(outputs, "enc", None)
        if enc is not None:
            # Two-stage proposals are class-agnostic: the encoder head is trained as a binary
            # "object vs. background" classifier on class 0 (official `bin_targets`).
            binary = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
            losses.update({f"{k}_enc": v for k, v in one_layer(enc.logits, enc.boxes, binary).items()})
        return losses
