"""Training and evaluation transforms of DETR / Deformable DETR, re-written.

Same recipe as the official ``datasets/transforms.py`` + ``make_coco_transforms``: random
horizontal flip, then either a random resize of the shorter side, or (resize, random crop,
resize), then ToTensor + ImageNet normalisation, which also turns the boxes into cxcywh
normalised by the image size (what the criterion and the model's box head expect).

Every transform maps ``(PIL image, target) -> (image, target)``; the target dict holds
``boxes`` (N, 4) float xyxy in pixels, ``labels`` (N,) int64, ``area`` (N,), ``iscrowd`` (N,),
``image_id``, ``orig_size`` and ``size`` ((h, w) int64). Per-box entries are filtered together
when a crop removes a box.

The official numbers are for COCO (shorter side 480..800, max 1333). ``scales_for`` shrinks
them for small images, so a 320 px synthetic set runs the same code with smaller numbers::

    make_transforms("train")                         # official COCO
    make_transforms("train", **scales_for(320, 512)) # shorter side 192..320, max 512
"""
from __future__ import annotations

import math
import random
from typing import Callable, Sequence

import torch
import torchvision.transforms.functional as F
from PIL import Image

from ddetr.box_ops import box_xyxy_to_cxcywh
from ddetr.preprocess import resized_size

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The official COCO recipe (Deformable-DETR datasets/coco.py, make_coco_transforms).
COCO_SCALES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
COCO_MAX_SIZE = 1333
COCO_CROP_RESIZE = (400, 500, 600)
COCO_CROP = (384, 600)
COCO_EVAL_SIZE = 800

_PER_BOX = ("boxes", "labels", "area", "iscrowd")


def _per_box_keys(target: dict) -> list[str]:
    return [k for k in _PER_BOX if k in target]


def crop_region(image: Image.Image, target: dict, region: tuple[int, int, int, int]):
    """Crop to ``region`` = (top, left, height, width); boxes are clipped, empty ones dropped."""
    top, left, h, w = region
    image = F.crop(image, top, left, h, w)
    target = dict(target, size=torch.tensor([h, w]))
    if "boxes" in target:
        boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
        boxes = torch.min(boxes.reshape(-1, 2, 2), torch.tensor([w, h], dtype=torch.float32))
        boxes = boxes.clamp(min=0)  # (N, 2, 2): corners inside the crop
        # As in the official code, the area becomes the clipped box's area.
        target["area"] = (boxes[:, 1] - boxes[:, 0]).prod(dim=1)
        target["boxes"] = boxes.reshape(-1, 4)
        keep = (boxes[:, 1] > boxes[:, 0]).all(dim=1)  # (N,) boxes that still have an inside
        for k in _per_box_keys(target):
            target[k] = target[k][keep]
    return image, target


def hflip(image: Image.Image, target: dict):
    """Mirror left-right; box x becomes w - x."""
    w = image.width
    image = F.hflip(image)
    if target is None:
        return image, None
    target = dict(target)
    if "boxes" in target:
        target["boxes"] = target["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) \
            + torch.tensor([w, 0, w, 0])
    return image, target


def resize(image: Image.Image, target: dict | None, size: int, max_size: int | None = None):
    """Resize so the shorter side is ``size`` (longer side <= ``max_size``); boxes follow."""
    # One implementation of the official get_size_with_aspect_ratio, shared with inference.
    h, w = resized_size(image.height, image.width, size, math.inf if max_size is None else max_size)
    rw, rh = w / image.width, h / image.height
    image = F.resize(image, [h, w])
    if target is None:
        return image, None
    target = dict(target, size=torch.tensor([h, w]))
    if "boxes" in target:
        target["boxes"] = target["boxes"] * torch.tensor([rw, rh, rw, rh], dtype=torch.float32)
    if "area" in target:
        target["area"] = target["area"] * (rw * rh)
    return image, target


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, target):
        return hflip(image, target) if random.random() < self.p else (image, target)


class RandomResize:
    """Shorter side drawn from ``sizes``; longer side capped at ``max_size``."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None):
        self.sizes, self.max_size = list(sizes), max_size

    def __call__(self, image, target):
        return resize(image, target, random.choice(self.sizes), self.max_size)


class RandomSizeCrop:
    """A random crop whose width and height are drawn from [min_size, max_size]."""

    def __init__(self, min_size: int, max_size: int):
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image, target):
        # min() also guards images smaller than min_size (the official code raises there).
        w = random.randint(min(self.min_size, image.width), min(image.width, self.max_size))
        h = random.randint(min(self.min_size, image.height), min(image.height, self.max_size))
        top, left = random.randint(0, image.height - h), random.randint(0, image.width - w)
        return crop_region(image, target, (top, left, h, w))


class RandomSelect:
    """``first`` with probability p, else ``second``."""

    def __init__(self, first: Callable, second: Callable, p: float = 0.5):
        self.first, self.second, self.p = first, second, p

    def __call__(self, image, target):
        return self.first(image, target) if random.random() < self.p else self.second(image, target)


class ToTensorNormalize:
    """PIL -> (3, H, W) float normalised with ImageNet statistics; boxes -> cxcywh in [0, 1]."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean, self.std = list(mean), list(std)

    def __call__(self, image, target):
        image = F.normalize(F.to_tensor(image), self.mean, self.std)  # (3, H, W)
        if target is None:
            return image, None
        target = dict(target)
        if "boxes" in target:
            h, w = image.shape[-2:]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            target["boxes"] = box_xyxy_to_cxcywh(target["boxes"]) / scale
        return image, target


class Compose:
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(type(t).__name__ for t in self.transforms) + ")"


def make_transforms(split: str, scales: Sequence[int] = COCO_SCALES, max_size: int = COCO_MAX_SIZE,
                    crop_resize: Sequence[int] = COCO_CROP_RESIZE,
                    crop: tuple[int, int] = COCO_CROP, eval_size: int = COCO_EVAL_SIZE) -> Compose:
    """The official train / val pipeline; defaults are the COCO numbers.

    train: flip, then resize to a random shorter side in ``scales``, or resize to
    ``crop_resize``, crop a box of side in ``crop`` and resize to ``scales`` (50/50; the crop
    branch is what makes small objects large, Carion et al. 2020, Sec. 4);
    val / test: resize the shorter side to ``eval_size``.
    """
    normalize = ToTensorNormalize()
    if split == "train":
        return Compose([
            RandomHorizontalFlip(),
            RandomSelect(
                RandomResize(scales, max_size=max_size),
                Compose([RandomResize(crop_resize), RandomSizeCrop(*crop),
                         RandomResize(scales, max_size=max_size)]),
            ),
            normalize,
        ])
    if split in ("val", "test"):
        return Compose([RandomResize([eval_size], max_size=max_size), normalize])
    raise ValueError(f"unknown split {split!r}: use 'train', 'val' or 'test'")


def scales_for(min_size: int, max_size: int | None = None) -> dict:
    """Keyword arguments for ``make_transforms`` with every COCO number scaled by min_size/800.

    ``min_size`` is the evaluation shorter side (800 for COCO); ``max_size`` defaults to the
    scaled 1333. ``scales_for(800)`` gives exactly the official recipe.
    """
    f = min_size / COCO_EVAL_SIZE
    return {
        "scales": tuple(int(round(s * f)) for s in COCO_SCALES),
        "max_size": max_size if max_size is not None else int(round(COCO_MAX_SIZE * f)),
        "crop_resize": tuple(int(round(s * f)) for s in COCO_CROP_RESIZE),
        "crop": tuple(int(round(s * f)) for s in COCO_CROP),
        "eval_size": min_size,
    }
