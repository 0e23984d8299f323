"""Training snapshots of a model, and one query's or pixel's sampling in each of them.

    snaps = list_snapshots("examples/snapshots")      # in training order, with held-out AP
    hist = sampling_history(snaps, image, "encoder", layer=2, row=token)

A snapshot folder holds float16 weight files written by ``python -m ddetr.train
--snapshot-steps`` and ``snapshots.json``, one entry per snapshot in training order:
``{"file", "step", "epoch", "images_seen", "AP", "AP50", "eval_images"}`` (``file`` relative to
the folder; the final model may live elsewhere, e.g. ``../default_model.safetensors``).

Decoder queries of a two-stage model are the encoder's top proposals, so query number q of
one snapshot is not query q of another; the history therefore follows, in each snapshot, the
query whose detected box overlaps a given box most. Encoder pixels are the same token in
every snapshot.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .box_ops import box_iou
from .checkpoint import load
from .whatif import layer_inputs

INDEX = "snapshots.json"


@dataclass
class Snapshot:
    path: Path
    step: int
    epoch: int
    images_seen: int
    ap: float | None = None
    ap50: float | None = None
    eval_images: int | None = None

    @property
    def label(self) -> str:
        name = "initialization" if self.step == 0 else f"step {self.step}"
        return name + (f" · AP {self.ap:.3f}" if self.ap is not None else "")


def list_snapshots(folder) -> list[Snapshot]:
    """The snapshots of ``folder``'s index, sorted by step; an error names a missing file."""
    folder = Path(folder)
    index = folder / INDEX
    if not index.is_file():
        raise FileNotFoundError(f"{index}: no snapshot index; write one with the snapshots' steps and AP "
                                f"(see ddetr/snapshots.py)")
    out = []
    for e in json.loads(index.read_text()):
        path = (folder / e["file"]).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"{index}: snapshot {e['file']} is missing")
        out.append(Snapshot(path, int(e["step"]), int(e.get("epoch", 0)), int(e.get("images_seen", 0)),
                            e.get("AP"), e.get("AP50"), e.get("eval_images")))
    return sorted(out, key=lambda s: s.step)


@dataclass
class SnapshotSampling:
    """One row's sampling in one snapshot: locations (M, L, P, 2) op frame, weights (M, L, P),
    reference (L, 2 | 4) op frame; row: the query (or token) followed in this snapshot, and
    for decoder rows its box (xyxy image px), score and overlap with the target box."""

    snapshot: Snapshot
    row: int
    locations: np.ndarray
    weights: np.ndarray
    reference: np.ndarray | None
    box: np.ndarray | None = None
    score: float | None = None
    iou: float | None = None


def sampling_history(snapshots: list[Snapshot], image, part: str, layer: int, row: int | None = None,
                     box=None) -> list[SnapshotSampling]:
    """Run each snapshot once on ``image`` and keep one row of ``part`` ``layer``: the encoder
    token ``row``, or the decoder query whose detection overlaps ``box`` (xyxy image px) most
    (``row`` itself when no box is given)."""
    if part == "decoder" and row is None and box is None:
        raise ValueError("a decoder history needs the query (row) or the box to follow")
    out = []
    for snap in snapshots:
        model, _ = load(snap.path)
        with torch.inference_mode():
            inp = layer_inputs(model, image, part, layer)
        r, b, sc, iou = row, None, None, None
        if part == "decoder":
            d = inp.detections
            if box is not None:
                ious = box_iou(torch.as_tensor(np.asarray(box, dtype=np.float32))[None], d.boxes)[0][0]
                k = int(ious.argmax())
                iou = float(ious[k])
            else:
                hits = (d.query_index == int(row)).nonzero()
                k = int(hits[0, 0]) if len(hits) else None
            if k is not None:
                r, b, sc = int(d.query_index[k]), d.boxes[k].numpy(), float(d.scores[k])
        ref = None if inp.references is None else inp.references[0, r].numpy()
        out.append(SnapshotSampling(snap, int(r), inp.locations[0, r].numpy(), inp.weights[0, r].numpy(), ref,
                                    b, sc, iou))
    return out
