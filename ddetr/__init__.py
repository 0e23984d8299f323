"""Deformable DETR (Zhu et al., ICLR 2021) with instrumentation of its sampling.

Front door::

    import ddetr
    model = ddetr.build_model(ddetr.preset("multi_scale"))     # or:
    model, report = ddetr.load("path/to/checkpoint")            # official .pth, HF dir, ours
    with ddetr.capture(model) as session:
        dets = model.predict(image, score_threshold=0.5)

transformers detectors of the same attention (RT-DETR, Grounding DINO, ...; ``ddetr.hf_family``)
load from a save_pretrained folder or hub id with the same front door, and ``ddetr.accelerate``
runs their deformable attention on our op.

Names are imported lazily: ``import ddetr`` imports neither torch nor the op, so an entry
point can still set process-wide options first (``ddetr.openmp``), and
``python -m ddetr.data.synthetic`` does not build the op.
"""
from __future__ import annotations

import importlib
import sys
import types

_LAZY = {
    "DDETRConfig": "config", "PRESET_NAMES": "config", "preset": "config",
    "DeformableDETR": "model", "LayerOutput": "model", "ModelOutput": "model", "build_model": "model",
    "Detections": "postprocess", "Capture": "capture_io", "compile_model": "compiling",
}

__all__ = [*_LAZY, "load", "capture", "accelerate"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'ddetr' has no attribute {name!r}")


def load(source, **kwargs):
    """Load any supported checkpoint -> (model, report); see ``ddetr.checkpoint.load``.

    A transformers folder / hub id of another deformable-attention family (RT-DETR, Grounding
    DINO, ...; ``ddetr.hf_family``), or a Deformable DETR whose backbone ours does not
    implement, loads as a ``FamilyDetector`` with the same ``predict`` and capture.
    """
    from .checkpoint import CheckpointError, load as _load
    from .hf_family.loading import family_model_type, load_family

    family = family_model_type(source)
    if family is not None and family != "deformable_detr":
        return load_family(source, **kwargs)
    try:
        return _load(source, **kwargs)
    except CheckpointError as refused:
        if family is None:
            raise
        try:  # a Deformable DETR our model cannot hold exactly (Swin, timm names ...): run it as is
            return load_family(source, note=f"not converted to ddetr's own model: {refused}", **kwargs)
        except CheckpointError:
            raise refused from None


def accelerate(model) -> int:
    """Swap a transformers detector's deformable attention for ``ops.ms_deform_attn``; returns
    how many modules were swapped (see ``ddetr.hf_family.accelerate``)."""
    from .hf_family.accelerate import accelerate as _accelerate

    return _accelerate(model)


class _Package(types.ModuleType):
    """``ddetr.capture`` is the function, although a submodule has that name: importing
    ``ddetr.capture`` (``from ddetr.capture import Capture``) binds the module to the package
    attribute, and this property, on the package's class, outlives that binding."""

    @property
    def capture(self):
        from .capture import capture

        return capture

    @capture.setter
    def capture(self, value):
        if not isinstance(value, types.ModuleType):
            raise AttributeError("ddetr.capture is the capture function and cannot be replaced")
        # the import system binding the submodule: it stays reachable as sys.modules["ddetr.capture"]


sys.modules[__name__].__class__ = _Package
