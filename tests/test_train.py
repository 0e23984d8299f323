"""ddetr.train: optimizer groups, schedule, sharding, exact resume, torchrun/gloo, overfitting."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddetr.box_ops import box_xyxy_to_cxcywh
from ddetr.checkpoint import save
from ddetr.config import preset
from ddetr.criterion import SetCriterion
from ddetr.data.coco import CocoDetection
from ddetr.data.synthetic import SceneParams, write_dataset
from ddetr.evaluate import evaluate
from ddetr.model import build_model
from ddetr.train import LRSchedule, epoch_batches, main, param_groups

ROOT = Path(__file__).resolve().parents[1]
TINY = {"d_model": 32, "dim_feedforward": 64, "enc_layers": 1, "dec_layers": 2, "num_queries": 20,
        "min_size": 96, "max_size": 128, "backbone_width": 8, "backbone_blocks": (1, 1, 1, 1)}
TINY_ARGS = [a for k, v in TINY.items() for a in ("--set", f"{k}={v!r}".replace(" ", ""))]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """8 train + 2 val images of ~100 px."""
    return write_dataset(tmp_path_factory.mktemp("syn"), {"train": 8, "val": 2}, seed=3,
                         params=SceneParams(min_size=96, max_size=128, max_objects=4), progress=False)


def _rows(run: Path, event: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["event"] == event]


def test_param_groups_follow_the_official_split():
    model = build_model(preset("small", num_classes=3, **TINY))
    groups = {g["name"]: g for g in param_groups(model, lr=1e-3, lr_backbone=1e-5, linear_proj_mult=0.1)}
    assert groups["base"]["lr"] == 1e-3 and groups["backbone"]["lr"] == 1e-5
    assert groups["linear_proj"]["lr"] == pytest.approx(1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(n.startswith("backbone.0.") for n in (names[id(p)] for p in groups["backbone"]["params"]))
    proj = [names[id(p)] for p in groups["linear_proj"]["params"]]
    assert proj and all("sampling_offsets" in n or "reference_points" in n for n in proj)
    assert any("sampling_offsets" in n for n in proj)
    n_grouped = sum(len(g["params"]) for g in groups.values())
    assert n_grouped == len([p for p in model.parameters() if p.requires_grad])  # each exactly once


def test_lr_schedule_warmup_and_step_drop():
    s = LRSchedule(warmup_steps=4, lr_drop=2)
    assert [s.factor(i, 0) for i in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert s.factor(100, 1) == 1.0 and s.factor(100, 2) == pytest.approx(0.1)
    assert s.factor(100, 4) == pytest.approx(0.01)
    assert LRSchedule(0, 0).factor(0, 99) == 1.0


def test_epoch_batches_shard_the_data_evenly():
    a = epoch_batches(11, 2, world=2, rank=0, seed=0, epoch=0)
    b = epoch_batches(11, 2, world=2, rank=1, seed=0, epoch=0)
    assert len(a) == len(b) == 3  # 12 padded indices -> 6 per rank -> 3 full batches
    assert all(len(x) == 2 for x in a + b)
    assert a == epoch_batches(11, 2, world=2, rank=0, seed=0, epoch=0)  # deterministic
    assert a != epoch_batches(11, 2, world=2, rank=0, seed=0, epoch=1)  # reshuffled per epoch
    seen = [i for batch in a + b for i in batch]
    assert set(seen) == set(range(11))


def _train_args(data, out, *extra):
    return ["--coco-dir", str(data), "--out", str(out), "--epochs", "3", "--batch-size", "2",
            "--log-every", "1", "--eval-every", "0", "--eval-max-images", "1", "--device", "cpu",
            "--workers", "0", *TINY_ARGS, "--set", "dropout=0.1", *extra]


def test_resume_continues_exactly(synthetic, tmp_path):
    """6 steps in one go == 3 steps + resume for 3 (4 steps per epoch: crosses an epoch end),
    with a different number of loader workers, and dropout on."""
    main(_train_args(synthetic, tmp_path / "a", "--max-steps", "6"))
    main(_train_args(synthetic, tmp_path / "b", "--max-steps", "3", "--workers", "1", "--snapshot-steps", "2,5"))
    main(_train_args(synthetic, tmp_path / "b", "--max-steps", "6", "--resume", "auto", "--snapshot-steps", "2,5"))
    a, b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        assert ra["loss"] == rb["loss"] and ra["loss_giou_enc"] == rb["loss_giou_enc"], ra["step"]
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]) == (6, 1, 2)
    assert (tmp_path / "b" / "model.safetensors").is_file() and (tmp_path / "b" / "curves.png").is_file()
    assert len(_rows(tmp_path / "b", "eval")) == 2  # one per finished invocation
    snaps = sorted(p.name for p in (tmp_path / "b" / "snapshots").iterdir())
    assert snaps == ["step_000002.safetensors", "step_000005.safetensors"]  # one before, one after resuming


def test_snapshots_are_the_weights_at_those_steps(synthetic, tmp_path):
    """--snapshot-steps 0,2: float16 copies of the weights at initialization and after step 2,
    loadable by ddetr.checkpoint.load, with the step in their metadata."""
    from safetensors import safe_open

    from ddetr.checkpoint import load

    main(_train_args(synthetic, tmp_path, "--max-steps", "2", "--snapshot-steps", "2,0"))
    final, _ = load(tmp_path / "model.safetensors")  # written at the end: the weights after step 2
    snap = tmp_path / "snapshots" / "step_000002.safetensors"
    with safe_open(str(snap), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert (meta["step"], meta["epoch"], meta["images_seen"]) == ("2", "0", "4")
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float16}
    loaded, _ = load(snap)
    for (name, a), b in zip(final.state_dict().items(), loaded.state_dict().values()):
        if a.is_floating_point():
            assert torch.equal(a.half().float(), b), name
    init, _ = load(tmp_path / "snapshots" / "step_000000.safetensors")  # saved before the first step
    assert any(not torch.equal(a, b) for a, b in zip(init.state_dict().values(), loaded.state_dict().values())
               if a.is_floating_point())
    with pytest.raises(SystemExit):
        main(_train_args(synthetic, tmp_path / "bad", "--snapshot-steps", "1,x"))


def test_init_starts_from_saved_weights(synthetic, tmp_path):
    """--init continues from an exported model (fresh optimizer): its first loss equals the
    loss the source run logged for the same batch at the step it stopped."""
    main(_train_args(synthetic, tmp_path / "a", "--max-steps", "2"))
    main(_train_args(synthetic, tmp_path / "b", "--max-steps", "1",
                     "--init", str(tmp_path / "a" / "model.safetensors")))
    main(_train_args(synthetic, tmp_path / "c", "--max-steps", "1"))
    first_b, first_c = _rows(tmp_path / "b")[0], _rows(tmp_path / "c")[0]
    assert first_b["loss"] != first_c["loss"]  # not the random initialization
    # A class-count mismatch is refused with a message, never trained silently.
    other = build_model(preset("small", num_classes=3, **TINY))
    save(other, tmp_path / "other.safetensors")
    with pytest.raises(SystemExit, match="classes"):
        main(_train_args(synthetic, tmp_path / "d", "--max-steps", "1", "--init", str(tmp_path / "other.safetensors")))


def test_max_minutes_pauses_with_a_checkpoint(synthetic, tmp_path):
    main(_train_args(synthetic, tmp_path, "--max-minutes", "0"))
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 1 and ckpt["reason"] == "paused"
    assert _rows(tmp_path, "paused") and not _rows(tmp_path, "eval")
    assert not (tmp_path / "model.safetensors").exists()


@pytest.mark.slow
def test_torchrun_two_processes_gloo_and_resume(synthetic, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "ddetr.train"]

    def run(*extra):
        # Own session, so a hang can be ended with the workers torchrun started.
        p = subprocess.Popen([*torchrun, *_train_args(synthetic, tmp_path, *extra)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
        assert p.returncode == 0, out[-3000:]

    run("--max-steps", "2")
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2]
    assert all(r["images_per_s"] > 0 for r in _rows(tmp_path))
    assert (tmp_path / "model.safetensors").is_file()
    run("--max-steps", "3", "--resume", str(tmp_path / "checkpoint.pt"))
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 3


@pytest.mark.slow
def test_overfitting_a_few_images_reaches_ap50_1(tmp_path):
    """Criterion + matcher + model + post-processing + COCO evaluation, end to end: a tiny model
    memorises 4 clean synthetic images; evaluated through model.predict on the same images."""
    root = write_dataset(tmp_path, {"train": 4}, seed=1, progress=False,
                         params=SceneParams(min_size=96, max_size=128, max_objects=3, min_object=16, clutter=False))
    data = CocoDetection(root, "train")
    torch.manual_seed(0)
    cfg = preset("small", num_classes=data.num_classes, class_names=tuple(data.class_names),
                 **dict(TINY, d_model=64, dim_feedforward=128, backbone_width=16, min_size=128, max_size=160))
    model = build_model(cfg)
    images = [data.load_image(i) for i in data.ids]
    targets = []
    for i, im in zip(data.ids, images):
        t = data.target(i, *im.size)
        scale = torch.tensor([im.width, im.height] * 2, dtype=torch.float32)
        targets.append({"labels": t["labels"], "boxes": box_xyxy_to_cxcywh(t["boxes"]) / scale})
    batch = model.prepare(images)  # exactly the inference preprocessing
    criterion = SetCriterion(cfg.num_classes)
    opt = torch.optim.AdamW(param_groups(model, 1e-3, 1e-3), weight_decay=1e-4)
    for _ in range(200):
        loss = criterion.weighted_total(criterion(model(batch.images, batch.mask), targets))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
    stats = evaluate(model, data, progress=False)
    assert stats["AP50"] == pytest.approx(1.0), stats
