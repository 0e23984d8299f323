"""COCO box evaluation of a Deformable DETR on a COCO-layout dataset.

    python -m ddetr.evaluate --checkpoint runs/small/model.safetensors --coco-dir data/synthetic
    python -m ddetr.evaluate --checkpoint r50_deformable_detr-checkpoint.pth --coco-dir data/coco \
        --device cuda --out runs/eval_official
    python -m ddetr.evaluate --checkpoint ... --coco-dir ... --precision bf16   # bfloat16 dense layers

Images go through `model.predict` exactly as a user's would (official eval resize, top-100 over
queries x classes, no score threshold), so the number measures the shipped inference path.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from ddetr.openmp import sleep_when_idle

if __name__ == "__main__":  # an entry point: before torch is imported (see ddetr/openmp.py)
    sleep_when_idle()

import torch
from tqdm import tqdm

from ddetr.coco_eval import CocoEvalResult, detections_to_coco, evaluate_results
from ddetr.data.coco import CocoDetection
from ddetr.precision import PRECISIONS, bf16_speed_note


class _Images(torch.utils.data.Dataset):
    """(image_id, PIL image) pairs, so a DataLoader can decode JPEGs in worker processes."""

    def __init__(self, dataset: CocoDetection, ids: list[int]):
        self.dataset, self.ids = dataset, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return self.ids[i], self.dataset.load_image(self.ids[i])


def _collate(batch):
    ids, images = zip(*batch)
    return list(ids), list(images)


def predict_dataset(model: torch.nn.Module, dataset: CocoDetection, batch_size: int = 8,
                    min_size: int | None = None, max_size: int | None = None,
                    max_images: int | None = None, workers: int = 0,
                    progress: bool = True, precision: str = "fp32") -> tuple[list[int], list[Any]]:
    """Run `model.predict` over the dataset's images.

    min_size / max_size override the model config's inference resize for this run only;
    precision ("fp32" or "bf16") is passed to `model.predict`.
    Returns (image ids, Detections per image), in dataset order.
    """
    ids = list(dataset.ids)[:max_images]
    loader = torch.utils.data.DataLoader(_Images(dataset, ids), batch_size=batch_size,
                                         num_workers=workers, collate_fn=_collate)
    original = model.cfg
    if min_size is not None or max_size is not None:
        sizes = {k: v for k, v in (("min_size", min_size), ("max_size", max_size)) if v is not None}
        model.cfg = dataclasses.replace(original, **sizes)  # validated by DDETRConfig
    out_ids, detections = [], []
    try:
        for batch_ids, images in tqdm(loader, desc="evaluate", unit="batch", disable=not progress,
                                      dynamic_ncols=True):
            detections.extend(model.predict(images, precision=precision))
            out_ids.extend(batch_ids)
    finally:
        model.cfg = original
    return out_ids, detections


def evaluate(model: torch.nn.Module, data: CocoDetection | str | Path, split: str = "val",
             batch_size: int = 8, min_size: int | None = None, max_size: int | None = None,
             max_images: int | None = None, workers: int = 0, out_dir: str | Path | None = None,
             progress: bool = True, verbose: bool = False, precision: str = "fp32") -> dict[str, float]:
    """COCO bbox stats of `model` on a dataset (or a COCO-layout directory and split).

    The model runs on whatever device it is on, in ``precision`` ("fp32" or "bf16", see
    ``ddetr.precision``). With out_dir, writes `results_{split}.json`
    (COCO results format) and `stats_{split}.json` there. verbose prints pycocotools' summary.
    Returns the 12 COCO stats by name (AP, AP50, ..., ARl); see `ddetr.coco_eval.STAT_NAMES`.
    """
    dataset = data if isinstance(data, CocoDetection) else CocoDetection(data, split)
    if model.cfg.num_classes != dataset.num_classes:
        # Labels are category ids (ddetr.data.coco): a model trained on other classes would be
        # scored against the wrong names without any error, so say so.
        print(f"warning: the model has {model.cfg.num_classes} classes, {dataset!r} has "
              f"{dataset.num_classes}; labels are read as category ids", file=sys.stderr)
    ids, detections = predict_dataset(model, dataset, batch_size, min_size, max_size,
                                      max_images, workers, progress, precision)
    known = set(dataset.coco.getCatIds())
    results = [r for r in detections_to_coco(ids, detections) if r["category_id"] in known]
    result: CocoEvalResult = evaluate_results(dataset.coco, results, image_ids=ids)
    if verbose:
        print(result.summary, end="")
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"results_{dataset.split}.json").write_text(json.dumps(results))
        (out / f"stats_{dataset.split}.json").write_text(json.dumps(
            {"stats": result.stats, "images": len(ids), "detections": len(results),
             "dataset": str(dataset.root), "split": dataset.split, "precision": precision}, indent=2))
    return result.stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="COCO bbox evaluation of a Deformable DETR checkpoint.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="any format ddetr.checkpoint.load reads")
    ap.add_argument("--coco-dir", required=True, help="dataset root: {split}2017/ and annotations/")
    ap.add_argument("--split", default="val")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", help="folder for stats_{split}.json and results_{split}.json")
    ap.add_argument("--min-size", type=int, help="inference shorter side (default: the model's)")
    ap.add_argument("--max-size", type=int, help="inference longer-side cap (default: the model's)")
    ap.add_argument("--max-images", type=int, help="evaluate only the first N images (quick check)")
    ap.add_argument("--workers", type=int, default=2, help="image decoding processes")
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="bf16: backbone, projections and FFNs in bfloat16; boxes and sampling in float32")
    args = ap.parse_args(argv)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible; use --device cpu")
    from ddetr.checkpoint import load  # any supported checkpoint: official .pth, HF folders, ours

    model, report = load(args.checkpoint)
    print(report, file=sys.stderr)
    model.to(args.device).eval()
    note = bf16_speed_note(args.device) if args.precision == "bf16" else None
    if note:
        print(f"note: --precision bf16 on {args.device}: {note}", file=sys.stderr)
    dataset = CocoDetection(args.coco_dir, args.split)
    evaluate(model, dataset, batch_size=args.batch_size, min_size=args.min_size,
             max_size=args.max_size, max_images=args.max_images, workers=args.workers,
             out_dir=args.out, verbose=True, precision=args.precision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
