"""Coordinate frames: hand-computed answers, round trips, agreement with the model's own
reference points and proposals, and the backbone's receptive fields."""
import numpy as np
import pytest
import torch

from ddetr import preset
from ddetr.backbone import Backbone
from ddetr.encoder import encoder_reference_points
from ddetr.frames import Geometry
from ddetr.two_stage import encoder_proposals


def _geometry():
    # A 150 x 100 (w x h) original resized to 96 x 64, padded to 96 x 96 inside a batch with a
    # taller image: level 0 (stride 8) is 12 x 12 with 8 valid rows and 12 valid columns.
    return Geometry(
        spatial_shapes=[[12, 12], [6, 6], [3, 3], [2, 2]],
        valid_ratios=[[1.0, 8 / 12], [1.0, 4 / 6], [1.0, 2 / 3], [1.0, 1 / 2]],
        input_size=(64, 96), padded_size=(96, 96), orig_size=(100, 150), strides=(8, 16, 32, 64),
    )


def test_hand_computed_answers():
    g = _geometry()
    u = np.zeros((4, 2))
    u[0] = [0.5, 0.5]
    # level pixels: x by W, y by H
    np.testing.assert_allclose(g.to_level(u, level_axis=-2)[0], [6.0, 6.0])
    # image: x = 0.5 / 1 * 150; y = 0.5 / (8/12) * 100 = 75
    np.testing.assert_allclose(g.to_image(u, level_axis=-2)[0], [75.0, 75.0])
    # centre of the last valid row of level 0 (iy = 7): 7.5 / 8 * 100
    np.testing.assert_allclose(g.level_to_image([0.5, 7.5], 0), [0.5 / 12 * 150, 93.75])
    assert g.nearest_token(149.9, 99.9, 0) == g.token_index(0, 11, 7)  # last valid cell, not padding
    assert g.nearest_token(1e4, 1e4, 1) == g.token_index(1, 5, 3)
    assert g.token_cell(g.token_index(2, 1, 2)) == (2, 1, 2)
    np.testing.assert_allclose(g.token_image_px(g.token_index(0, 0, 0)), [150 / 24, 100 / 16])
    np.testing.assert_allclose(g.box_to_image([0.5, 0.5, 0.2, 0.4]), [60, 30, 90, 70])
    assert g.scale == pytest.approx((0.64, 0.64))


def test_width_and_height_are_not_swapped():
    g = Geometry([[3, 5]], [[0.8, 2 / 3]], (20, 40), (30, 50), (10, 20), (10,))
    np.testing.assert_allclose(g.to_level([[1.0, 1.0]], -2), [[5.0, 3.0]])
    np.testing.assert_allclose(g.to_image([[0.8, 2 / 3]], -2), [[20.0, 10.0]])  # valid corner = image corner


def test_round_trips_and_broadcasting():
    g = _geometry()
    rng = np.random.default_rng(0)
    u = rng.random((7, 8, 4, 4, 2))  # (Lq, M, L, P, 2)
    np.testing.assert_allclose(g.from_level(g.to_level(u)), u, rtol=1e-12)
    np.testing.assert_allclose(g.from_image(g.to_image(u)), u, rtol=1e-12)
    lvl = g.to_level(u)
    for level in range(4):
        np.testing.assert_allclose(g.level_to_image(lvl[:, :, level], level), g.to_image(u)[:, :, level], rtol=1e-12)
        np.testing.assert_allclose(g.image_to_level(g.to_image(u)[:, :, level], level), lvl[:, :, level], rtol=1e-12)
    with pytest.raises(ValueError, match="level_axis"):
        g.to_image(u, level_axis=-1)


def test_offsets_of_point_references_are_the_raw_offsets():
    from ddetr.attention import sampling_locations_from

    g = _geometry()
    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 5, 4, 2, generator=gen, dtype=torch.float64)
    off = torch.randn(1, 5, 8, 4, 4, 2, generator=gen, dtype=torch.float64) * 3
    loc = sampling_locations_from(ref, off, torch.as_tensor(g.spatial_shapes), 4)
    o = g.offsets(loc[0].numpy(), ref[0, :, None, :, None].numpy())
    np.testing.assert_allclose(o["level_px"], off[0].numpy(), atol=1e-9)
    # image offsets: level offsets scaled by the image pixels per valid level pixel
    np.testing.assert_allclose(o["image_px"], off[0].numpy() * (g.orig_wh / g.valid_wh)[None, None, :, None], atol=1e-9)


def test_location_formula_known_answers():
    """The model samples with frames.sampling_locations; check it against hand arithmetic.

    Points: offsets are level pixels (x / W_l, y / H_l). Boxes: offsets are in units of the
    half-size divided by the number of points (official formula, sec. A.4 of the paper).
    """
    from ddetr.attention import sampling_locations_from

    shapes = torch.tensor([[10, 20], [5, 10]])  # (H, W) per level
    off = torch.zeros(1, 1, 1, 2, 2, 2)
    off[0, 0, 0, 0, 1] = torch.tensor([2.0, -1.0])  # level 0, point 1: 2 px right, 1 px up
    ref = torch.tensor([[[[0.5, 0.5], [0.25, 0.75]]]])  # (B, Lq, L, 2)
    loc = sampling_locations_from(ref, off, shapes, 2)
    assert torch.allclose(loc[0, 0, 0, 0, 1], torch.tensor([0.5 + 2 / 20, 0.5 - 1 / 10]))
    assert torch.allclose(loc[0, 0, 0, 1, 0], torch.tensor([0.25, 0.75]))
    box = torch.tensor([[[[0.5, 0.5, 0.4, 0.2], [0.5, 0.5, 0.4, 0.2]]]])  # cx, cy, w, h
    loc = sampling_locations_from(box, off, shapes, 2)
    # centre + offset / P * wh / 2 = 0.5 + 2 / 2 * 0.2, 0.5 - 1 / 2 * 0.1
    assert torch.allclose(loc[0, 0, 0, 0, 1], torch.tensor([0.7, 0.45]))
    with pytest.raises(ValueError, match="2 or 4"):
        sampling_locations_from(torch.zeros(1, 1, 2, 3), off, shapes, 2)


def test_box_references_in_image_pixels():
    g = _geometry()
    box = np.array([0.5, 0.25, 0.2, 0.4])  # cxcywh of the unpadded image
    vr = np.concatenate([g.valid_ratios, g.valid_ratios], 1)  # what the decoder feeds the op
    ref = box[None] * vr  # (L, 4)
    np.testing.assert_allclose(g.reference_to_image(ref), np.tile([75.0, 25.0, 30.0, 40.0], (4, 1)))


@pytest.mark.parametrize("shape", [(64, 96), (96, 64)])
def test_model_reference_points_and_proposals_agree_with_the_image_frame(shape):
    """Every level's copy of a token's encoder reference point is the same image point, and
    that point is the centre of the token's two-stage base proposal."""
    h, w = shape
    H, W = 96, 96
    mask = torch.ones(1, H, W, dtype=torch.bool)
    mask[:, :h, :w] = False
    shapes, masks = [], []
    for s in (8, 16, 32, 64):
        m = torch.nn.functional.interpolate(mask[None].float(), size=(-(-H // s), -(-W // s))).bool()[0]
        shapes.append(m.shape[-2:])
        masks.append(m)
    from ddetr.padding import valid_ratio

    vr = torch.stack([valid_ratio(m) for m in masks], 1)  # (1, L, 2)
    ss = torch.as_tensor(shapes)
    g = Geometry(ss.numpy(), vr[0].numpy(), (h, w), (H, W), (h * 2, w * 2), (8, 16, 32, 64))
    ref = encoder_reference_points(ss, vr)[0].numpy()  # (Lv, L, 2)
    img = g.to_image(ref, level_axis=-2)  # (Lv, L, 2)
    np.testing.assert_allclose(img, np.broadcast_to(img[:, :1], img.shape), atol=1e-3)
    _, proposals = encoder_proposals(torch.zeros(1, ref.shape[0], 1), torch.cat([m.flatten(1) for m in masks], 1), ss)
    centre = torch.sigmoid(proposals[0, :, :2]).numpy() * g.orig_wh  # (Lv, 2)
    valid = np.isfinite(proposals[0].numpy()).all(-1)
    assert valid.sum() > 10
    np.testing.assert_allclose(centre[valid], img[valid, 0], atol=1e-2)
    for token in np.flatnonzero(valid)[::7]:
        np.testing.assert_allclose(g.token_image_px(int(token)), img[token, 0], atol=1e-3)


def test_receptive_field_frame_matches_the_backbone():
    """Known answer from the convolutions themselves: the gradient support of a feature cell
    (all-positive weights, average instead of max pooling so every tap passes gradient) is
    centred where ``receptive_field_image`` says, and differs from the model's frame by
    (s - 1) / 2 pixels at the cell centre."""
    torch.manual_seed(0)
    bb = Backbone(preset("small", backbone_width=8)).eval()
    body = bb.body
    body.maxpool = torch.nn.AvgPool2d(3, 2, 1)  # same geometry as the max pool
    with torch.no_grad():
        for mod in body.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight.fill_(1.0 / mod.weight[0].numel())
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.zero_(), mod.running_var.fill_(1 - mod.eps), mod.weight.fill_(1), mod.bias.zero_()
    size = 416  # 13 x 32: every level divides it, so both frames cover the image exactly
    x = torch.ones(1, 3, size, size, requires_grad=True)
    feats = body(x)
    shapes = [f.shape[-2:] for f in feats]
    g = Geometry([list(s) for s in shapes], np.ones((3, 2)), (size, size), (size, size), (size, size), bb.strides)
    for level, f in enumerate(feats):
        n = f.shape[-1]
        ix, iy = n // 2 - 1, n // 2  # interior cells: the support is not clipped by the border
        (grad,) = torch.autograd.grad(f[0, :, iy, ix].sum(), x, retain_graph=True)
        nz = (grad[0].abs().sum(0) > 0).nonzero()
        (y0, x0), (y1, x1) = nz.min(0).values.tolist(), nz.max(0).values.tolist()
        centre = np.array([(x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2])  # edge frame
        np.testing.assert_allclose(g.receptive_field_image([ix + 0.5, iy + 0.5], level), centre)
        s = bb.strides[level]
        diff = g.level_to_image([ix + 0.5, iy + 0.5], level) - g.receptive_field_image([ix + 0.5, iy + 0.5], level)
        np.testing.assert_allclose(diff, [(s - 1) / 2] * 2)


def test_geometry_round_trips_through_dict_and_rejects_bad_shapes():
    g = _geometry()
    g2 = Geometry.from_dict(g.to_dict())
    assert g2.to_dict() == g.to_dict()
    with pytest.raises(ValueError, match="valid_ratios"):
        Geometry([[2, 2]], [[1, 1], [1, 1]], (1, 1), (1, 1), (1, 1), (8,))
