"""The explorer's command line: which model to start with, how to serve it, and who may log in.

    python app.py                               # the shipped model, http://127.0.0.1:7860
    python app.py --checkpoint r50.pth          # any format ddetr.checkpoint.load knows
    python app.py --checkpoint-dir runs/        # a dropdown of the checkpoints found there
    python app.py --random-weights              # an untrained `small` model, clearly labelled
    python app.py --inspect runs/inspect        # a ddetr.inspect report's worst images, to drill into
    python app.py --host 0.0.0.0 --auth-file users.txt   # on the network, behind a login
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from explorer.models import LoadedModel, find_checkpoints
from explorer.state import UserError
from ddetr.assets import DEFAULT_CHECKPOINT_NAME, examples_dir
from explorer import serving

log = logging.getLogger("ddetr.app")
ROOT = Path(__file__).resolve().parent.parent
# The checkout's examples/ or, installed, the package's copy (ddetr.assets finds either).
DEFAULT_CHECKPOINT = examples_dir() / DEFAULT_CHECKPOINT_NAME
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
    from ddetr import load  # also transformers detectors (ddetr.hf_family)

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


# ----------------------------------------------------------------------------- serving
def launch_kwargs(args=None, **overrides) -> dict:
    """Secure defaults: localhost, bounded uploads, no monitoring / run history / MCP / share;
    Gradio's login when ``--auth`` / ``--auth-file`` gave credentials."""
    from explorer.hover import HOVER_JS
    from explorer.page import CSS  # the page's style and script: launch() is where Gradio 6 takes them

    credentials = getattr(args, "credentials", None)
    kw = dict(server_name=getattr(args, "host", "127.0.0.1"), server_port=getattr(args, "port", 7860),
              max_file_size=getattr(args, "max_file_size", MAX_FILE_SIZE), enable_monitoring=False,
              run_history=False, share=False, mcp_server=False, show_error=True, ssr_mode=False,
              footer_links=["api", "settings"], css=CSS, head=HOVER_JS, auth=credentials or None,
              auth_message="Deformable DETR Explorer: log in with an account the server was started with."
              if credentials else None)
    kw.update(overrides)
    return kw


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Deformable DETR Explorer (Gradio)")
    ap.add_argument("--checkpoint", help="checkpoint to load (official .pth, transformers folder, ours .safetensors; "
                                         "also a transformers RT-DETR, Grounding DINO, ... folder: ddetr.hf_family); "
                                         f"default {_shown(DEFAULT_CHECKPOINT)}")
    ap.add_argument("--checkpoint-dir", help="offer the checkpoints found in this folder in a dropdown")
    ap.add_argument("--inspect", metavar="DIR", help="a folder written by `python -m ddetr.inspect`: its worst "
                    "images join the examples (group 'worst') to drill into")
    ap.add_argument("--random-weights", action="store_true",
                    help="start with a randomly initialized `small` model (clearly labelled) instead of a checkpoint")
    ap.add_argument("--seed", type=int, default=0, help="seed of --random-weights")
    ap.add_argument("--host", default="127.0.0.1",
                    help="interface to bind (default: localhost only; anything else needs --auth or --auth-file)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--auth", action="append", default=[], metavar="USER:PASSWORD",
                    help="require a login with this account (repeatable)")
    ap.add_argument("--auth-file", metavar="FILE",
                    help="require a login; FILE holds one `user:password` per line (# starts a comment)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="fp32 (default), or bf16: the dense parts in bfloat16, sampling and boxes in float32 "
                         "(ddetr.precision; our own model only)")
    ap.add_argument("--max-file-size", default=MAX_FILE_SIZE, help="upload limit, e.g. 25mb")
    ap.add_argument("--max-sessions", type=int, default=64, help="sessions kept in memory (LRU)")
    ap.add_argument("--max-memory-mb", type=int, default=1024, help="memory for all sessions' captures (LRU)")
    args = ap.parse_args(argv)
    if args.random_weights and args.checkpoint:
        ap.error("--random-weights and --checkpoint exclude each other")
    try:
        args.credentials = [serving.parse_account(a, where="--auth") for a in args.auth]
        if args.auth_file:
            args.credentials += serving.read_accounts(args.auth_file)
    except serving.AccountError as e:
        ap.error(str(e))
    return args


def make_demo(args):
    from explorer.page import build_demo

    startup = startup_model(args)
    checkpoints = {}
    if args.checkpoint_dir:
        try:
            checkpoints = find_checkpoints(args.checkpoint_dir)
        except UserError as e:
            raise SystemExit(str(e))
        if not checkpoints:
            print(f"note: no checkpoints found in {args.checkpoint_dir}", file=sys.stderr)
    from ddetr.model import DeformableDETR

    if args.precision != "fp32" and not isinstance(startup.model, DeformableDETR):
        raise SystemExit(f"--precision {args.precision}: only this project's Deformable DETR runs in bf16; "
                         f"{startup.name} is a transformers model: start without --precision")
    return build_demo(startup, examples=inspected_examples(args.inspect), checkpoints=checkpoints,
                      device=args.device, max_sessions=args.max_sessions, max_bytes=args.max_memory_mb << 20,
                      precision=args.precision)


def inspected_examples(folder) -> dict | None:
    """The shipped examples plus, with --inspect DIR, the inspection's worst images (group
    'worst'), listed on the console with what went wrong and the queries to look at."""
    if not folder:
        return None
    from ddetr.inspect_report import read_stats, worst_image_entries
    from explorer.examples import find_examples

    try:
        entries = worst_image_entries(read_stats(folder))
    except ValueError as e:
        raise SystemExit(f"--inspect {folder}: {e}")
    ex = find_examples()
    taken = {n for items in ex.values() for n in items}
    worst = {}
    for e in entries:
        path = Path(e["path"])
        if not path.is_file():
            print(f"note: --inspect: {path.name} is not at {path.parent} (moved dataset?); skipped", file=sys.stderr)
            continue
        name = path.name if path.name not in taken else f"worst-{e['image_id']}-{path.name}"
        worst[name] = path
        print(f"worst: {name}: {e['summary']}; queries {e['queries']}", file=sys.stderr)
    if not worst:
        raise SystemExit(f"--inspect {folder}: none of its worst images is on this machine")
    ex["worst"] = worst
    return ex


def main(argv=None) -> None:
    from explorer.status import plain_header

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    warning = serving.exposure_warning(args.host, login=bool(args.credentials))
    if warning:
        print(warning, file=sys.stderr)
    if args.precision == "bf16":
        from ddetr.precision import bf16_speed_note

        note = bf16_speed_note(args.device)
        if note:
            print(f"note: --precision bf16 on {args.device}: {note}", file=sys.stderr)
    demo = make_demo(args)
    print(plain_header(demo.explorer.registry.get(demo.explorer.registry.startup_name)))
    demo.launch(**launch_kwargs(args))
