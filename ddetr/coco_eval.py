"""COCO box evaluation with pycocotools: build, validate and score a results list.

pycocotools reports problems with bare asserts ("Results do not correspond to current coco set")
or not at all (a NaN score silently corrupts the precision curve), and `loadRes([])` crashes.
This module checks results up front with messages that name the bad entry, and scores an empty
result set as AP 0.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# The order of COCOeval.stats (pycocotools `COCOeval.summarize`, bbox).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class CocoEvalResult(NamedTuple):
    """stats: the 12 COCO numbers by name (-1 where the set has no ground truth of that size);
    summary: pycocotools' 12-line printout."""
    stats: dict[str, float]
    summary: str


def detections_to_coco(image_ids: Sequence[int], detections: Sequence[Any],
                       label_to_category: Mapping[int, int] | None = None) -> list[dict]:
    """COCO results entries for per-image detections.

    image_ids: one COCO image id per detection set. detections: objects with `boxes` (N, 4) xyxy
    in original-image pixels, `scores` (N,), `labels` (N,) (e.g. `ddetr.postprocess.Detections`).
    label_to_category maps model labels to COCO category ids (identity when None).
    Returns [{'image_id', 'category_id', 'bbox': [x, y, w, h], 'score'}, ...].
    """
    if len(image_ids) != len(detections):
        raise ValueError(f"detections_to_coco: {len(image_ids)} image ids for {len(detections)} "
                         "detection sets; pass one id per image")
    results = []
    for image_id, det in zip(image_ids, detections):
        boxes = np.asarray(_numpy(det.boxes), dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(_numpy(det.scores), dtype=np.float64).reshape(-1)
        labels = np.asarray(_numpy(det.labels)).reshape(-1)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)  # (N, 4)
        for box, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist()):
            category = int(label) if label_to_category is None else label_to_category[int(label)]
            results.append({"image_id": int(image_id), "category_id": int(category),
                            "bbox": [round(v, 3) for v in box], "score": round(score, 5)})
    return results


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def validate_results(results: Any, coco_gt: COCO, source: str = "results") -> list[dict]:
    """Check a COCO results list against the ground truth; return it, or raise ValueError.

    Each entry needs an image id and category id present in coco_gt, a bbox of 4 finite numbers
    with non-negative width/height, and a finite score.
    """
    if not isinstance(results, list):
        raise ValueError(f"{source}: expected a JSON list of detections, got {type(results).__name__}")
    image_ids, category_ids = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    for i, r in enumerate(results):
        where = f"{source}: entry {i} ({r!r:.200})"
        if not isinstance(r, dict) or not {"image_id", "category_id", "bbox", "score"} <= r.keys():
            raise ValueError(f"{where} must be a dict with image_id, category_id, bbox, score")
        if r["image_id"] not in image_ids:
            raise ValueError(f"{where}: image_id {r['image_id']!r} is not in the ground truth "
                             f"({len(image_ids)} images); evaluate against the same split")
        if r["category_id"] not in category_ids:
            raise ValueError(f"{where}: category_id {r['category_id']!r} is not one of the ground "
                             f"truth's {sorted(category_ids)}; map model labels to category ids")
        box = r["bbox"]
        if (not isinstance(box, (list, tuple)) or len(box) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            raise ValueError(f"{where}: bbox must be 4 finite numbers [x, y, w, h]")
        if box[2] < 0 or box[3] < 0:
            raise ValueError(f"{where}: bbox has negative width/height; boxes must be [x, y, w, h], "
                             "not [x0, y0, x1, y1]")
        if not isinstance(r["score"], (int, float)) or not math.isfinite(r["score"]):
            raise ValueError(f"{where}: score must be a finite number")
    return results


def load_results(path: str | Path, coco_gt: COCO) -> list[dict]:
    """Read and validate a COCO results JSON file."""
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read COCO results file {path}: {e}") from e
    return validate_results(results, coco_gt, source=str(path))


def _empty_results(coco_gt: COCO) -> COCO:
    """A COCO object with the ground truth's images and categories and no detections (what
    `loadRes` would build if it accepted an empty list); COCOeval then scores 0 wherever there is
    ground truth to miss, and -1 where there is none."""
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                       "categories": list(coco_gt.dataset.get("categories", [])), "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def evaluate_results(coco_gt: COCO, results: list[dict] | str | Path,
                     image_ids: Iterable[int] | None = None) -> CocoEvalResult:
    """Run COCOeval (bbox) on a results list or file.

    image_ids restricts evaluation to those images (default: every image of coco_gt), e.g. when
    only part of a split was predicted. Returns the 12 stats by name and the printed summary.
    """
    if isinstance(results, (str, Path)):
        results = load_results(results, coco_gt)
    else:
        validate_results(results, coco_gt)
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):  # loadRes/evaluate print progress lines
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        ev.summarize()
    stats = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}
    return CocoEvalResult(stats, summary.getvalue())
