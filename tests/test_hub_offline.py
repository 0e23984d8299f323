"""``ddetr.load("ORG/NAME")``: a Hugging Face hub id resolved from the local hub cache, with the
network switched off (``HF_HUB_OFFLINE=1``), as on a cluster node without internet.

The test writes the cache layout huggingface_hub itself writes
(``models--ORG--NAME/{blobs,snapshots/<commit>,refs/main}``, snapshot files linked to blobs)
into tmp_path. huggingface_hub reads ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` when it is first
imported, so each load runs in a fresh interpreter with those variables set.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ddetr
from ddetr import checkpoint as ck

pytest.importorskip("huggingface_hub")
ROOT = Path(__file__).resolve().parent.parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tiny_model() -> ddetr.DeformableDETR:
    cfg = ddetr.preset("multi_scale_box_refine", backbone="resnet_small", backbone_block="basic",
                       backbone_width=16, backbone_blocks=(1, 1, 1, 1), backbone_norm="frozen_bn",
                       d_model=64, enc_layers=1, dec_layers=2, dim_feedforward=128, num_queries=20,
                       min_size=64, max_size=96, num_classes=3, class_names=("N/A", "circle", "square"))
    torch.manual_seed(0)
    model = ddetr.build_model(cfg)
    with torch.no_grad():  # non-trivial heads: a wrong mapping cannot go unnoticed
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def write_hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """Lays ``folder``'s files out as huggingface_hub caches a download of ``repo_id`` at
    ``COMMIT``; returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


LOAD = """
import sys, json
import ddetr
from safetensors.torch import save_file
try:
    model, report = ddetr.load(sys.argv[1])
except ValueError as e:
    print(json.dumps(dict(error=str(e))))
else:
    save_file({k: v.clone() for k, v in model.state_dict().items()}, sys.argv[2])  # clones: shared heads
    print(json.dumps(dict(format=report.format, variant=report.variant, names=list(model.class_names))))
"""


def load_offline(repo_id: str, hf_home: Path, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / "hub"),
               PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", LOAD, repo_id, str(out)], cwd=hf_home, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_hub_id_loads_from_the_local_cache_offline(tmp_path):
    model = tiny_model()
    saved = ck.save(model, tmp_path / "export", format="hf")  # config.json + model.safetensors
    assert {p.name for p in saved.iterdir()} >= {"config.json", "model.safetensors"}
    hf_home = tmp_path / "hf_home"
    write_hub_cache(hf_home / "hub", "SenseTime/deformable-detr", saved)

    got = load_offline("SenseTime/deformable-detr", hf_home, tmp_path / "loaded.safetensors")
    assert got.get("error") is None, got
    assert got["format"] == "transformers" and got["variant"] == "multi_scale_box_refine"
    assert got["names"] == ["N/A", "circle", "square"]
    loaded = load_file(tmp_path / "loaded.safetensors")
    ours = model.state_dict()
    assert loaded.keys() == ours.keys()
    for k, v in ours.items():
        assert torch.equal(loaded[k], v), k


def test_uncached_hub_id_offline_is_a_clear_error(tmp_path):
    hf_home = tmp_path / "hf_home"
    (hf_home / "hub").mkdir(parents=True)
    got = load_offline("SenseTime/deformable-detr-not-cached", hf_home, tmp_path / "unused.safetensors")
    message = got["error"]
    assert "'SenseTime/deformable-detr-not-cached'" in message
    assert "HF_HUB_OFFLINE" in message and str(hf_home / "hub") in message, message
    assert "hf download SenseTime/deformable-detr-not-cached" in message
