"""Train a Deformable DETR on a COCO-layout dataset, on one process or under torchrun.

    python -m ddetr.train --coco-dir data/synthetic --preset small --out runs/small
    torchrun --nproc_per_node 8 -m ddetr.train --coco-dir data/coco --preset multi_scale --out runs/r50
    python -m ddetr.train ... --out runs/small --resume auto --max-minutes 9   # 10-minute slices

Optimisation follows the official `main.py`: AdamW (lr 2e-4, backbone 2e-5, sampling offsets
and reference points 0.1 x lr), weight decay 1e-4, step decay x0.1 after --lr-drop epochs,
gradient clipping at 0.1; plus an optional linear warm-up, which training from scratch needs.

Outputs in --out: checkpoint.pt (latest; resumable; `torch.load(weights_only=True)`),
log.jsonl (one JSON object per log/eval event), curves.png, model.safetensors (the model in
the project's format, written at each evaluation and at the end), stats_val.json, and with
--snapshot-steps snapshots/step_NNNNNN.safetensors (float16 weights after those steps).
The loop: ``setup`` builds a ``Run``; ``ddetr.engine.train_one_epoch`` runs an epoch.
Resuming is exact: sample order and augmentation are functions of (seed, epoch, index), and
the RNG state of every rank is stored.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ddetr.openmp import sleep_when_idle

if __name__ == "__main__":  # an entry point: before torch is imported (see ddetr/openmp.py)
    sleep_when_idle()

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ddetr.checkpoint import load as load_checkpoint
from ddetr.checkpoint import save
from ddetr.config import DDETRConfig, preset
from ddetr.criterion import SetCriterion
from ddetr.data.coco import CocoDetection
from ddetr.data.transforms import make_transforms, scales_for
from ddetr.engine import LossWindow, SeededSamples, TrainState, epoch_batches, train_one_epoch
from ddetr.evaluate import evaluate
from ddetr.model import build_model

# Official --lr_backbone_names / --lr_linear_proj_names: sub-strings of parameter names.
BACKBONE_KEYS = ("backbone.0",)
LINEAR_PROJ_KEYS = ("reference_points", "sampling_offsets")


def param_groups(model: torch.nn.Module, lr: float, lr_backbone: float,
                 linear_proj_mult: float = 0.1) -> list[dict]:
    """The official three AdamW groups: everything else at lr, the backbone at lr_backbone,
    the sampling-offset and reference-point projections at lr * linear_proj_mult (their small
    outputs move every sampling point, so a full lr makes them jump; Zhu et al., Appendix A.3)."""
    groups = {"base": [], "backbone": [], "linear_proj": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = ("backbone" if any(k in name for k in BACKBONE_KEYS)
               else "linear_proj" if any(k in name for k in LINEAR_PROJ_KEYS) else "base")
        groups[key].append(p)
    lrs = {"base": lr, "backbone": lr_backbone, "linear_proj": lr * linear_proj_mult}
    return [{"params": ps, "lr": lrs[k], "initial_lr": lrs[k], "name": k} for k, ps in groups.items() if ps]


class LRSchedule:
    """Linear warm-up over `warmup_steps` optimizer steps, then x`gamma` every `lr_drop` epochs
    (the official StepLR, stepped per epoch). Stateless: the lr is a function of (step, epoch)."""

    def __init__(self, warmup_steps: int, lr_drop: int, gamma: float = 0.1):
        self.warmup_steps, self.lr_drop, self.gamma = warmup_steps, lr_drop, gamma

    def factor(self, step: int, epoch: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        return warm * self.gamma ** (epoch // self.lr_drop if self.lr_drop > 0 else 0)

    def apply(self, optimizer: torch.optim.Optimizer, step: int, epoch: int) -> None:
        f = self.factor(step, epoch)
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f

    def state_dict(self) -> dict:
        return {"warmup_steps": self.warmup_steps, "lr_drop": self.lr_drop, "gamma": self.gamma}


def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "python": random.getstate(),
         "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()]}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in s["python"]))
    np.random.set_state((s["numpy"][0], np.array(s["numpy"][1], dtype=np.uint32), *s["numpy"][2:]))
    if "cuda" in s and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a run killed mid-write leaves the old file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def plot_curves(log_path: Path, png_path: Path) -> None:
    """Loss terms and COCO AP against optimizer steps, from log.jsonl."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["event"] == "train"]
    evals = [r for r in rows if r["event"] == "eval"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "loss_ce", "loss_bbox", "loss_giou"):
        ax1.plot([r["step"] for r in train], [r[key] for r in train], label=key)
    ax1.set(xlabel="step", ylabel="loss (last layer terms; 'loss' = weighted total)", yscale="log")
    ax1.legend()
    for key in ("AP", "AP50", "AP75"):
        ax2.plot([r["step"] for r in evals], [r[key] for r in evals], marker="o", label=key)
    ax2.set(xlabel="step", ylabel="COCO box AP (val)", ylim=(0, 1))
    ax2.legend()
    fig.tight_layout()
    tmp = png_path.with_name("tmp_" + png_path.name)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)


def snapshot_steps(text: str) -> tuple[int, ...]:
    """'0,100,300' -> (0, 100, 300): sorted, each once."""
    try:
        steps = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated step numbers, e.g. 0,100,300") from None
    if not steps or steps[0] < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected step numbers >= 0, e.g. 0,100,300")
    return tuple(steps)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--coco-dir", required=True, help="dataset root: train2017/, val2017/, annotations/")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="config override, e.g. --set d_model=64 --set enc_layers=1")
    ap.add_argument("--out", required=True, help="run folder")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=2, help="per process")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lr-backbone", type=float, default=2e-5)
    ap.add_argument("--lr-linear-proj-mult", type=float, default=0.1)
    ap.add_argument("--lr-drop", type=int, default=40, help="epochs before the x0.1 step")
    ap.add_argument("--warmup-steps", type=int, default=0)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--clip-max-norm", type=float, default=0.1, help="0 disables clipping")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--eval-every", type=int, default=1, help="epochs; 0: only at the end")
    ap.add_argument("--eval-max-images", type=int, help="evaluate on the first N val images")
    ap.add_argument("--eval-split", default="val")
    ap.add_argument("--ckpt-every", type=int, default=500, help="steps (also at each epoch end)")
    ap.add_argument("--log-every", type=int, default=20, help="steps")
    ap.add_argument("--max-steps", type=int, help="stop (as if finished) after this optimizer step")
    ap.add_argument("--max-minutes", type=float, help="pause with a checkpoint after this long")
    ap.add_argument("--resume", help="checkpoint.pt to continue from; 'auto': OUT/checkpoint.pt if present")
    ap.add_argument("--snapshot-steps", type=snapshot_steps, default=(), metavar="S1,S2,...",
                    help="also save the weights (float16, OUT/snapshots/step_NNNNNN.safetensors) after these "
                         "optimizer steps; 0 is the initialization")
    ap.add_argument("--init", metavar="CKPT",
                    help="start from these weights (any format ddetr.checkpoint.load reads, e.g. the shipped "
                         "model) with a fresh optimizer; ignored when --resume finds a checkpoint")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible; use --device cpu")
    return args


def config_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE, e.g. --set d_model=64")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a bare string such as backbone=resnet_small
    return out


def setup_distributed(device_arg: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; NCCL on GPU, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(device_arg)
    if device.type == "cuda":
        device = torch.device("cuda", local if world > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    if world > 1:
        # Rank 0 evaluates while the others wait at a barrier: allow for a long evaluation.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=60))
    return rank, world, device


@dataclass
class Run:
    """One process's training run, built by `setup` and used by every epoch."""
    args: argparse.Namespace
    rank: int
    world: int
    device: torch.device
    out: Path
    cfg: DDETRConfig
    model: torch.nn.Module
    net: torch.nn.Module  # `model`, or its DistributedDataParallel wrapper
    criterion: SetCriterion
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    samples: SeededSamples
    val_set: CocoDetection | None  # rank 0 only
    state: TrainState
    snapshot_steps: frozenset[int]

    @property
    def main_proc(self) -> bool:
        return self.rank == 0

    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def log_path(self) -> Path:
        return self.out / "log.jsonl"

    def log(self, row: dict) -> None:
        if self.main_proc:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def checkpoint(self, reason: str) -> None:
        rngs = [rng_state()]
        if self.world > 1:
            rngs = [None] * self.world
            dist.all_gather_object(rngs, rng_state())
        if self.main_proc:
            st = self.state
            atomic_save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                         "scheduler": self.schedule.state_dict(), "epoch": st.epoch, "step": st.step,
                         "batch_in_epoch": st.batch_in_epoch, "world_size": self.world,
                         "batch_size": self.args.batch_size, "config": self.cfg.to_dict(),
                         "train_args": vars(self.args), "rng": rngs, "reason": reason}, self.ckpt_path)

    def evaluate(self) -> None:
        if self.main_proc:
            st = self.state
            stats = evaluate(self.model, self.val_set, batch_size=self.args.batch_size * 2,
                             max_images=self.args.eval_max_images, out_dir=self.out, progress=False)
            self.log({"event": "eval", "step": st.step, "epoch": st.epoch, **stats})
            plot_curves(self.log_path, self.out / "curves.png")
            save(self.model, self.out / "model.safetensors")
            tqdm.write(f"epoch {st.epoch} step {st.step}: AP {stats['AP']:.3f} AP50 {stats['AP50']:.3f}")
        if self.world > 1:
            dist.barrier()

    def snapshot_if_due(self) -> None:
        """Weights only, float16 (half the size; enough to draw sampling points and score AP),
        as OUT/snapshots/step_NNNNNN.safetensors, which `ddetr.checkpoint.load` reads."""
        st = self.state
        if self.main_proc and st.step in self.snapshot_steps:
            folder = self.out / "snapshots"
            folder.mkdir(exist_ok=True)
            save(self.model, folder / f"step_{st.step:06d}.safetensors", dtype=torch.float16,
                 metadata={"step": str(st.step), "epoch": str(st.epoch),
                           "images_seen": str(st.step * self.args.batch_size * self.world)})


def setup(args: argparse.Namespace) -> Run:
    """Processes, data, model, optimizer and state (fresh, from --init, or resumed)."""
    rank, world, device = setup_distributed(args.device)
    main_proc = rank == 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    resume = args.resume
    if resume == "auto":
        resume = str(out / "checkpoint.pt") if (out / "checkpoint.pt").exists() else None
    ckpt = torch.load(resume, map_location="cpu", weights_only=True) if resume else None
    torch.set_num_threads(min(torch.get_num_threads(), max(1, (os.cpu_count() or 1) // world)))
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")

    train_set = CocoDetection(args.coco_dir, "train", drop_crowd=True)
    init_model = None
    if ckpt is not None:
        cfg = DDETRConfig.from_dict(ckpt["config"])  # the architecture is the checkpoint's
    elif args.init:
        init_model, report = load_checkpoint(args.init)
        cfg = init_model.cfg
        if cfg.num_classes != train_set.num_classes:
            raise SystemExit(f"--init {args.init}: the model has {cfg.num_classes} classes but the dataset "
                             f"has {train_set.num_classes}; train a new model or use a matching dataset")
        if main_proc:
            print(f"--init: starting from {args.init} ({report.format}, {report.variant})", file=sys.stderr)
    else:
        cfg = preset(args.preset, num_classes=train_set.num_classes,
                     class_names=tuple(train_set.class_names), **config_overrides(args.set))
    train_set.transforms = make_transforms("train", **scales_for(cfg.min_size, cfg.max_size))
    samples = SeededSamples(train_set, args.seed)
    val_set = CocoDetection(args.coco_dir, args.eval_split) if main_proc else None
    if len(train_set) < args.batch_size * world:
        raise SystemExit(f"{len(train_set)} training images cannot fill one batch of {args.batch_size} "
                         f"on each of {world} processes; lower --batch-size")

    torch.manual_seed(args.seed)  # same initial weights on every rank (DDP also broadcasts)
    model = build_model(cfg)
    if init_model is not None:
        model.load_state_dict(init_model.state_dict())
    model = model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, args.lr, args.lr_backbone, args.lr_linear_proj_mult),
                                  lr=args.lr, weight_decay=args.weight_decay)
    state = TrainState()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = TrainState(ckpt["epoch"], ckpt["step"], ckpt["batch_in_epoch"])
        if (ckpt["world_size"], ckpt["batch_size"]) != (world, args.batch_size):
            # The epoch's batches differ with another layout: restart it at the same fraction.
            state.batch_in_epoch = (state.batch_in_epoch * ckpt["world_size"] * ckpt["batch_size"]
                                    // (world * args.batch_size))
            if main_proc:
                print(f"resume: {ckpt['world_size']}x{ckpt['batch_size']} -> {world}x{args.batch_size} "
                      "images per step; the epoch continues approximately", file=sys.stderr)
        rngs = ckpt["rng"]
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
    else:
        torch.manual_seed(args.seed + rank)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    return Run(args, rank, world, device, out, cfg, model, net, SetCriterion(cfg.num_classes), optimizer,
               LRSchedule(args.warmup_steps, args.lr_drop), samples, val_set, state,
               frozenset(args.snapshot_steps))


def train(args: argparse.Namespace) -> int:
    run = setup(args)
    st = run.state
    run.snapshot_if_due()  # step 0: the initialization
    steps_per_epoch = len(epoch_batches(len(run.samples), args.batch_size, run.world, run.rank, args.seed, 0))
    total = args.epochs * steps_per_epoch
    if args.max_steps is not None:
        total = min(args.max_steps, total)
    bar = tqdm(total=total, initial=min(st.step, total), disable=not run.main_proc, unit="step", dynamic_ncols=True)
    started = time.time()
    window = LossWindow(start=started)

    def more() -> bool:
        return st.epoch < args.epochs and (args.max_steps is None or st.step < args.max_steps)

    status = "finished"
    while status == "finished" and more():
        status = train_one_epoch(run, total, window, bar, started)
        if status == "paused":
            break
        if st.batch_in_epoch >= steps_per_epoch:
            st.epoch, st.batch_in_epoch = st.epoch + 1, 0
        if more() and st.batch_in_epoch == 0:  # the last evaluation and checkpoint come below
            if args.eval_every > 0 and st.epoch % args.eval_every == 0:
                run.evaluate()
            run.checkpoint("epoch end")
    bar.close()
    run.checkpoint(status)
    run.log({"event": status, "step": st.step, "epoch": st.epoch, "minutes": (time.time() - started) / 60})
    if status == "finished":
        run.evaluate()
    elif run.main_proc:
        print(f"paused after {args.max_minutes} minutes at step {st.step}; continue with --resume {run.ckpt_path}",
              file=sys.stderr)
    if run.world > 1:
        dist.destroy_process_group()
    return 0


def main(argv=None) -> int:
    return train(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
