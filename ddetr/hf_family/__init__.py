"""Deformable DETR's descendants in ``transformers`` behind our front door.

Ten ``transformers`` detector families call one ``MultiScaleDeformableAttention`` module
(``registry.FAMILIES``). For them ``ddetr.load(folder_or_hub_id)`` returns a
``FamilyDetector`` (``predict`` with query indices, text prompts for the open-vocabulary
ones), ``ddetr.capture`` records the op's inputs as ``Capture`` objects, and
``ddetr.accelerate`` swaps the module's grid_sample forward for ``ops.ms_deform_attn``.
"""
from __future__ import annotations

from .capture import FamilyCaptureSession
from .detector import FamilyBatch, FamilyDetector, Prompt
from .registry import FAMILIES, NOT_SUPPORTED, Family, family_of

__all__ = ["FAMILIES", "NOT_SUPPORTED", "Family", "FamilyBatch", "FamilyCaptureSession", "FamilyDetector",
           "Prompt", "family_of", "is_family_model"]


def is_family_model(model) -> bool:
    """A ``FamilyDetector`` or a ``transformers`` model whose ``config.model_type`` is supported."""
    if isinstance(model, FamilyDetector):
        return True
    return family_of(getattr(getattr(model, "config", None), "model_type", None)) is not None
