"""Deformable DETR (Zhu et al., ICLR 2021) with instrumentation of its sampling.

Front door::

    import ddetr
    model = ddetr.build_model(ddetr.preset("multi_scale"))     # or:
    model, report = ddetr.load("path/to/checkpoint")            # official .pth, HF dir, ours
    dets = model.predict(image, score_threshold=0.5)
"""
from .config import DDETRConfig, PRESET_NAMES, preset
from .model import DeformableDETR, LayerOutput, ModelOutput, build_model
from .postprocess import Detections

__all__ = ["DDETRConfig", "PRESET_NAMES", "preset", "DeformableDETR", "LayerOutput", "ModelOutput",
           "build_model", "Detections", "load"]


def load(path, **kwargs):
    """Load any supported checkpoint; see ``ddetr.checkpoint.load``."""
    from .checkpoint import load as _load

    return _load(path, **kwargs)


def capture(model, **kwargs):
    """Record every sampling point while the context is open; see ``ddetr.capture.capture``."""
    from .capture import capture as _capture

    return _capture(model, **kwargs)
