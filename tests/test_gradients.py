"""Figure 5 gradient maps: shapes, where they are non-zero, and no side effects on the model."""
import numpy as np
import pytest
import torch

from ddetr import build_model, preset
from ddetr.gradients import QUANTITIES, box_gradients


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = preset("small", d_model=64, dim_feedforward=128, backbone_width=16, enc_layers=2, dec_layers=2,
                 num_queries=20, num_classes=5, min_size=96, max_size=160)
    m = build_model(cfg).eval()
    with torch.no_grad():  # official init zeroes the last box layer: boxes would not depend on the image
        for head in m.bbox_embed:
            head.layers[-1].weight.normal_(0, 0.05)
    return m


IMAGE = np.random.default_rng(0).integers(0, 256, (75, 125, 3), dtype=np.uint8)  # resized to 96 x 160


def test_maps_shapes_and_support(model):
    dets = model.predict(IMAGE)[0]
    q = int(dets.query_index[0])
    g = box_gradients(model, IMAGE, q)
    assert g["query_index"] == q and g["label_name"] == model.cfg.label_name(g["label"])
    np.testing.assert_allclose(g["box"], dets.boxes[0].numpy(), rtol=1e-4, atol=1e-3)
    assert g["scale"] == pytest.approx((96 / 75, 160 / 125))
    x0, y0, x1, y1 = g["box"]
    for name in QUANTITIES:
        m, r = g[name], g["resized"][name]
        assert m.shape == (75, 125) and r.shape == (96, 160)
        assert np.isfinite(m).all() and (m >= 0).all() and m.max() > 0
        # the prediction depends on the pixels in and around its box
        ys, xs = slice(max(int(y0) - 8, 0), int(y1) + 9), slice(max(int(x0) - 8, 0), int(x1) + 9)
        assert m[ys, xs].max() > 0
    assert not np.allclose(g["cx"], g["w"])  # one backward per quantity, not one map reused


def test_matches_autograd_on_the_model_and_leaves_it_untouched(model):
    model.train()
    g = box_gradients(model, [IMAGE], None)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated
    model.eval()
    b = model.prepare(IMAGE)
    x = b.images.clone().requires_grad_(True)
    out = model(x, b.mask)
    out.boxes[0, g["query_index"], 1].backward()
    std = torch.tensor(model.cfg.pixel_std).view(3, 1, 1)
    expected = (x.grad[0] / std).norm(dim=0).numpy()
    np.testing.assert_allclose(g["resized"]["cy"], expected, rtol=1e-4, atol=1e-7)
    model.zero_grad(set_to_none=True)


def test_rejects_bad_query(model):
    with pytest.raises(IndexError, match="query_index"):
        box_gradients(model, IMAGE, 999)
    with pytest.raises(ValueError, match="one image"):
        box_gradients(model, [IMAGE, IMAGE], 0)
