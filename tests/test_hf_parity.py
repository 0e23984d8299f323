"""Parity with an implementation nobody here wrote: transformers' DeformableDetrForObjectDetection.

Same random weights (copied through ``ddetr.checkpoint_hf.ours_to_hf``, so the key mapping is
under test too), same pixels and padding mask: logits, boxes, every layer's reference points,
and every deformable attention layer's sampling locations and attention weights must agree.
"""
from __future__ import annotations

import pytest
import torch

import ddetr
from ddetr import checkpoint_hf as hf
from ddetr.attention import SamplingCore

transformers = pytest.importorskip("transformers")
modeling = pytest.importorskip("transformers.models.deformable_detr.modeling_deformable_detr")

torch.set_num_threads(min(2, torch.get_num_threads()))

from randomize import randomize  # noqa: E402
TOL = 1e-4  # float32 on CPU; observed differences are ~1e-6


def twin(cfg: ddetr.DDETRConfig, hf_cfg: dict | None = None):
    """(ours, theirs) with the same random weights; theirs built from ``hf_config_dict(cfg)``."""
    ours = randomize(ddetr.build_model(cfg)).eval()
    hf_cfg = hf_cfg or hf.hf_config_dict(cfg)
    backbone = "timm" if hf_cfg.get("use_timm_backbone", False) else "transformers ResNet"
    theirs = transformers.DeformableDetrForObjectDetection(transformers.DeformableDetrConfig(**hf_cfg)).eval()
    theirs.load_state_dict(hf.ours_to_hf(ours.state_dict(), names="v5", backbone=backbone), strict=True)
    return ours, theirs


def batches():
    """Non-square images that need padding: (images, mask True at padding) for B = 1 and 2."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 96, 128, generator=g)
    b = torch.randn(3, 80, 112, generator=g)
    images = torch.zeros(2, 3, 96, 128)
    mask = torch.ones(2, 96, 128, dtype=torch.bool)
    for i, im in enumerate((a, b)):
        images[i, :, : im.shape[1], : im.shape[2]] = im
        mask[i, : im.shape[1], : im.shape[2]] = False
    single = (b[None], torch.zeros(1, 80, 112, dtype=torch.bool))
    padded_single = (images[1:], mask[1:])
    return {"B=1": single, "B=1 padded": padded_single, "B=2": (images, mask)}


def _arg(args, kwargs, name, index):
    return kwargs[name] if name in kwargs else args[index]


@torch.no_grad()
def run_both(ours, theirs, images, mask):
    """Forward both; returns (our output, their output, our samplings, their samplings), the
    samplings being per deformable attention call (encoder layers, then decoder layers):
    (sampling_locations (B, Lq, M, L, P, 2), attention_weights (B, Lq, M, L, P))."""
    mine, yours = [], []

    def our_hook(module, args, kwargs, out):  # SamplingCore(value, shapes, start, locations, weights)
        mine.append((_arg(args, kwargs, "sampling_locations", 3), _arg(args, kwargs, "attention_weights", 4)))

    def their_hook(module, args, kwargs, out):  # (value, shapes, shapes_list, start, locations, weights, step)
        yours.append((_arg(args, kwargs, "sampling_locations", 4), _arg(args, kwargs, "attention_weights", 5)))

    hooks = [m.register_forward_hook(our_hook, with_kwargs=True) for m in ours.modules() if isinstance(m, SamplingCore)]
    hooks += [m.register_forward_hook(their_hook, with_kwargs=True)
              for m in theirs.modules() if isinstance(m, modeling.MultiScaleDeformableAttention)]
    try:
        a = ours(images, mask)
        b = theirs(pixel_values=images, pixel_mask=(~mask).long())  # transformers: 1 = valid pixel
    finally:
        for h in hooks:
            h.remove()
    return a, b, mine, yours


def diff(x, y) -> float:
    assert x.shape == y.shape, (x.shape, y.shape)
    return (x - y).abs().max().item()


def assert_parity(ours, theirs):
    cfg = ours.cfg
    for name, (images, mask) in batches().items():
        a, b, mine, yours = run_both(ours, theirs, images, mask)
        assert len(mine) == len(yours) == cfg.enc_layers + cfg.dec_layers, name
        worst = {
            "logits": diff(a.logits, b.logits),
            "boxes": diff(a.boxes, b.pred_boxes),
            "references": max(diff(r, b.init_reference_points if i == 0 else b.intermediate_reference_points[:, i - 1])
                              for i, r in enumerate(a.references)),
            "locations": max(diff(x[0], y[0]) for x, y in zip(mine, yours)),
            "weights": max(diff(x[1], y[1]) for x, y in zip(mine, yours)),
        }
        if cfg.two_stage:
            worst["proposal logits"] = diff(a.enc.logits, b.enc_outputs_class)
            worst["proposal boxes"] = diff(a.enc.boxes, b.enc_outputs_coord_logits.sigmoid())
        assert max(worst.values()) < TOL, (name, worst)
        # the comparison is not vacuous: outputs vary across queries and sampling points spread
        assert a.boxes.std() > 1e-2 and a.logits.std() > 1e-2
        assert mine[-1][0].std() > 1e-2 and mine[-1][1].std() > 1e-3
    return a


# transformers builds the backbone with timm's resnet50 (torchvision layout) for these.
@pytest.mark.parametrize("variant", ["single_scale", "single_scale_dc5", "multi_scale",
                                     "multi_scale_box_refine", "multi_scale_two_stage"])
def test_parity_with_transformers(variant):
    cfg = ddetr.preset(variant, enc_layers=2, dec_layers=2, num_queries=30)
    ours, theirs = twin(cfg)
    out = assert_parity(ours, theirs)
    if variant == "single_scale_dc5":  # stride 16 on both sides, or shapes would not have matched
        assert out.spatial_shapes.tolist() == [[6, 8]]


def test_parity_with_transformers_resnet_backbone():
    """transformers' own ResNetBackbone (embedder / encoder.stages names) instead of timm's."""
    cfg = ddetr.preset("multi_scale", enc_layers=2, dec_layers=2, num_queries=30)
    hf_cfg = hf.hf_config_dict(cfg)
    for k in ("backbone", "use_pretrained_backbone"):
        del hf_cfg[k]
    hf_cfg.update(use_timm_backbone=False,
                  backbone_config=dict(model_type="resnet", out_features=["stage2", "stage3", "stage4"]))
    assert_parity(*twin(cfg, hf_cfg))


def test_parity_of_the_shipped_architecture():
    """The ``small`` preset (basic-block ResNet, two-stage + refinement, d_model 128) expressed as a
    transformers model with a transformers ResNet backbone."""
    cfg = ddetr.preset("small", enc_layers=2, dec_layers=2, num_queries=30, backbone_norm="frozen_bn")
    assert_parity(*twin(cfg))


@pytest.mark.slow
def test_full_size_key_sets_match_transformers():
    """Every full-size official variant maps one-to-one onto transformers' parameters, shapes included."""
    for variant, n in {"single_scale": 549, "multi_scale": 561, "multi_scale_box_refine": 597,
                       "multi_scale_two_stage": 630}.items():
        cfg = ddetr.preset(variant)
        ours = ddetr.build_model(cfg).state_dict()
        assert len(ours) == n
        theirs = transformers.DeformableDetrForObjectDetection(
            transformers.DeformableDetrConfig(**hf.hf_config_dict(cfg))).state_dict()
        mapped = hf.ours_to_hf(ours, names="v5")
        assert mapped.keys() == theirs.keys(), (variant, sorted(mapped.keys() ^ theirs.keys())[:10])
        assert all(mapped[k].shape == theirs[k].shape for k in theirs), variant
