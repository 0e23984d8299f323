"""Draw the whole set for one image (or a saved capture).

    python -m viz --image IMG [--checkpoint CKPT] --out DIR          run the model, then draw
    python -m viz --capture FILE --out DIR                           draw a saved capture, no model
    python -m viz --image IMG --untrained small --out DIR            an untrained model (to try the tool)

Writes DIR/report.html (interactive, self-contained), DIR/figures/*.{png,svg,pdf} and
DIR/capture.npz (reopen it with --capture). The only place in viz/ that runs a model.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ddetr.assets import DEFAULT_CHECKPOINT_NAME, examples_dir

DEFAULT_CHECKPOINT = examples_dir() / DEFAULT_CHECKPOINT_NAME  # the checkout's or the installed copy


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m viz", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="image file to run the model on")
    src.add_argument("--capture", help="a capture saved by Capture.save (or by this command): no model needed")
    p.add_argument("--checkpoint", help=f"checkpoint for --image (default: {DEFAULT_CHECKPOINT} when it exists); "
                   "official .pth, Hugging Face folder or our .safetensors")
    p.add_argument("--untrained", metavar="PRESET", help="use a randomly initialized model of this preset instead of a "
                   "checkpoint (figures of an untrained model; for trying the tool)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threshold", type=float, default=0.5, help="draw detections scoring at least this (default 0.5)")
    p.add_argument("--max-detections", type=int, default=None, help="at most this many detections (best first)")
    p.add_argument("--layer", type=int, default=-1, help="decoder layer to draw (default -1: the last)")
    p.add_argument("--formats", default="png,svg,pdf", help="file formats of the paper figures (default png,svg,pdf)")
    p.add_argument("--gradients", type=int, default=3, help="Figure-5 gradient maps for the best N detections "
                   "(a backward pass each; 0 to skip; needs a model, not --capture)")
    p.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    p.add_argument("--text", help="what to detect, for open-vocabulary checkpoints (Grounding DINO, OmDet-Turbo): "
                   "'cat. remote control.'")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _load_model(args):
    import ddetr

    if args.untrained:
        if args.checkpoint:
            _fail("--untrained and --checkpoint exclude each other; pick one")
        try:
            return ddetr.build_model(ddetr.preset(args.untrained)).to(args.device).eval()
        except ValueError as e:
            _fail(str(e))
    ckpt = args.checkpoint or (str(DEFAULT_CHECKPOINT) if DEFAULT_CHECKPOINT.exists() else None)
    if ckpt is None:
        _fail(f"no checkpoint: pass --checkpoint PATH, put the default model at {DEFAULT_CHECKPOINT}, "
              "or use --untrained small to see the figures of an untrained model")
    from ddetr import load

    try:
        model, report = load(ckpt, device=args.device)
    except (OSError, ValueError) as e:
        _fail(f"cannot load checkpoint {ckpt}: {e}")
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    formats = tuple(f.strip().lower() for f in args.formats.split(",") if f.strip())
    from .export import FORMATS

    bad = [f for f in formats if f not in FORMATS]
    if bad:
        _fail(f"unknown formats {bad}; choose from {', '.join(FORMATS)}")
    out = Path(args.out)
    gradients = None
    if args.capture:
        from ddetr.capture import Capture

        try:
            capture = Capture.load(args.capture)
        except (OSError, ValueError) as e:
            _fail(str(e))
        if args.gradients and not args.quiet:
            print("note: gradient maps (Figure 5) need the model; not drawn for --capture", file=sys.stderr)
        name = Path(args.capture).name
    else:
        from PIL import Image

        from ddetr.capture import capture as open_capture
        from ddetr.preprocess import ImageError

        if not os.path.exists(args.image):
            _fail(f"no image at {args.image}")
        try:
            image = Image.open(args.image)
            image.load()
        except OSError as e:
            _fail(f"cannot read image {args.image}: {e}")
        model = _load_model(args)
        prompt = {}
        if getattr(model, "needs_text", False):
            if not args.text:
                _fail("this checkpoint detects what a text prompt names: pass --text 'cat. dog.'")
            prompt = {"text": args.text}
        elif args.text:
            _fail("--text is for open-vocabulary checkpoints; this one has a fixed set of classes")
        try:
            with open_capture(model) as session:
                model.predict(image, **prompt)
        except (ImageError, ValueError) as e:
            _fail(str(e))
        capture = session.captures[0]
        out.mkdir(parents=True, exist_ok=True)
        capture.save(out / "capture.npz")
        name = Path(args.image).name
        if args.gradients > 0 and getattr(model, "family", None) is not None:  # a transformers detector (ddetr.hf_family)
            if not args.quiet:
                print("note: gradient maps (Figure 5) are drawn for Deformable DETR checkpoints only", file=sys.stderr)
        elif args.gradients > 0:
            from tqdm.auto import tqdm

            from ddetr.gradients import box_gradients

            from .selection import detection_queries

            pairs = detection_queries(capture, args.threshold)[: min(args.gradients, args.max_detections or args.gradients)]
            gradients = {q: box_gradients(model, image, q) for _, q in tqdm(pairs, desc="gradients", disable=args.quiet)}
    from .bundle import write_bundle

    written = write_bundle(capture, out, args.threshold, args.layer, formats, args.max_detections, gradients,
                           title=f"Deformable DETR explorer: {name}", progress=not args.quiet)
    n = sum(len(v) for v in written.values())
    if not args.quiet:
        print(f"wrote {n} files to {out} (open {written['report'][0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
