"""mmdetection 3.x Deformable DETR checkpoints: our weights -> mmdetection keys -> ddetr.load gives
the same model, and the keys are exactly those mmdetection's modules hold.

mmdetection cannot be installed and run here (it needs mmcv's compiled ops), so parity is shown
by a bit-exact round trip through the mmdetection layout plus key-set equality with the set
``mmdet_keys`` below, written from mmdetection's module definitions (not from our mapping).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ddetr
from ddetr import checkpoint_mmdet as mmdet
from ddetr.checkpoint import CheckpointError, save

from randomize import randomize
from test_checkpoint import assert_same_state, inputs, run, tiny

SHIPPED = Path(__file__).resolve().parents[1] / "examples" / "default_model.safetensors"
torch.set_num_threads(min(2, torch.get_num_threads()))


def _no_neck_bias(model):
    with torch.no_grad():
        for p in model.input_proj:
            p[0].bias.zero_()
    return model


@pytest.mark.parametrize("variant", ["multi_scale", "multi_scale_box_refine", "multi_scale_two_stage", "single_scale"])
def test_round_trip_through_the_mmdetection_layout(tmp_path, variant):
    model = _no_neck_bias(randomize(ddetr.build_model(tiny(variant)), seed=3))
    save(model, tmp_path / "m.pth", format="mmdet")
    obj = torch.load(tmp_path / "m.pth", weights_only=True)
    assert set(obj) == {"meta", "state_dict"} and mmdet.looks_mmdet(obj["state_dict"])
    loaded, report = ddetr.load(tmp_path / "m.pth")
    assert report.format == "mmdetection" and report.variant == model.cfg.variant
    assert_same_state(model, loaded)
    images, mask = inputs()
    a, b = run(model, images, mask), run(loaded, images, mask)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.boxes, b.boxes)


def test_mmdetection_file_without_our_config_is_read_off_the_tensors(tmp_path):
    """A file as mmdetection writes it: no ddetr config, its config text, dataset classes."""
    cfg = tiny("multi_scale_two_stage", num_classes=3)
    model = _no_neck_bias(randomize(ddetr.build_model(cfg), seed=4))
    obj = mmdet.to_mmdet(model)
    obj["meta"] = {"epoch": 12, "iter": 3000, "dataset_meta": {"classes": ("cat", "dog", "bird")},
                   "cfg": "model = dict(type='DeformableDETR', num_queries=20, encoder=dict(layer_cfg=dict("
                          "self_attn_cfg=dict(embed_dims=64, num_heads=8))))\noptim_wrapper = dict(optimizer="
                          "dict(type='AdamW', lr=0.0002, weight_decay=0.0001))"}
    torch.save(obj, tmp_path / "mm.pth")
    loaded, report = ddetr.load(tmp_path / "mm.pth")
    assert loaded.cfg.class_names == ("cat", "dog", "bird") and loaded.cfg.num_queries == 20
    assert loaded.cfg.two_stage and loaded.cfg.with_box_refine
    assert report.training.epoch == 12 and report.training.step == 3000 and report.training.args["lr"] == 2e-4
    images, mask = inputs()
    assert torch.equal(run(model, images, mask).boxes, run(loaded, images, mask).boxes)


def test_a_neck_bias_mmdetection_cannot_hold_is_refused(tmp_path):
    model = randomize(ddetr.build_model(tiny("multi_scale")), seed=5)
    with pytest.raises(ValueError, match="ChannelMapper"):
        save(model, tmp_path / "m.pth", format="mmdet")
    assert not (tmp_path / "m.pth").exists()


def test_missing_mmdetection_tensor_is_named(tmp_path):
    model = _no_neck_bias(ddetr.build_model(tiny("multi_scale")))
    obj = mmdet.to_mmdet(model)
    del obj["state_dict"]["decoder.layers.1.norms.2.weight"]
    torch.save(obj, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="transformer.decoder.layers.1.norm3.weight"):
        ddetr.load(tmp_path / "m.pth")


# ----------------------------------------------------------------------------- mmdetection's key set
def _linear(prefix):
    return {f"{prefix}.weight", f"{prefix}.bias"}


def mmdet_keys(*, enc_layers, dec_layers, n_levels, with_box_refine, two_stage, blocks=(3, 4, 6, 3)):
    """The state-dict keys of mmdetection 3.x ``DeformableDETR`` with a ResNet-50 backbone and the
    ChannelMapper neck of configs/deformable_detr/deformable-detr_r50_16xb2-50e_coco.py, written
    from the module definitions in
      mmdet/models/backbones/resnet.py (Bottleneck: conv1-3, bn1-3, downsample.0/1; stem conv1, bn1),
      mmdet/models/necks/channel_mapper.py (ConvModule .conv + .gn, no conv bias with a norm),
      mmdet/models/detectors/deformable_detr.py (_init_layers),
      mmdet/models/layers/transformer/deformable_detr_layers.py (+ detr_layers.py),
      mmcv/cnn/bricks/transformer.py (FFN: layers.0.0 / layers.1; MultiheadAttention: .attn),
      mmcv/ops/multi_scale_deform_attn.py (sampling_offsets, attention_weights, value_proj, output_proj),
      mmdet/models/dense_heads/deformable_detr_head.py (cls_branches, reg_branches Linear-ReLU x2-Linear).
    """
    bn = lambda p: {f"{p}.{n}" for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}  # noqa: E731
    keys = {"backbone.conv1.weight"} | bn("backbone.bn1")
    for stage, n in enumerate(blocks, 1):
        for b in range(n):
            p = f"backbone.layer{stage}.{b}"
            for j in (1, 2, 3):
                keys |= {f"{p}.conv{j}.weight"} | bn(f"{p}.bn{j}")
            if b == 0:
                keys |= {f"{p}.downsample.0.weight"} | bn(f"{p}.downsample.1")
    n_in = 3 if n_levels > 1 else 1
    for i in range(n_levels):
        p = f"neck.convs.{i}" if i < n_in else f"neck.extra_convs.{i - n_in}"
        keys |= {f"{p}.conv.weight"} | _linear(f"{p}.gn")
    msda = lambda p: set().union(*(_linear(f"{p}.{n}") for n in  # noqa: E731
                                   ("sampling_offsets", "attention_weights", "value_proj", "output_proj")))
    ffn = lambda p: _linear(f"{p}.ffn.layers.0.0") | _linear(f"{p}.ffn.layers.1")  # noqa: E731
    for i in range(enc_layers):
        p = f"encoder.layers.{i}"
        keys |= msda(f"{p}.self_attn") | ffn(p) | _linear(f"{p}.norms.0") | _linear(f"{p}.norms.1")
    for i in range(dec_layers):
        p = f"decoder.layers.{i}"
        keys |= {f"{p}.self_attn.attn.in_proj_weight", f"{p}.self_attn.attn.in_proj_bias"}
        keys |= _linear(f"{p}.self_attn.attn.out_proj") | msda(f"{p}.cross_attn") | ffn(p)
        keys |= _linear(f"{p}.norms.0") | _linear(f"{p}.norms.1") | _linear(f"{p}.norms.2")
    keys.add("level_embed")
    if two_stage:
        for n in ("memory_trans_fc", "memory_trans_norm", "pos_trans_fc", "pos_trans_norm"):
            keys |= _linear(n)
    else:
        keys |= {"query_embedding.weight"} | _linear("reference_points_fc")
    for i in range(dec_layers + (1 if two_stage else 0)):
        keys |= _linear(f"bbox_head.cls_branches.{i}")
        for j in (0, 2, 4):
            keys |= _linear(f"bbox_head.reg_branches.{i}.{j}")
    return keys


@pytest.mark.parametrize("variant", ["multi_scale", "multi_scale_box_refine", "multi_scale_two_stage"])
def test_keys_are_exactly_mmdetections(variant):
    cfg = ddetr.preset(variant)  # the full R50 model, as mmdetection's configs build it
    model = _no_neck_bias(ddetr.build_model(cfg))
    got = set(mmdet.to_mmdet(model)["state_dict"])
    want = mmdet_keys(enc_layers=6, dec_layers=6, n_levels=4, with_box_refine=cfg.with_box_refine,
                      two_stage=cfg.two_stage)
    assert got == want, (sorted(got - want)[:5], sorted(want - got)[:5])


def test_shipped_model_round_trip(tmp_path):
    """The shipped model (trained batch norm, two-stage, refinement) through the mmdetection layout."""
    model, _ = ddetr.load(SHIPPED)
    _no_neck_bias(model)
    save(model, tmp_path / "m.pth", format="mmdet")
    loaded, report = ddetr.load(tmp_path / "m.pth")
    assert report.variant == "small"
    assert_same_state(model, loaded)
