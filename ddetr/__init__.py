"""Deformable DETR (Zhu et al., ICLR 2021) with instrumentation of its sampling.

Front door::

    import ddetr
    model = ddetr.build_model(ddetr.preset("multi_scale"))     # or:
    model, report = ddetr.load("path/to/checkpoint")            # official .pth, HF dir, ours
    with ddetr.capture(model) as session:
        dets = model.predict(image, score_threshold=0.5)

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
    "Detections": "postprocess", "Capture": "capture_io",
}

__all__ = [*_LAZY, "load", "capture"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'ddetr' has no attribute {name!r}")


def load(source, **kwargs):
    """Load any supported checkpoint -> (model, report); see ``ddetr.checkpoint.load``."""
    from .checkpoint import load as _load

    return _load(source, **kwargs)


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
