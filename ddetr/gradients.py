"""Gradient-norm maps of one detection, the data of the paper's Figure 5.

Zhu et al. (arXiv 2010.04159, sec. 5.3 / Fig. 5) visualize, for each of a detection's box
centre x / y, width / height and category score, the norm of its gradient with respect to
every input pixel: where the prediction *depends on* the image, to compare with where the
attention *samples* it. Here one forward runs with gradients through the real model
(no ``inference_mode``) and one backward per quantity reads ``d quantity / d image``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .box_ops import box_cxcywh_to_xyxy

QUANTITIES = ("cx", "cy", "w", "h", "score")


def box_gradients(model, image, query_index: int | None = None) -> dict:
    """Gradient-norm maps of one query's box and score with respect to the input pixels.

    model: a ``DeformableDETR``; image: anything ``model.predict`` accepts (one image);
    query_index: the decoder query (``Detections.query_index``); None takes the query of
    the top-scoring detection. A freshly initialized model's box head ends in a zero layer
    (official init), so its box maps are all zero until it is trained.

    Returns a dict:
      ``cx``, ``cy``, ``w``, ``h``, ``score``: (h0, w0) float32 maps in original-image pixels,
          ||d y / d RGB||_2 over the three channels of each pixel, y being the box coordinate
          (normalized to [0, 1] of the image, as the model predicts it) or the top class
          probability; resampled bilinearly from the resized input the model saw;
      ``resized``: the same maps (h, w) on that resized input (the exact gradients);
      ``query_index``, ``label``, ``label_name``, ``score_value``, ``box`` (4,) xyxy in
      original pixels, ``scale`` (sy, sx) resized / original.
    """
    if isinstance(image, (list, tuple)):
        if len(image) != 1:
            raise ValueError(f"box_gradients takes one image, got {len(image)}")
        image = image[0]
    cfg = model.cfg
    batch = model.prepare(image)
    x = batch.images.detach().clone().requires_grad_(True)  # (1, 3, H, W) normalized
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            out = model(x, batch.mask, batch=batch)
            if query_index is None:
                query_index = int(out.detections[0].query_index[0])
            Q = out.logits.shape[1]
            if not 0 <= query_index < Q:
                raise IndexError(f"query_index {query_index} outside 0..{Q - 1}")
            box = out.boxes[0, query_index]  # (4,) cxcywh
            prob = out.logits[0, query_index].sigmoid()  # (K,)
            label = int(prob.argmax())
            targets = dict(zip(QUANTITIES, (box[0], box[1], box[2], box[3], prob[label])))
            grads = {}
            for i, name in enumerate(QUANTITIES):
                (g,) = torch.autograd.grad(targets[name], x, retain_graph=i < len(QUANTITIES) - 1)
                grads[name] = g[0]  # (3, H, W)
    finally:
        model.train(was_training)

    h, w = batch.sizes[0]
    h0, w0 = batch.orig_sizes[0]
    # The input was normalized as (rgb - mean) / std, so d/d rgb = d/d input / std.
    std = torch.tensor(cfg.pixel_std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    resized, original = {}, {}
    for name, g in grads.items():
        m = (g / std).norm(dim=0)[:h, :w].detach()  # (h, w): drop the batch padding
        resized[name] = m.float().cpu().numpy()
        if (h, w) != (h0, w0):
            m = F.interpolate(m[None, None], size=(h0, w0), mode="bilinear", align_corners=False)[0, 0].clamp_min(0)
        original[name] = m.float().cpu().numpy()
    xyxy = box_cxcywh_to_xyxy(box.detach().float().cpu()) * torch.tensor([w0, h0, w0, h0], dtype=torch.float32)
    return {
        **original,
        "resized": resized,
        "query_index": int(query_index),
        "label": label,
        "label_name": cfg.label_name(label),
        "score_value": float(prob[label].detach()),
        "box": np.asarray(xyxy.numpy(), dtype=np.float32),
        "scale": batch.scales[0],
    }
