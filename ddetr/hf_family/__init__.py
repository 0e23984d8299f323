"""Deformable DETR's descendants in ``transformers`` behind our front door.

    det, report = ddetr.load("path/to/save_pretrained-folder")   # or a hub id
    dets = det.predict(image, score_threshold=0.3)                # + text="cat. dog." (open vocabulary)
    with ddetr.capture(det) as session:                           # the same Capture as our model's
        det.predict(image)
    ddetr.accelerate(det)                                         # grid_sample -> ops.ms_deform_attn

Supported ``model_type`` (``registry.FAMILIES``): deformable_detr (when our own model cannot hold
the checkpoint exactly, e.g. a Swin backbone), rt_detr, rt_detr_v2, d_fine, deimv2,
grounding-dino, mm-grounding-dino, omdet-turbo, lw_detr, rf_detr, pp_doclayout_v2/v3/v4. All
but the v2 attention of RT-DETRv2, D-FINE and DEIMv2 (``variants``) call transformers'
``MultiScaleDeformableAttention`` module, which a capture hooks and ``accelerate`` replaces.
Mask2Former and OneFormer are not served (``registry.NOT_SUPPORTED`` says why).
"""
from __future__ import annotations

from .capture import FamilyCaptureSession
from .detector import FamilyBatch, FamilyConfig, FamilyDetector, Prompt
from .registry import FAMILIES, NOT_SUPPORTED, Family, family_of

__all__ = ["FAMILIES", "NOT_SUPPORTED", "Family", "FamilyBatch", "FamilyCaptureSession", "FamilyConfig",
           "FamilyDetector", "Prompt", "family_of", "is_family_model"]


def is_family_model(model) -> bool:
    """A ``FamilyDetector`` or a ``transformers`` model whose ``config.model_type`` is supported."""
    if isinstance(model, FamilyDetector):
        return True
    return family_of(getattr(getattr(model, "config", None), "model_type", None)) is not None
