"""One epoch of training (DETR's ``engine.train_one_epoch``), the epoch's data order, and the
small state that a checkpoint carries from one epoch, or one process, to the next.

``ddetr.train`` builds a ``Run`` (model, optimizer, data, state) and calls ``train_one_epoch``
until the run is finished or paused.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from tqdm import tqdm

from ddetr.data.coco import collate_padded

if TYPE_CHECKING:
    from ddetr.train import Run


class SeededSamples(torch.utils.data.Dataset):
    """Makes augmentation a function of (seed, epoch, index), independent of worker count and
    of where a run was resumed. The caller's RNG streams are left untouched."""

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        s = hash((self.seed, self.epoch, index)) & (2 ** 62 - 1)  # ints hash deterministically
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            random.seed(s)
            torch.manual_seed(s)
            try:
                return self.dataset[index]
            finally:
                random.setstate(state)


def epoch_batches(n: int, batch_size: int, world: int, rank: int, seed: int, epoch: int) -> list[list[int]]:
    """This rank's batches for an epoch: DistributedSampler's shuffle (same on every rank, padded
    to a multiple of world), full batches only, so every rank runs the same number of steps."""
    sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=world, rank=rank,
                                                  shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    idx = list(sampler)
    return [idx[i:i + batch_size] for i in range(0, len(idx) - batch_size + 1, batch_size)]


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint, so a resumed run continues at this batch."""
    epoch: int = 0
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # batches of `epoch` already done


@dataclass
class LossWindow:
    """Sums of the loss terms since the last log row, and the images seen meanwhile."""
    start: float
    images: int = 0
    sums: dict = field(default_factory=dict)
    n: int = 0

    def add(self, terms: dict[str, torch.Tensor], images: int) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.n, self.images = self.n + 1, self.images + images

    def flush(self, world: int) -> dict:
        """Mean of each term over the window (and over ranks), images/s; starts a new window."""
        keys = sorted(self.sums)
        vals = torch.stack([self.sums[k] for k in keys]) / self.n
        if world > 1:
            dist.all_reduce(vals)
            vals /= world
        now = time.time()
        row = dict(zip(keys, vals.tolist()), images_per_s=self.images / max(now - self.start, 1e-9))
        self.start, self.images, self.sums, self.n = now, 0, {}, 0
        return row


def train_one_epoch(run: Run, total: int, window: LossWindow, bar: tqdm, started: float) -> str:
    """The rest of the current epoch, or up to --max-steps; "paused" when --max-minutes ran out,
    else "finished". Logs every --log-every steps, checkpoints every --ckpt-every."""
    args, st, model = run.args, run.state, run.model
    run.samples.epoch = st.epoch
    batches = epoch_batches(len(run.samples), args.batch_size, run.world, run.rank, args.seed,
                            st.epoch)[st.batch_in_epoch:]
    # Its own generator: creating an iterator must not draw from the global RNG, or a resumed
    # run's dropout masks would differ from an uninterrupted one's.
    loader = torch.utils.data.DataLoader(
        run.samples, batch_sampler=batches, num_workers=args.workers, collate_fn=collate_padded,
        pin_memory=run.device.type == "cuda", generator=torch.Generator().manual_seed(args.seed + st.epoch))
    autocast = torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=args.amp)
    run.net.train()
    for images, mask, targets in loader:
        run.schedule.apply(run.optimizer, st.step, st.epoch)
        images, mask = images.to(run.device, non_blocking=True), mask.to(run.device, non_blocking=True)
        with autocast:
            outputs = run.net(images, mask)
        losses = run.criterion(outputs, targets)
        loss = run.criterion.weighted_total(losses)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {st.step}: loss is {loss.item()}; terms "
                                     f"{ {k: round(v.item(), 4) for k, v in losses.items()} }")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), args.clip_max_norm if args.clip_max_norm > 0 else math.inf)
        run.optimizer.step()
        st.step, st.batch_in_epoch = st.step + 1, st.batch_in_epoch + 1
        window.add({"loss": loss, "grad_norm": grad_norm, **losses}, len(targets) * run.world)
        bar.update(1)

        if st.step % args.log_every == 0 or st.step == total:
            row = window.flush(run.world)
            row.update(event="train", step=st.step, epoch=st.epoch, lr=run.optimizer.param_groups[0]["lr"],
                       images_per_s=row.pop("images_per_s"))
            run.log(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.1e}", img_s=f"{row['images_per_s']:.1f}")
        run.snapshot_if_due()
        if args.max_steps is not None and st.step >= args.max_steps:
            break
        if st.step % args.ckpt_every == 0:
            run.checkpoint("periodic")
        if args.max_minutes is not None:
            over = torch.tensor([float(time.time() - started > 60 * args.max_minutes)], device=run.device)
            if run.world > 1:
                dist.all_reduce(over, op=dist.ReduceOp.MAX)  # all ranks stop at the same step
            if over.item():
                return "paused"
    return "finished"
