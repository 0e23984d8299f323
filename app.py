"""Deformable DETR Explorer: the launcher. The page is ``explorer.page.build_demo``; its tabs are
the registry in ``explorer.views``; the session state is owned by ``explorer.session.Explorer``.

    python app.py                               # the shipped model, http://127.0.0.1:7860
    python app.py --checkpoint r50.pth          # any format ddetr.checkpoint.load knows
    python app.py --checkpoint-dir runs/        # a dropdown of the checkpoints found there
    python app.py --random-weights              # an untrained `small` model, clearly labelled

The model runs once per image under ``ddetr.capture``; every change of view re-renders from
that capture (kept server-side in ``explorer.state.SessionStore``). Clicks arrive as
``gr.Image.select`` events, which ``gradio_client`` cannot send, so each select handler is a
thin wrapper over a plain endpoint taking (x, y) in original-image pixels (``/click``).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
# Before torch starts OpenMP: idle OpenMP threads sleep instead of spinning. A server shares its
# cores (with other requests, other programs); on a busy 2-core machine spinning teams made the
# small model's forward 30x slower (3 s instead of 0.1 s, bench/app.py). Override in the environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gradio as gr  # noqa: E402

from explorer.examples import find_examples  # noqa: E402,F401
from explorer.models import LoadedModel, find_checkpoints  # noqa: E402
from explorer.page import CSS, build_demo  # noqa: E402,F401
from explorer.state import UserError  # noqa: E402
from explorer.status import plain_header  # noqa: E402
from explorer.views import TABS  # noqa: E402,F401

log = logging.getLogger("ddetr.app")
ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = ROOT / "examples" / "default_model.safetensors"
MAX_FILE_SIZE = "25mb"


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


GET_MODEL = """The default model {path} is missing.
  - It ships with the repository: restore it (e.g. `git checkout -- examples/`), or
  - train one: `python -m ddetr.data.synthetic --out data/synthetic --train 5000 --val 500` then
    `python -m ddetr.train --coco-dir data/synthetic --preset small --out runs/small`, and start with
    `python app.py --checkpoint runs/small/model.safetensors`, or
  - load any Deformable DETR checkpoint: `python app.py --checkpoint PATH` (official .pth,
    a transformers folder, ours .safetensors), or
  - explore an untrained model: `python app.py --random-weights` (labelled as such on the page)."""


# ----------------------------------------------------------------------------- models
def random_model(seed: int = 0, preset: str = "small") -> LoadedModel:
    """A randomly initialized model with the synthetic classes, labelled as random everywhere."""
    import torch

    import ddetr
    from ddetr.checkpoint import LoadReport
    from ddetr.data.synthetic import SYNTHETIC_CLASSES

    names = ("N/A", *SYNTHETIC_CLASSES)  # category id i + 1 is SYNTHETIC_CLASSES[i], as in training
    cfg = ddetr.preset(preset, num_classes=len(names), class_names=names)
    torch.manual_seed(seed)
    model = ddetr.build_model(cfg)
    # Every tensor is listed as missing: the report then says "RANDOMLY INITIALIZED (N tensors)".
    report = LoadReport("random", f"RANDOM WEIGHTS ({preset}, seed {seed})", cfg.variant, cfg, cfg.num_classes,
                        "the synthetic shapes (the model is untrained)", missing_keys=list(model.state_dict()),
                        notes=["randomly initialized (--random-weights): detections and attention are meaningless"],
                        strict=False)
    return LoadedModel("random weights", model, report, random_weights=True)


def startup_model(args) -> LoadedModel:
    """The model named on the command line; never a silent fallback (DESIGN.md, principle 12)."""
    from ddetr.checkpoint import load

    if args.random_weights:
        lm = random_model(args.seed)
        lm.model.to(args.device)
        return lm
    path = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    if not path.exists():
        if args.checkpoint:
            raise SystemExit(f"--checkpoint {args.checkpoint}: no such file or folder")
        raise SystemExit(GET_MODEL.format(path=_shown(path)))
    try:
        model, report = load(path, device=args.device)
    except ValueError as e:
        raise SystemExit(f"cannot load {path}: {e}")
    return LoadedModel(path.name, model, report)


def launch_kwargs(args=None, **overrides) -> dict:
    """Secure defaults: localhost, bounded uploads, no monitoring / run history / MCP / share."""
    kw = dict(server_name=getattr(args, "host", "127.0.0.1"), server_port=getattr(args, "port", 7860),
              max_file_size=getattr(args, "max_file_size", MAX_FILE_SIZE), enable_monitoring=False,
              run_history=False, share=False, mcp_server=False, show_error=True, ssr_mode=False,
              footer_links=["api", "settings"], css=CSS)
    kw.update(overrides)
    return kw


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Deformable DETR Explorer (Gradio)")
    ap.add_argument("--checkpoint", help="checkpoint to load (official .pth, transformers folder, ours .safetensors); "
                                         f"default {_shown(DEFAULT_CHECKPOINT)}")
    ap.add_argument("--checkpoint-dir", help="offer the checkpoints found in this folder in a dropdown")
    ap.add_argument("--random-weights", action="store_true",
                    help="start with a randomly initialized `small` model (clearly labelled) instead of a checkpoint")
    ap.add_argument("--seed", type=int, default=0, help="seed of --random-weights")
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind (default: localhost only)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    ap.add_argument("--max-file-size", default=MAX_FILE_SIZE, help="upload limit, e.g. 25mb")
    ap.add_argument("--max-sessions", type=int, default=64, help="sessions kept in memory (LRU)")
    ap.add_argument("--max-memory-mb", type=int, default=1024, help="memory for all sessions' captures (LRU)")
    args = ap.parse_args(argv)
    if args.random_weights and args.checkpoint:
        ap.error("--random-weights and --checkpoint exclude each other")
    return args


def make_demo(args) -> gr.Blocks:
    startup = startup_model(args)
    checkpoints = {}
    if args.checkpoint_dir:
        try:
            checkpoints = find_checkpoints(args.checkpoint_dir)
        except UserError as e:
            raise SystemExit(str(e))
        if not checkpoints:
            print(f"note: no checkpoints found in {args.checkpoint_dir}", file=sys.stderr)
    return build_demo(startup, checkpoints=checkpoints, device=args.device, max_sessions=args.max_sessions,
                      max_bytes=args.max_memory_mb << 20)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    demo = make_demo(args)
    print(plain_header(demo.explorer.registry.get(demo.explorer.registry.startup_name)))
    demo.launch(**launch_kwargs(args))


def __getattr__(name: str):
    # ``demo`` at module level as in Gradio's demo/*/run.py (``gradio app.py`` reload mode finds
    # it), built on first access only: importing app.py in tests must not load the checkpoint.
    if name == "demo":
        d = make_demo(parse_args([]))
        globals()["demo"] = d
        return d
    raise AttributeError(name)


if __name__ == "__main__":
    main()
