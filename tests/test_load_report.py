"""The loading report: one variant name and one class count for the same weights in every
format, file facts (size, SHA-256, dtype, parameters) and training state when the file has it."""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

import ddetr
from ddetr.checkpoint import save

torch.set_num_threads(min(2, torch.get_num_threads()))
SHIPPED = Path(__file__).resolve().parents[1] / "examples" / "default_model.safetensors"


def test_same_weights_same_name_in_every_format(tmp_path):
    model, report = ddetr.load(SHIPPED)
    with torch.no_grad():  # mmdetection's neck holds no conv bias
        for p in model.input_proj:
            p[0].bias.zero_()
    paths = [save(model, tmp_path / "a.safetensors"), save(model, tmp_path / "b.pth", format="official"),
             save(model, tmp_path / "hf", format="hf"), save(model, tmp_path / "c.pth", format="mmdet")]
    reports = [ddetr.load(p)[1] for p in paths]
    assert {r.format for r in reports} == {"ddetr", "official", "transformers", "mmdetection"}
    for r in [report, *reports]:
        text = str(r)
        assert r.variant == "small" and "variant small" in text, r.format
        assert "8 classes (9 logits; id 0 unused)" in text and "N/A" not in text, r.format
        assert r.parameters == report.parameters > 3_000_000


def test_foreign_files_are_named_by_their_architecture(tmp_path):
    """Without our config (a transformers folder written elsewhere), the name comes from the tensors."""
    model, _ = ddetr.load(SHIPPED)
    folder = save(model, tmp_path / "hf", format="hf")
    cfg = (folder / "config.json").read_text().replace('"ddetr_variant": "small",', "")
    (folder / "config.json").write_text(cfg)
    assert ddetr.load(folder)[1].variant == "small"


def test_file_facts_and_training_state(tmp_path):
    model, _ = ddetr.load(SHIPPED)
    sd = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    args = argparse.Namespace(lr=2e-4, lr_backbone=2e-5, batch_size=4, nheads=8, num_queries=100, two_stage=True,
                              with_box_refine=True, hidden_dim=128, dec_n_points=4, enc_n_points=4)
    obj = {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {}, "epoch": 41, "args": args}
    path = tmp_path / "official.pth"
    torch.save(obj, path)
    _, r = ddetr.load(path)
    assert r.file_size == path.stat().st_size
    assert r.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert r.dtype.startswith("float16")
    t = r.training
    assert t.epoch == 41 and t.optimizer_state and t.scheduler_state
    assert t.args == {"lr": 2e-4, "lr_backbone": 2e-5, "batch_size": 4}
    text = str(r)
    assert "epoch 41" in text and "optimizer state present" in text and "lr 0.0002" in text
    _, plain = ddetr.load(SHIPPED)
    assert plain.training is None and "no training state" in str(plain)
