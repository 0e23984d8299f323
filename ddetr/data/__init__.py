"""Data: COCO-format datasets, the official DETR transforms, and the synthetic shapes set."""
from .coco import CocoDetection, collate, collate_padded
from .transforms import make_transforms, scales_for

_SYNTHETIC = ("SYNTHETIC_CLASSES", "SceneParams", "render_scene", "scene_seed", "write_dataset")

__all__ = ["CocoDetection", "collate", "collate_padded", "make_transforms", "scales_for", *_SYNTHETIC]


def __getattr__(name):
    # Imported on first use, not here: `python -m ddetr.data.synthetic` would otherwise find
    # the module already imported by its package and runpy warns about it.
    if name in _SYNTHETIC:
        from . import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module 'ddetr.data' has no attribute {name!r}")
