"""Official post-processing (sigmoid, top-k over queries x classes), keeping the query index.

Both the official code and ``transformers`` compute ``topk_index // num_classes`` to gather the
box and then throw it away; the explorer needs it to find a detection's sampling points.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .box_ops import box_cxcywh_to_xyxy
from .config import label_name


@dataclass
class Detections:
    """Detections of one image, sorted by score (descending)."""

    boxes: torch.Tensor  # (N, 4) xyxy in original-image pixels
    scores: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N,) int64
    label_names: list[str]
    query_index: torch.Tensor  # (N,) int64: the decoder query that produced each detection

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def above(self, threshold: float) -> "Detections":
        keep = self.scores >= threshold
        idx = keep.nonzero().flatten().tolist()
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep],
                          [self.label_names[i] for i in idx], self.query_index[keep])


def postprocess(logits: torch.Tensor, boxes: torch.Tensor, orig_sizes, class_names, top_k: int = 100,
                score_threshold: float = 0.0) -> list[Detections]:
    """logits (B, Q, K), boxes (B, Q, 4) cxcywh relative to the unpadded image;
    orig_sizes: B pairs (h, w). Returns B ``Detections`` with boxes in original pixels."""
    B, Q, K = logits.shape
    prob = logits.sigmoid().view(B, -1)  # (B, Q*K)
    k = min(top_k, Q * K)
    scores, index = torch.topk(prob, k, dim=1)  # (B, k)
    query = torch.div(index, K, rounding_mode="floor")
    labels = index % K
    xyxy = torch.gather(box_cxcywh_to_xyxy(boxes), 1, query.unsqueeze(-1).expand(-1, -1, 4))  # (B, k, 4)
    out = []
    for b in range(B):
        h, w = orig_sizes[b]
        scale = torch.tensor([w, h, w, h], dtype=xyxy.dtype, device=xyxy.device)
        lab = labels[b].cpu()
        names = [label_name(class_names, i) for i in lab.tolist()]
        det = Detections((xyxy[b] * scale).float().cpu(), scores[b].float().cpu(), lab, names, query[b].cpu())
        out.append(det.above(score_threshold) if score_threshold > 0 else det)
    return out
