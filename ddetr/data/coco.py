"""COCO-format detection data: COCO 2017 itself or the synthetic shapes, same layout.

    root/train2017/*.jpg   root/val2017/*.jpg   root/annotations/instances_{split}2017.json

Labels are the COCO ``category_id`` themselves, not a contiguous re-numbering, so that
official checkpoints (91 logits for COCO, id 0 and the 10 ids COCO never uses left empty)
read the same labels: ``num_classes = max category id + 1``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from pycocotools.coco import COCO

from ddetr.preprocess import pad_batch

_REQUIRED = {
    "file": ("images", "annotations", "categories"),
    "images": ("id", "file_name"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


def _check_coco(data, ann_file: Path) -> None:
    """Raise ValueError naming what is missing when ``data`` is not a COCO instances file."""
    if not isinstance(data, dict):
        raise ValueError(f"{ann_file} is not a COCO annotation file: expected a JSON object with "
                         f"keys {list(_REQUIRED['file'])}, got a {type(data).__name__}")
    missing = [k for k in _REQUIRED["file"] if k not in data]
    if missing:
        raise ValueError(f"{ann_file} is not a COCO annotation file: missing top-level keys "
                         f"{missing} (has {sorted(data)[:8]})")
    for section in ("images", "annotations", "categories"):
        for i, entry in enumerate(data[section]):
            lacking = [k for k in _REQUIRED[section] if k not in entry]
            if lacking:
                raise ValueError(f"{ann_file}: {section}[{i}] lacks keys {lacking} "
                                 f"(a COCO '{section}' entry needs {list(_REQUIRED[section])})")
    cat_ids = {c["id"] for c in data["categories"]}
    bad = [a for a in data["annotations"] if a["category_id"] not in cat_ids]
    if bad:
        raise ValueError(f"{ann_file}: {len(bad)} annotations use category ids missing from "
                         f"'categories', e.g. annotation {bad[0]['id']} with category_id "
                         f"{bad[0]['category_id']}")
    bad = [a for a in data["annotations"] if len(a["bbox"]) != 4]
    if bad:
        raise ValueError(f"{ann_file}: annotation {bad[0]['id']} has bbox {bad[0]['bbox']}; "
                         "COCO boxes are [x, y, width, height]")


def _degenerate(data: dict) -> list[int]:
    """Ids of annotations whose box is empty: zero/negative size, or outside its image."""
    sizes = {im["id"]: (im.get("width"), im.get("height")) for im in data["images"]}
    out = []
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        W, H = sizes.get(a["image_id"], (None, None))
        outside = W is not None and H is not None and (x >= W or y >= H or x + w <= 0 or y + h <= 0)
        if w <= 0 or h <= 0 or outside:
            out.append(a["id"])
    return out


class CocoDetection(torch.utils.data.Dataset):
    """``dataset[i] -> (image, target)`` for one split of a COCO-layout dataset.

    Without transforms the image is a PIL RGB image and target holds ``boxes`` (N, 4) float32
    xyxy in pixels, ``labels`` (N,) int64 (= category ids), ``area`` (N,), ``iscrowd`` (N,)
    int64, ``image_id`` (1,), ``orig_size`` and ``size`` (2,) = (h, w). Boxes with zero or
    negative size are skipped (one warning per dataset with their count). Crowd annotations
    are kept with ``iscrowd = 1`` unless ``drop_crowd``; the official training drops them
    (their loss has no notion of crowd), evaluation keeps them (COCOeval ignores matches to them).

    Attributes: ``coco`` (pycocotools COCO, for COCOeval), ``ids`` (image ids in order),
    ``class_names`` (list indexed by label, "N/A" for unused ids), ``num_classes``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "val",
                 transforms: Callable | None = None, drop_crowd: bool = False):
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.drop_crowd = drop_crowd
        self.ann_file = self.root / "annotations" / f"instances_{split}2017.json"
        self.img_dir = self.root / f"{split}2017"
        layout = (f"expected the COCO layout {self.root}/{split}2017/ (images) and "
                  f"{self.root}/annotations/instances_{split}2017.json")
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"annotation file {self.ann_file} not found: {layout}")
        if not self.img_dir.is_dir():
            raise FileNotFoundError(f"image folder {self.img_dir} not found: {layout}")
        try:
            with open(self.ann_file) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.ann_file} is not valid JSON ({e}); is the download complete?") from None
        _check_coco(data, self.ann_file)

        self._skipped = set(_degenerate(data))
        if self._skipped:
            warnings.warn(f"{self.ann_file}: skipping {len(self._skipped)} of "
                          f"{len(data['annotations'])} boxes with zero or negative size or lying "
                          f"outside their image (e.g. annotation ids {sorted(self._skipped)[:5]})",
                          stacklevel=2)

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = COCO()
            self.coco.dataset = data
            self.coco.createIndex()
        self.ids = sorted(self.coco.imgs)

        present = set(os.listdir(self.img_dir))
        missing = [self.coco.imgs[i]["file_name"] for i in self.ids
                   if not self._exists(self.coco.imgs[i]["file_name"], present)]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(self.ids)} images listed in {self.ann_file} are missing "
                f"from {self.img_dir}, e.g. {missing[:3]}; check the dataset root {self.root} "
                "or re-extract the images")

        cats = self.coco.cats
        self.num_classes = max(cats) + 1 if cats else 1
        self.class_names = [cats[i]["name"] if i in cats else "N/A" for i in range(self.num_classes)]

    def _exists(self, file_name: str, present: set[str]) -> bool:
        return file_name in present or (self.img_dir / file_name).is_file()

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (f"CocoDetection(root={str(self.root)!r}, split={self.split!r}, images={len(self)}, "
                f"num_classes={self.num_classes})")

    def load_image(self, image_id: int) -> Image.Image:
        """The RGB image of ``image_id``; FileNotFoundError names the file and the root."""
        name = self.coco.imgs[image_id]["file_name"]
        try:
            return Image.open(self.img_dir / name).convert("RGB")
        except FileNotFoundError:
            raise FileNotFoundError(f"image {name} (id {image_id}) not found in {self.img_dir} "
                                    f"(dataset root {self.root})") from None

    def target(self, image_id: int, w: int, h: int) -> dict:
        """The target of ``image_id`` for an image of size (w, h), boxes xyxy in pixels."""
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if a["id"] not in self._skipped]
        if self.drop_crowd:
            anns = [a for a in anns if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2].clamp_(0, w)
        boxes[:, 1::2].clamp_(0, h)
        # Images without width/height in the json are only checked here, as in the official code.
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        area = [a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns]
        return {
            "boxes": boxes[keep],
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)[keep],
            "area": torch.tensor(area, dtype=torch.float32)[keep],
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64)[keep],
            "image_id": torch.tensor([image_id]),
            "orig_size": torch.tensor([h, w]),
            "size": torch.tensor([h, w]),
        }

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        image = self.load_image(image_id)
        target = self.target(image_id, *image.size)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def collate(batch: list[tuple]) -> tuple[list, list[dict]]:
    """DataLoader collate: (list of (3, H_i, W_i) images, list of targets); the model pads."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def collate_padded(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Collate and pad in the loader workers: images (B, 3, H, W), mask (B, H, W) True at padding."""
    images, targets = collate(batch)
    images, mask = pad_batch(images)
    return images, mask, targets
