"""Diagnose a checkpoint: ``python -m ddetr.diagnose --checkpoint PATH [--images DIR]
[--max-images N] [--json OUT] [--html OUT]``.

Loads any supported checkpoint, runs the weight checks and, over a few images (the shipped
examples by default), the behaviour checks of ``ddetr.diagnostics``; prints the findings. The
JSON file is a contract for tools outside the project::

    {"checkpoint": str, "verdict": "ok" | "warning" | "problem",
     "findings": [{"check": str, "severity": "ok" | "warning" | "problem",
                   "module": "encoder" | "decoder" | "model", "layer": int | null,
                   "head": int | null, "level": int | null, "value": float, "message": str}]}

Exit status 0 when the diagnosis ran, whatever the verdict; 2 with a message on stderr when
it could not (unreadable checkpoint, no images, unwritable output).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class DiagnoseError(ValueError):
    """Something the command cannot work with; the message names it and the fix."""


def read_images(folder, max_images: int | None = None) -> list[np.ndarray]:
    """Images of ``folder`` (sorted by name) as (H, W, 3) uint8 arrays."""
    d = Path(folder)
    if not d.is_dir():
        raise DiagnoseError(f"--images {folder}: no such folder")
    paths = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:max_images]
    if not paths:
        raise DiagnoseError(f"--images {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                out.append(np.array(im.convert("RGB")))
        except (UnidentifiedImageError, OSError) as e:
            raise DiagnoseError(f"{p.name}: not a readable image ({e}); remove it or pass another --images folder") from None
    return out


def default_images(max_images: int | None = None) -> list[np.ndarray]:
    """The shipped examples: synthetic scenes first, then the photographs."""
    from .assets import EXAMPLE_GROUPS, example_dirs

    dirs = example_dirs()
    if not dirs:
        raise DiagnoseError("the example images are not installed; pass --images DIR with a few images "
                            "the model is meant for")
    imgs = [img for g in EXAMPLE_GROUPS if g in dirs for img in read_images(dirs[g])]
    return imgs[:max_images]


def run(checkpoint: str, images: list, device: str = "cpu"):
    """(Diagnostics, LoadReport) of ``checkpoint`` over ``images``."""
    import ddetr
    from .diagnostics import diagnose, measure

    model, report = ddetr.load(checkpoint, device=device)
    return diagnose(model, measure(model, images)), report


def _parse(argv):
    ap = argparse.ArgumentParser(prog="ddetr-diagnose", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="any format ddetr.load reads")
    ap.add_argument("--images", help="folder of images (default: the shipped examples)")
    ap.add_argument("--max-images", type=int, default=10, help="images to aggregate over")
    ap.add_argument("--json", help="write the findings as JSON here")
    ap.add_argument("--html", help="write a self-contained HTML page here")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.max_images < 1:
        ap.error(f"--max-images must be >= 1, got {args.max_images}")
    return args


def main(argv=None) -> int:
    args = _parse(argv)
    from .checkpoint import CheckpointError

    try:
        images = read_images(args.images, args.max_images) if args.images else default_images(args.max_images)
        for out in (args.json, args.html):
            if out and not Path(out).resolve().parent.is_dir():
                raise DiagnoseError(f"{out}: its folder does not exist; create it first")
        diag, report = run(args.checkpoint, images, args.device)
    except (CheckpointError, DiagnoseError) as e:
        print(f"ddetr-diagnose: {e}", file=sys.stderr)
        return 2
    name = os.path.basename(os.path.normpath(args.checkpoint))
    from .checkpoint_report import class_summary

    print(f"{name}: {report.variant}, {class_summary(report.config)}; {len(images)} image(s)")
    print(diag)
    try:
        if args.json:
            Path(args.json).write_text(json.dumps(diag.to_json(args.checkpoint), indent=2))
        if args.html:
            Path(args.html).write_text(diag.to_html(name, str(report).replace(args.checkpoint, name)))
    except OSError as e:
        print(f"ddetr-diagnose: cannot write the output ({e.strerror}: {e.filename})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
