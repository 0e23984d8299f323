"""Dataset-level inspection of a checkpoint: attention statistics, COCO scores, worst images.

    python -m ddetr.inspect --checkpoint CKPT --coco-dir DIR [--split val] [--max-images N] --out OUT
    python -m ddetr.inspect ... --precision bf16          # bfloat16 dense layers (ddetr.precision)
    torchrun --nproc_per_node 2 -m ddetr.inspect ...      # images sharded, one result

Every image runs alone through ``model.predict`` under a full capture (so the result does not
depend on how images are batched or sharded) and is folded into sums: ``AttentionStats`` per
layer / head / level (mass per level, offset lengths in level and image pixels, entropy, mass
outside the image, head direction and distance), decoder level mass per object size, COCO
results and per-image errors (missed objects, confident false positives, with the queries to
look at). Under ``torchrun`` each process takes every K-th image and rank 0 gathers the sums
(gloo on CPU, NCCL on GPU: ``--device cuda`` uses the GPU of LOCAL_RANK), so ``stats.json``
equals the single-process one up to float rounding. Writes ``OUT/stats.json`` and an offline
``OUT/report.html`` (``ddetr.inspect_report``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .precision import PRECISIONS, bf16_speed_note

SIZE_BUCKETS = (("small", 32 ** 2), ("medium", 96 ** 2), ("large", float("inf")))  # COCO's area ranges
SCORE_THRESHOLD = 0.3  # default: a detection a user would keep (the small model scores true objects >= 0.3)
IOU_MATCH = 0.5


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes a (N, 4) and b (K, 4) -> (N, K)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-12)


def image_errors(det, target: dict, names, threshold: float = SCORE_THRESHOLD) -> dict:
    """Greedy matching of one image's detections (score >= threshold, best first) to its
    objects (same class, IoU >= 0.5; crowd regions absorb detections without counting).

    Returns missed objects (each with the query that came closest: best IoU at any score),
    confident false positives (with their query), the matched pairs (object index, query) and
    an error score = missed + sum of false-positive scores.
    """
    boxes, scores = det.boxes.numpy().astype(np.float64), det.scores.numpy().astype(np.float64)
    labels, queries = det.labels.numpy(), det.query_index.numpy()
    gt, gl = target["boxes"].numpy().astype(np.float64), target["labels"].numpy()
    crowd = target["iscrowd"].numpy().astype(bool)
    iou = box_iou(boxes, gt) if len(boxes) and len(gt) else np.zeros((len(boxes), len(gt)))
    taken, matched, fps = np.zeros(len(gt), bool), [], []
    for d in np.flatnonzero(scores >= threshold):  # detections come sorted by score
        cand = np.flatnonzero((gl == labels[d]) & ~taken & ~crowd & (iou[d] >= IOU_MATCH))
        if cand.size:
            g = int(cand[np.argmax(iou[d, cand])])
            taken[g] = True
            matched.append((g, int(queries[d])))
        elif not (crowd & (iou[d] >= IOU_MATCH)).any():
            fps.append({"box": np.round(boxes[d], 1).tolist(), "label": names[labels[d]], "score": round(float(scores[d]), 4),
                        "query": int(queries[d])})
    missed = []
    for g in np.flatnonzero(~taken & ~crowd):
        best = int(np.argmax(iou[:, g])) if len(boxes) else None
        missed.append({"box": np.round(gt[g], 1).tolist(), "label": names[gl[g]],
                       "closest_query": None if best is None else int(queries[best]),
                       "closest_iou": 0.0 if best is None else round(float(iou[best, g]), 4),
                       "closest_score": 0.0 if best is None else round(float(scores[best]), 4)})
    error = len(missed) + sum(f["score"] for f in fps)
    return {"missed": missed, "false_positives": fps, "matched": matched, "error": round(error, 4)}


def size_bucket(area: float) -> str:
    return next(name for name, limit in SIZE_BUCKETS if area < limit)


def level_mass_of_query(capture, layer: int, query: int) -> np.ndarray:
    """(L,) share of a decoder query's attention mass on each level, mean over heads."""
    w = capture.decoder_points(layer, query)["weights"].astype(np.float64)  # (M, L, P)
    w = w.sum(-1)
    return (w / np.maximum(w.sum(-1, keepdims=True), 1e-12)).mean(0)


class Shard:
    """What one process gathers: attention sums, per-size level mass sums, COCO results, errors."""

    def __init__(self):
        from .attention_stats import AttentionStats

        self.stats = AttentionStats()
        self.by_size: dict[str, dict] = {}  # bucket -> {"count": n, "decoder/i": sums (L,)}
        self.results: list[dict] = []
        self.images: list[dict] = []

    def add(self, model, dataset, image_id: int, label_to_category, threshold: float = SCORE_THRESHOLD,
            precision: str = "fp32") -> None:
        from .capture import capture
        from .coco_eval import detections_to_coco

        image = dataset.load_image(image_id)
        target = dataset.target(image_id, *image.size)
        with capture(model, max_bytes=None, dtype=torch.float32) as s:
            det = model.predict(image, precision=precision)[0]
        c = s.captures[0]
        self.stats.add(c)
        self.results += [r for r in detections_to_coco([image_id], [det]) if r["category_id"] in label_to_category]
        err = image_errors(det, target, model.cfg.class_names, threshold)
        areas = target["area"].numpy()
        for g, q in err.pop("matched"):
            b = self.by_size.setdefault(size_bucket(float(areas[g])), {"count": 0})
            b["count"] += 1
            for layer in c.decoder_layers:
                key = f"decoder/{layer}"
                b[key] = b.get(key, 0.0) + level_mass_of_query(c, layer, q)
        self.images.append({"image_id": int(image_id), "file_name": dataset.coco.imgs[image_id]["file_name"],
                            "objects": int(len(target["boxes"])), **err})

    def to_state(self) -> dict:
        by_size = {k: {n: (v.tolist() if isinstance(v, np.ndarray) else v) for n, v in b.items()}
                   for k, b in self.by_size.items()}
        return {"stats": self.stats.to_state(), "by_size": by_size, "results": self.results, "images": self.images}


def merge_states(states: list[dict]) -> dict:
    """Shard states (rank order) -> merged attention stats, size sums, results and images."""
    from .attention_stats import AttentionStats

    stats = AttentionStats.from_state(states[0]["stats"])
    for s in states[1:]:
        stats = stats.merge(AttentionStats.from_state(s["stats"]))
    by_size: dict[str, dict] = {}
    for s in states:
        for k, b in s["by_size"].items():
            dst = by_size.setdefault(k, {})
            for n, v in b.items():
                dst[n] = dst.get(n, 0) + (np.asarray(v) if isinstance(v, list) else v)
    results = sorted((r for s in states for r in s["results"]), key=lambda r: (r["image_id"], -r["score"]))
    images = sorted((i for s in states for i in s["images"]), key=lambda i: i["image_id"])
    return {"stats": stats, "by_size": by_size, "results": results, "images": images}


def head_specialisation(stats) -> dict:
    """Per layer and head: where it looks (angle in degrees, image frame, 0 = right, 90 = down),
    how consistently (0..1) and how far (mean offset in image pixels)."""
    out = {}
    for part, i in stats.keys():
        s = stats.layer(part, i)
        if "direction" not in s:
            continue
        d, mass = s["direction"], s["mass"]
        dist_px = (s["offset_image_px"] * mass).sum(-1)  # (M,) mass-weighted over levels
        out[f"{part}/{i}"] = [{"head": h, "angle_deg": round(float(np.degrees(np.arctan2(d[h, 1], d[h, 0]))), 3),
                               "consistency": round(float(np.linalg.norm(d[h])), 6),
                               "distance_px": round(float(dist_px[h]), 4)} for h in range(len(d))]
    return out


def build_stats(merged: dict, model, dataset, checkpoint: str, world: int, worst: int,
                threshold: float = SCORE_THRESHOLD, precision: str = "fp32") -> dict:
    from .coco_eval import evaluate_results
    from .diagnostics import diagnose

    stats, ids = merged["stats"], [i["image_id"] for i in merged["images"]]
    coco = evaluate_results(dataset.coco, merged["results"], image_ids=ids)
    by_size = {}
    for name, _ in SIZE_BUCKETS:
        b = merged["by_size"].get(name)
        if b:
            by_size[name] = {"objects": int(b["count"]),
                             **{k: np.round(np.asarray(v) / b["count"], 6).tolist() for k, v in b.items() if k != "count"}}
    ranked = sorted(merged["images"], key=lambda i: (-i["error"], i["image_id"]))
    return {
        "checkpoint": checkpoint, "dataset": {"root": str(dataset.root), "split": dataset.split},
        "images": len(ids), "processes": world, "variant": model.cfg.variant, "precision": precision,
        "coco": {"stats": {k: round(v, 6) for k, v in coco.stats.items()}, "summary": coco.summary},
        "attention": stats.summary(), "heads": head_specialisation(stats),
        "level_mass_by_object_size": by_size,
        "errors": {"missed": sum(len(i["missed"]) for i in merged["images"]),
                   "false_positives": sum(len(i["false_positives"]) for i in merged["images"]),
                   "score_threshold": threshold},
        "worst_images": [i for i in ranked[:worst] if i["error"] > 0],
        "diagnostics": diagnose(model, stats).to_json(checkpoint),
    }


def _parse(argv):
    ap = argparse.ArgumentParser(prog="ddetr-inspect", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--coco-dir", required=True, help="dataset root: {split}2017/ and annotations/")
    ap.add_argument("--split", default="val")
    ap.add_argument("--max-images", type=int, help="the first N images of the split")
    ap.add_argument("--out", required=True, help="folder for stats.json and report.html")
    ap.add_argument("--worst", type=int, default=20, help="worst images to list")
    ap.add_argument("--score-threshold", type=float, default=SCORE_THRESHOLD,
                    help="detections at or above this score count as kept (for missed / false positives)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: the GPU of LOCAL_RANK)")
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="bf16: the dense layers in bfloat16, geometry in float32 (ddetr.precision)")
    args = ap.parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        ap.error(f"--max-images must be >= 1, got {args.max_images}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible; use --device cpu")
    return args


def main(argv=None) -> int:
    args = _parse(argv)
    import ddetr

    from .checkpoint import CheckpointError
    from .data.coco import CocoDetection
    from .inspect_report import write_report
    from .train import setup_distributed  # the same torchrun environment as training

    rank, world, device = setup_distributed(args.device)
    note = bf16_speed_note(device) if args.precision == "bf16" else None
    if note and rank == 0:
        print(f"note: --precision bf16 on {device}: {note}", file=sys.stderr)
    try:
        try:
            model, _ = ddetr.load(args.checkpoint, device=device)
            dataset = CocoDetection(args.coco_dir, args.split)
        except (CheckpointError, FileNotFoundError, ValueError) as e:
            print(f"ddetr-inspect: {e}", file=sys.stderr)
            return 2
        ids = list(dataset.ids)[:args.max_images]
        if not ids:
            print(f"ddetr-inspect: {args.coco_dir} split {args.split!r} has no images", file=sys.stderr)
            return 2
        known = set(dataset.coco.getCatIds())
        shard = Shard()
        mine = ids[rank::world]
        for image_id in tqdm(mine, desc=f"inspect ({world} process{'es' if world > 1 else ''})", unit="img",
                             disable=rank != 0, dynamic_ncols=True):
            shard.add(model, dataset, image_id, known, args.score_threshold, args.precision)
        states = [shard.to_state()]
        if world > 1:
            states = [None] * world
            dist.all_gather_object(states, shard.to_state())
        if rank == 0:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            stats = build_stats(merge_states(states), model, dataset, args.checkpoint, world, args.worst,
                                args.score_threshold, args.precision)
            (out / "stats.json").write_text(json.dumps(stats, indent=1))
            write_report(stats, out / "report.html")
            print(f"{stats['images']} images, AP {stats['coco']['stats']['AP']:.3f}; wrote {out / 'stats.json'} "
                  f"and {out / 'report.html'}")
        return 0
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
