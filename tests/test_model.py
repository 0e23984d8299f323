"""The model's own pieces: official sizes, torchvision-layout backbone, box ops, image
preparation, post-processing that keeps the query index, and the predict front door."""
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import ddetr
from ddetr.backbone import ResNetBody
from ddetr.box_ops import box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou, inverse_sigmoid
from ddetr.postprocess import postprocess
from ddetr.preprocess import ImageError, pad_batch, resized_size, to_rgb_tensor

torch.set_num_threads(min(2, torch.get_num_threads()))

# Official numbers (Table 1 / the released logs; keys of the released .pth files).
OFFICIAL = {
    "single_scale": (34.07, 549),
    "single_scale_dc5": (34.07, 549),
    "multi_scale": (40.07, 561),
    "multi_scale_box_refine": (40.85, 597),
    "multi_scale_two_stage": (41.18, 630),
}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_parameter_and_key_counts_are_the_official_ones(name):
    model = ddetr.build_model(ddetr.preset(name))
    params_m, keys = OFFICIAL[name]
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params_m
    assert len(model.state_dict()) == keys


@pytest.mark.parametrize("dc5", [False, True])
def test_backbone_is_torchvision_resnet50(dc5):
    """Same keys and, with the same weights and statistics, the same features as torchvision's
    ResNet-50 in eval mode (frozen BN == BN with running statistics)."""
    cfg = ddetr.preset("single_scale_dc5" if dc5 else "multi_scale")
    ours = ResNetBody(cfg, (2, 3, 4)).eval()
    tv = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, False, dc5]).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in tv.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    tv_sd = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    missing, unexpected = ours.load_state_dict(tv_sd, strict=False)
    assert not missing and not unexpected  # FrozenBatchNorm2d drops the BN step counter
    x = torch.randn(1, 3, 96, 128, generator=g)
    feats = ours(x)
    with torch.no_grad():
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        ref = []
        for stage in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
            y = stage(y)
            ref.append(y)
    for f, r in zip(feats, ref[1:]):
        # float32 through 50 layers of random weights: compare relative to the feature scale
        torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-5 * r.abs().max().item())
    assert feats[-1].shape[-1] == (8 if dc5 else 4)  # DC5: stride 16 instead of 32


def test_box_ops_round_trip_and_giou_properties():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(20, 2, generator=g)
    boxes = torch.cat([xy, xy + torch.rand(20, 2, generator=g) + 0.01], 1)  # valid xyxy
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(boxes)), boxes)
    giou = generalized_box_iou(boxes, boxes)
    torch.testing.assert_close(giou.diagonal(), torch.ones(20))
    assert (giou <= 1 + 1e-6).all() and (giou >= -1 - 1e-6).all()
    iou, _ = box_iou(boxes[:1], torch.tensor([[5.0, 5.0, 6.0, 6.0]]))
    assert iou.item() == 0  # disjoint
    far = generalized_box_iou(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[2.0, 0, 3, 1]]))
    assert far.item() == pytest.approx(0 - (3 - 2) / 3)  # IoU 0, hull 3, union 2
    with pytest.raises(ValueError, match="x1 >= x0"):
        generalized_box_iou(torch.tensor([[1.0, 1, 0, 0]]), boxes)
    p = torch.tensor([0.0, 0.2, 0.5, 1.0])
    assert torch.isfinite(inverse_sigmoid(p)).all()
    torch.testing.assert_close(inverse_sigmoid(p[1:3]).sigmoid(), p[1:3])


def test_official_resize_rule():
    assert resized_size(480, 640, 800, 1333) == (800, 1066)
    assert resized_size(640, 480, 800, 1333) == (1066, 800)
    assert resized_size(1000, 3000, 800, 1333) == (444, 1332)  # capped: int(444 * 3) as officially
    assert resized_size(800, 1000, 800, 1333) == (800, 1000)  # already right: untouched
    assert resized_size(1, 1, 256, 416) == (256, 256)


def test_any_image_mode_becomes_rgb_in_unit_range():
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    pil = Image.fromarray(rgb)
    ref = to_rgb_tensor(pil)
    assert ref.shape == (3, 30, 40) and ref.dtype == torch.float32
    torch.testing.assert_close(to_rgb_tensor(rgb), ref)
    torch.testing.assert_close(to_rgb_tensor(torch.from_numpy(rgb).permute(2, 0, 1)), ref)
    torch.testing.assert_close(to_rgb_tensor(pil.convert("RGBA")), ref)  # alpha dropped
    gray = to_rgb_tensor(pil.convert("L"))
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert to_rgb_tensor(pil.convert("CMYK")).shape == (3, 30, 40)
    assert to_rgb_tensor(pil.convert("P")).shape == (3, 30, 40)
    deep = (rgb[..., 0].astype(np.uint16) * 257)
    torch.testing.assert_close(to_rgb_tensor(Image.fromarray(deep))[0], ref[0])  # 16-bit PNG mode
    torch.testing.assert_close(to_rgb_tensor(deep)[1], ref[0])
    assert to_rgb_tensor(np.ones((5, 6), dtype=bool)).min() == 1


@pytest.mark.parametrize("bad, match", [
    ("image.png", "got a path"),
    (np.zeros((4, 4, 2), dtype=np.uint8), "not \\(H, W\\)"),
    (np.zeros((0, 4), dtype=np.uint8), "empty"),
    (np.full((4, 4), 2.0, dtype=np.float32), "\\[0, 1\\]"),
    (np.full((4, 4), np.nan, dtype=np.float32), "NaN"),
    (np.zeros((4, 4), dtype=np.complex64), "dtype"),
    (object(), "unsupported image type"),
])
def test_bad_images_get_messages(bad, match):
    with pytest.raises(ImageError, match=match):
        to_rgb_tensor(bad)


def test_pad_batch_pads_bottom_right_with_mask():
    a, b = torch.ones(3, 4, 6), torch.ones(3, 5, 3)
    images, mask = pad_batch([a, b])
    assert images.shape == (2, 3, 5, 6) and mask.shape == (2, 5, 6)
    assert mask[0, 4].all() and not mask[0, :4].any()
    assert mask[1, :, 3:].all() and not mask[1, :, :3].any()
    assert images[1, :, :, 3:].abs().sum() == 0


def test_postprocess_keeps_the_query_of_each_detection():
    logits = torch.full((1, 5, 3), -10.0)
    logits[0, 3, 2] = 5.0  # query 3, class 2: the best
    logits[0, 1, 0] = 2.0  # query 1, class 0: second
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2]] * 5])
    boxes[0, 3] = torch.tensor([0.25, 0.5, 0.5, 0.2])
    (det,) = postprocess(logits, boxes, [(100, 200)], ["a", "b", "c"], top_k=4)
    assert det.query_index.tolist()[:2] == [3, 1] and det.labels.tolist()[:2] == [2, 0]
    assert det.label_names[:2] == ["c", "a"]
    torch.testing.assert_close(det.boxes[0], torch.tensor([0.0, 40.0, 100.0, 60.0]))  # x by w=200, y by h=100
    assert len(det) == 4 and (det.scores[:-1] >= det.scores[1:]).all()
    assert len(det.above(0.5)) == 2


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = ddetr.build_model(ddetr.preset("small", num_classes=9, enc_layers=1, dec_layers=2)).eval()
    with torch.no_grad():  # some spread in the scores, so the ranking is not a tie
        for head in model.class_embed:
            head.weight.normal_(0, 0.5)
    return model


def test_predict_batched_equals_one_by_one(small_model):
    """Same-size images: a batch computes exactly what single images do. (Images of different
    sizes are padded, and the input projections' GroupNorm then takes statistics over the
    padded maps: the official model and transformers' share this, see test_hf_parity.)"""
    g = np.random.default_rng(3)
    a = g.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    b = g.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    both = small_model.predict([a, b])
    for img, det in zip([a, b], both):
        (alone,) = small_model.predict(img)
        assert torch.equal(alone.query_index, det.query_index)
        torch.testing.assert_close(alone.boxes, det.boxes, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(alone.scores, det.scores, atol=1e-5, rtol=1e-4)


def test_predict_boxes_come_from_their_queries(small_model):
    img = np.random.default_rng(4).integers(0, 256, (150, 220, 3), dtype=np.uint8)
    batch = small_model.prepare(img)
    with torch.no_grad():
        out = small_model(batch.images, batch.mask)
    (det,) = small_model.predict(img, score_threshold=0.0)
    h0, w0 = 150, 220
    expect = box_cxcywh_to_xyxy(out.boxes[0, det.query_index]) * torch.tensor([w0, h0, w0, h0])
    torch.testing.assert_close(det.boxes, expect, atol=1e-4, rtol=1e-5)
    assert small_model.training is False
    assert batch.sizes == [(256, 375)] and batch.orig_sizes == [(150, 220)]


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        ddetr.preset("small", n_heads=5)
    with pytest.raises(ValueError, match="unknown preset"):
        ddetr.preset("tiny")
    with pytest.raises(ValueError, match="unknown config fields"):
        ddetr.DDETRConfig.from_dict({"d_model": 256, "colour": "red"})
    cfg = ddetr.preset("multi_scale_two_stage")
    assert ddetr.DDETRConfig.from_dict(cfg.to_dict()) == cfg
