"""Capture: faithful to the op, known answers in original-image pixels, budget, selection,
save/load, no hooks left behind, and thread isolation."""
import copy
import json
import threading
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ops
from ddetr import build_model, preset
from ddetr.capture import Capture, capture, plan_capture, self_attention_weights
from ddetr.capture_io import CaptureFileError
from ddetr.preprocess import resized_size

MIN, MAX = 96, 160
rng = np.random.default_rng(0)
IMG_A = rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)  # wide: resized 96 x 160
IMG_B = rng.integers(0, 256, (120, 100, 3), dtype=np.uint8)  # tall: 115 x 96; the batch with A is 115 x 160,
# A padded at the bottom, B on the right, neither square
IMG_C = rng.integers(0, 256, (70, 70, 3), dtype=np.uint8)


def tiny(**overrides):
    cfg = dict(d_model=64, dim_feedforward=128, backbone_width=16, enc_layers=2, dec_layers=2,
               num_queries=20, num_classes=5, min_size=MIN, max_size=MAX)
    cfg.update(overrides)
    torch.manual_seed(0)
    return build_model(preset("small", **cfg)).eval()


def _cores(model):
    t = model.transformer
    return ([("encoder", i, l.self_attn.core) for i, l in enumerate(t.encoder.layers)]
            + [("decoder", i, l.cross_attn.core) for i, l in enumerate(t.decoder.layers)])


def _no_hooks(model) -> bool:
    return all(not (m._forward_hooks or m._forward_pre_hooks or m._forward_hooks_with_kwargs
                    or m._forward_pre_hooks_with_kwargs or m._backward_hooks) for m in model.modules())


# ----------------------------------------------------------------------------- faithfulness
@pytest.mark.parametrize("overrides", [
    {},  # two-stage + refinement: box references from the first decoder layer
    dict(two_stage=False),  # learned queries: point references, boxes after refinement
    dict(two_stage=False, with_box_refine=False, n_levels=1),  # single scale
], ids=["two_stage", "box_refine", "single_scale"])
def test_captured_sampling_reproduces_every_layer(overrides):
    model = tiny(**overrides)
    seen = {}

    def record(key, module, args, kwargs, output):
        seen[key] = (*args, output)

    handles = [core.register_forward_hook(partial(record, (part, i)), with_kwargs=True)
               for part, i, core in _cores(model)]
    try:
        with capture(model, dtype=torch.float32, max_bytes=None) as cap:
            model.predict([IMG_A, IMG_B])
    finally:
        for h in handles:
            h.remove()
    assert len(cap.captures) == 2
    for (part, i), (value, shapes, lsi, loc, weights, out) in seen.items():
        for b, c in enumerate(cap.captures):
            s = c.sampling(part, i)
            got_loc, got_w = torch.from_numpy(s["locations"]), torch.from_numpy(s["weights"])
            assert torch.equal(got_loc, loc[b]), (part, i, b)  # rebuilt bit for bit in float32
            assert torch.equal(got_w, weights[b])
            redo = ops.ms_deform_attn(value[b:b + 1], shapes, lsi, got_loc[None], got_w[None])
            torch.testing.assert_close(redo, out[b:b + 1], rtol=1e-5, atol=1e-6)


def test_float16_storage_is_close():
    model = tiny()
    with capture(model, dtype=torch.float32, max_bytes=None) as full, capture(model) as half:
        model.predict(IMG_A)
    f, h = full.last, half.last
    assert h.meta["dtype"] == "float16"
    for part, layers in (("encoder", f.encoder_layers), ("decoder", f.decoder_layers)):
        for i in layers:
            a, b = f.sampling(part, i), h.sampling(part, i)
            err = np.abs(f.geometry.to_level(a["locations"]) - h.geometry.to_level(b["locations"])).max()
            assert err < 0.02, (part, i, err)  # level pixels
            assert np.abs(a["weights"] - b["weights"]).max() < 1e-3


def test_self_attention_weights_match_the_module():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    q, k = torch.randn(2, 7, 32), torch.randn(2, 7, 32)
    _, expected = mha(q, k, k, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(self_attention_weights(mha, q, k), expected, rtol=1e-5, atol=1e-6)


def test_detections_and_trajectory_match_predict():
    model = tiny()
    with capture(model) as cap:
        dets = model.predict([IMG_A, IMG_B])
        with torch.inference_mode():
            b = model.prepare([IMG_A, IMG_B])
            out = model(b.images, b.mask)
    for i, (c, d) in enumerate(zip(cap.captures, dets)):
        cd = c.detections
        assert torch.equal(cd.boxes, d.boxes) and torch.equal(cd.query_index, d.query_index)
        assert cd.label_names == d.label_names
        q = int(d.query_index[0])
        traj = c.trajectory(q)
        h0, w0 = c.image.shape[:2]
        np.testing.assert_allclose(traj["boxes"][-1], d.boxes[0].numpy(), rtol=1e-5, atol=1e-3)
        assert traj["boxes"].shape == (2, 4) and traj["reference_boxes"].shape == (2, 4)
        # two-stage: layer 0 starts from the proposal that became this query
        prop = c.arrays["proposals/boxes"][c.arrays["proposals/index"][q]]
        np.testing.assert_allclose(traj["reference_boxes"][0], prop * [w0, h0, w0, h0], rtol=1e-5, atol=1e-3)
        # The capture's boxes per layer are the model's (call 1 recorded the same forward again).
        np.testing.assert_allclose(c.arrays["layer/0/boxes"], out.aux[0].boxes[i].numpy())
        np.testing.assert_allclose(c.decoder_points(1, q)["box_image_px"], d.boxes[0].numpy(), rtol=1e-5, atol=1e-3)
        assert np.array_equal(c.image, (IMG_A, IMG_B)[i])  # the original, not the resized input
    assert [c.meta["call"] for c in cap.captures] == [0, 0, 1, 1]
    # two-stage: the proposals that became queries are the top proposal scores among the valid ones
    c = cap.captures[0]
    scores = np.where(c.arrays["proposals/valid"], c.arrays["proposals/scores"], -1)
    assert set(c.arrays["proposals/index"].tolist()) == set(np.argsort(-scores)[:20].tolist())


def test_trajectory_of_learned_queries_starts_from_a_point():
    model = tiny(two_stage=False)  # refinement: layer 0 reads a point, layer 1 the refined box
    with capture(model, encoder=False) as cap:
        model.predict(IMG_A)
    c = cap.last
    t = c.trajectory(4)
    assert np.isnan(t["reference_boxes"][0]).all() and np.isfinite(t["reference_boxes"][1]).all()
    # layer 1 starts from layer 0's output box (detached, same values)
    np.testing.assert_allclose(frames_xyxy(t["reference_boxes"][1]), t["boxes"][0], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(t["reference_points"][0], c.arrays["layer/0/reference"][4] * [150, 90], rtol=1e-6)
    assert "proposals/boxes" not in c.arrays and c.meta["two_stage"] is False


def frames_xyxy(b):
    return np.concatenate([b[:2] - b[2:] / 2, b[:2] + b[2:] / 2])


# ----------------------------------------------------------------------------- known answers
def _aim(attn, offsets, targets):
    """Hand-set projections: every query's head m samples level/point ``targets[m]`` with
    weight 1 (exactly: the other logits are -1e4) at ``offsets`` (M, L, P, 2) level pixels."""
    M, L, P = attn.n_heads, attn.n_levels, attn.n_points
    bias = torch.full((M, L, P), -1e4)
    for m, (lvl, p) in enumerate(targets):
        bias[m, lvl, p] = 0.0
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.copy_(offsets.flatten())
        attn.attention_weights.weight.zero_()
        attn.attention_weights.bias.copy_(bias.flatten())


def _valid_wh(images, spatial_shapes):
    """(B, L, 2) valid columns / rows of every level map, from the padding mask as the
    model defines it (nearest downsampling), independently of ddetr.frames."""
    sizes = [resized_size(im.shape[0], im.shape[1], MIN, MAX) for im in images]
    H, W = max(s[0] for s in sizes), max(s[1] for s in sizes)
    mask = torch.ones(len(images), H, W, dtype=torch.bool)
    for b, (h, w) in enumerate(sizes):
        mask[b, :h, :w] = False
    out = []
    for Hl, Wl in spatial_shapes:
        m = F.interpolate(mask[None].float(), size=(int(Hl), int(Wl)))[0].bool()
        out.append(torch.stack([(~m[:, 0, :]).sum(-1), (~m[:, :, 0]).sum(-1)], -1))
    return torch.stack(out, 1).numpy().astype(float)


BATCHES = {"non_square": [IMG_A], "padded_batch_of_two": [IMG_A, IMG_B]}


@pytest.mark.parametrize("batch", list(BATCHES), ids=list(BATCHES))
def test_known_answer_decoder_in_original_pixels(batch):
    images = BATCHES[batch]
    model = tiny(two_stage=False, with_box_refine=False)
    M, L, P = 8, 4, 4
    targets = [(m % L, (m // L) * 3) for m in range(M)]  # every level, two points per level
    X, Y = 101, 37  # the pixel of image A every head must sample (at layer 0)
    t = torch.tensor([(X + 0.5) / 150, (Y + 0.5) / 90])
    with torch.no_grad():
        model.transformer.reference_points.weight.zero_()
        model.transformer.reference_points.bias.copy_(torch.log(t / (1 - t)))
    d = torch.tensor([[1.25, -0.75]]) * torch.arange(1, L + 1)[:, None]  # (L, 2) level pixels
    offsets = [torch.zeros(M, L, P, 2), d[None, :, None].expand(M, L, P, 2).clone()]
    for layer, off in enumerate(offsets):
        _aim(model.transformer.decoder.layers[layer].cross_attn, off, targets)
    with capture(model) as cap:
        model.predict(images)
    for b, (c, im) in enumerate(zip(cap.captures, images)):
        h0, w0 = im.shape[:2]
        wh0 = np.array([w0, h0], dtype=float)
        vwh = _valid_wh(images, c.geometry.spatial_shapes)[b]  # (L, 2)
        for layer in (0, 1):
            pts = c.decoder_points(layer, query=3)
            for m, (lvl, p) in enumerate(targets):
                assert pts["weights"][m, lvl, p] == 1.0 and pts["weights"][m].sum() == 1.0
                dx = offsets[layer][m, lvl, p].numpy().astype(float)
                expect_img = t.numpy() * wh0 + dx * wh0 / vwh[lvl]
                np.testing.assert_allclose(pts["image_px"][m, lvl, p], expect_img, atol=2e-3)
                np.testing.assert_allclose(pts["level_px"][m, lvl, p], t.numpy() * vwh[lvl] + dx, atol=2e-3)
                np.testing.assert_allclose(pts["offsets_level_px"][m, lvl, p], dx, atol=2e-3)
                np.testing.assert_allclose(pts["offsets_image_px"][m, lvl, p], dx * wh0 / vwh[lvl], atol=2e-3)
                if layer == 0 and b == 0:  # the very pixel
                    assert tuple(np.floor(pts["image_px"][m, lvl, p]).astype(int)) == (X, Y)
            np.testing.assert_allclose(pts["reference_image_px"], np.tile(t.numpy() * wh0, (L, 1)), atol=2e-3)


@pytest.mark.parametrize("batch", list(BATCHES), ids=list(BATCHES))
def test_known_answer_encoder_in_original_pixels(batch):
    images = BATCHES[batch]
    model = tiny()
    M, L, P = 8, 4, 4
    targets = [(m % L, 0) for m in range(M)]
    d = torch.tensor([[2.0, -1.0]]) * torch.arange(1, L + 1)[:, None] * 0.75  # (L, 2) level pixels
    off = d[None, :, None].expand(M, L, P, 2).clone()
    _aim(model.transformer.encoder.layers[1].self_attn, off, targets)
    with capture(model, decoder=False) as cap:
        model.predict(images)
    for b, (c, im) in enumerate(zip(cap.captures, images)):
        h0, w0 = im.shape[:2]
        wh0 = np.array([w0, h0], dtype=float)
        vwh = _valid_wh(images, c.geometry.spatial_shapes)[b]
        for l0 in range(L):
            last = (int(vwh[l0, 0]) - 1, int(vwh[l0, 1]) - 1)
            for ix, iy in [(0, 0), last]:
                token_img = (np.array([ix, iy]) + 0.5) / vwh[l0] * wh0  # the token's own image point
                pts = c.encoder_points(1, *token_img, level=l0)
                assert pts["level"] == l0 and pts["cell"] == (ix, iy)
                np.testing.assert_allclose(pts["token_image_px"], token_img, atol=1e-3)
                for m, (lvl, p) in enumerate(targets):
                    assert pts["weights"][m, lvl, p] == 1.0
                    dx = d[lvl].numpy().astype(float)
                    np.testing.assert_allclose(pts["image_px"][m, lvl, p], token_img + dx * wh0 / vwh[lvl], atol=2e-3)
                    np.testing.assert_allclose(pts["level_px"][m, lvl, p],
                                               (np.array([ix, iy]) + 0.5) / vwh[l0] * vwh[lvl] + dx, atol=2e-3)


# ----------------------------------------------------------------------------- hooks, threads
def test_no_hooks_left_and_outputs_bit_identical():
    model = tiny()
    twin = copy.deepcopy(model)  # never captured
    b = model.prepare([IMG_A, IMG_B])
    with torch.inference_mode():
        never = twin(b.images, b.mask, batch=b)
        with capture(model, dtype=torch.float32, max_bytes=None) as cap:
            assert not _no_hooks(model)
            during = model(b.images, b.mask, batch=b)
        after = model(b.images, b.mask, batch=b)
    assert len(cap.captures) == 2 and _no_hooks(model)
    for out in (during, after):  # capture never changes what the model computes
        for x, y in zip(out.layers, never.layers):
            assert torch.equal(x.logits, y.logits) and torch.equal(x.boxes, y.boxes)
        assert torch.equal(out.enc.logits, never.enc.logits) and torch.equal(out.proposal_index, never.proposal_index)
    d1, d2 = model.predict(IMG_A)[0], twin.predict(IMG_A)[0]
    assert torch.equal(d1.boxes, d2.boxes) and torch.equal(d1.scores, d2.scores)
    assert len(cap.captures) == 2  # nothing recorded after exit


def test_hooks_removed_when_the_forward_raises():
    model = tiny()
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model):
            raise RuntimeError("boom")
    assert _no_hooks(model)


def test_two_threads_never_mix():
    model = tiny()
    images = {"a": IMG_A, "b": IMG_B}
    sessions = {}
    opened, done = threading.Barrier(3), threading.Barrier(3)
    errors = []

    def worker(name):
        try:
            with capture(model, encoder=[1]) as cap:
                sessions[name] = cap
                opened.wait()
                for _ in range(3):
                    model.predict(images[name])
                done.wait()
        except Exception as e:  # surfaced below
            errors.append(e)

    def bystander():  # predicts while both captures are open; neither may record it
        opened.wait()
        for _ in range(3):
            model.predict(IMG_C)
        done.wait()

    threads = [threading.Thread(target=worker, args=(n,)) for n in images] + [threading.Thread(target=bystander)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors
    for name, im in images.items():
        caps = sessions[name].captures
        assert len(caps) == 3
        assert all(np.array_equal(c.image, im) for c in caps)
        assert all(c.geometry.orig_size == im.shape[:2] for c in caps)
    # same image, same model: every capture in a session is identical
    a = sessions["a"].captures
    assert np.array_equal(a[0].arrays["enc/1/offsets"], a[2].arrays["enc/1/offsets"])
    assert _no_hooks(model)


# ----------------------------------------------------------------------------- budget, selection
def test_default_budget_plan_for_r50_at_800x1333():
    Lv = sum(-(-800 // s) * -(-1333 // s) for s in (8, 16, 32, 64))
    assert Lv == 22223
    common = dict(n_tokens=Lv, n_queries=300, n_selected=300, n_heads=8, n_levels=4, n_points=4, n_classes=91,
                  n_dec_layers=6, image_pixels=480 * 640, encoder=list(range(6)), decoder=list(range(6)),
                  self_attention=True, two_stage=False)
    default = plan_capture(**common, itemsize=2, max_bytes=100e6)
    assert default.estimated_bytes < 100e6
    assert default.decoder == list(range(6)) and default.self_attention == list(range(6))
    assert default.encoder and 0 not in default.encoder  # deepest layers kept first
    assert any("encoder layer 0" in s and "max_bytes" in s for s in default.left_out)
    full = plan_capture(**common, itemsize=4, max_bytes=None)
    assert full.encoder == list(range(6)) and not full.left_out
    assert 200e6 < full.estimated_bytes < 300e6


def test_budget_leaves_out_and_says_so():
    model = tiny()
    with capture(model, max_bytes=None) as cap:
        model.predict(IMG_A)
    full = cap.last
    enc0 = sum(a.nbytes for k, a in full.arrays.items() if k.startswith("enc/0/"))
    # the estimate the plan works with is close to the real size
    with capture(model, max_bytes=full.nbytes - enc0 // 2) as cap:
        model.predict(IMG_A)
    c = cap.last
    assert c.encoder_layers == [1] and c.decoder_layers == [0, 1]
    assert c.nbytes <= full.nbytes - enc0 // 2
    lv = c.levels
    assert [x["stride"] for x in lv] == [8, 16, 32, 64] and lv[0]["start"] == 0
    assert (lv[0]["valid_height"], lv[0]["valid_width"]) == (lv[0]["height"], lv[0]["width"]) == (12, 20)
    assert any("encoder layer 0" in s for s in c.left_out) and "encoder layer 0" in c.summary()
    with pytest.raises(KeyError, match="max_bytes"):
        c.encoder_points(0, 10, 10)


def test_plan_estimate_matches_real_size():
    model = tiny()
    with capture(model, max_bytes=1e9) as cap:
        model.predict(IMG_A)
    c = cap.last
    cfg = model.cfg
    Lv = int(c.geometry.spatial_shapes.prod(1).sum())
    plan = plan_capture(n_tokens=Lv, n_queries=20, n_selected=20, n_heads=8, n_levels=4, n_points=4,
                        n_classes=cfg.num_classes, n_dec_layers=2, image_pixels=90 * 150, encoder=[0, 1],
                        decoder=[0, 1], self_attention=True, itemsize=2, max_bytes=None, two_stage=True)
    assert abs(plan.estimated_bytes - c.nbytes) / c.nbytes < 0.1


def test_query_and_layer_selection():
    model = tiny()
    with capture(model, max_bytes=None) as full, \
            capture(model, queries="detections", encoder=False, decoder=[1]) as sel:
        dets = model.predict(IMG_A)
    f, s = full.last, sel.last
    qi = s.arrays["dec/query_index"]
    assert np.array_equal(qi, np.unique(dets[0].query_index.numpy()))
    assert s.encoder_layers == [] and s.decoder_layers == [1]
    assert "encoder sampling: not requested (encoder=False)" in s.left_out
    assert np.array_equal(s.arrays["dec/1/offsets"], f.arrays["dec/1/offsets"][qi])
    assert np.array_equal(s.arrays["dec/1/self_attention"], f.arrays["dec/1/self_attention"][:, qi])
    missing = sorted(set(range(20)) - set(qi.tolist()))
    if missing:
        with pytest.raises(KeyError, match="queries=None"):
            s.decoder_points(1, missing[0])
    with pytest.raises(KeyError, match="not captured"):
        s.decoder_points(0, int(qi[0]))
    with capture(model, queries=[3, 5], encoder=False) as cap:
        model.predict(IMG_A)
    assert cap.last.arrays["dec/0/weights"].shape[0] == 2 and cap.last.decoder_points(0, 5)["query"] == 5


def test_front_door_stays_callable():
    """``ddetr.capture`` is the function even after ``ddetr.capture`` the module was imported
    (this file imports it at the top)."""
    import ddetr

    assert callable(ddetr.capture)
    model = tiny()
    with ddetr.capture(model, encoder=False) as cap:
        model.predict(IMG_C)
    assert len(cap.captures) == 1


def test_reading_captures_does_not_build_the_op(saved):
    """A capture is re-rendered without the model: loading and reading one imports no op."""
    import subprocess
    import sys

    _, path = saved
    code = ("import sys; from ddetr.capture import Capture; c = Capture.load(sys.argv[1]); "
            "c.decoder_points(1, 0); c.encoder_points(0, 5, 5); assert 'ops' not in sys.modules, 'ops imported'")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_bad_arguments_are_explained():
    model = tiny()
    with pytest.raises(ValueError, match="float16 or torch.float32"):
        capture(model, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="encoder layers \\[7\\] do not exist"):
        capture(model, encoder=[7])
    with pytest.raises(ValueError, match="queries"):
        capture(model, queries="all of them")
    with pytest.raises(ValueError, match="queries \\[25\\]"), capture(model, queries=[1, 25]):
        model.predict(IMG_C)
    assert _no_hooks(model)
    with pytest.raises(TypeError, match="DeformableDETR"):
        capture(torch.nn.Linear(2, 2))


def test_direct_forward_without_predict_is_captured():
    model = tiny()
    b = model.prepare([IMG_A, IMG_B])
    with capture(model, encoder=False) as cap, torch.inference_mode():
        model(b.images, b.mask)
    c = cap.captures[1]
    assert c.geometry.orig_size == c.geometry.input_size == tuple(b.sizes[1])
    assert c.image.shape == (*b.sizes[1], 3)


# ----------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny()
    with capture(model) as cap:
        model.predict([IMG_A, IMG_B])
    path = tmp_path_factory.mktemp("cap") / "b.npz"
    cap.captures[1].save(path)
    return cap.captures[1], path


def test_save_load_round_trip(saved, tmp_path):
    c, path = saved
    back = Capture.load(path)
    assert back == c and back.meta == c.meta and back.summary() == c.summary()
    assert all(back.arrays[k].dtype == a.dtype for k, a in c.arrays.items())
    np.testing.assert_array_equal(back.decoder_points(1, 0)["image_px"], c.decoder_points(1, 0)["image_px"])
    c.save(tmp_path / "z.npz", compress=True)
    assert Capture.load(tmp_path / "z.npz") == c


def test_truncated_file_is_a_clear_error(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(CaptureFileError, match="truncated"):
            Capture.load(bad)


def test_foreign_files_are_clear_errors(saved, tmp_path):
    _, path = saved
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(CaptureFileError, match="not a ddetr capture"):
        Capture.load(tmp_path / "other.npz")
    np.save(tmp_path / "arr.npy", np.zeros(3))
    with pytest.raises(CaptureFileError, match="single numpy array"):
        Capture.load(tmp_path / "arr.npy")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(CaptureFileError):
        Capture.load(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError):
        Capture.load(tmp_path / "missing.npz")
    header = {"format": "ddetr-capture", "version": 99, "arrays": {}}
    np.savez(tmp_path / "new.npz", __ddetr_capture__=np.frombuffer(json.dumps(header).encode(), np.uint8))
    with pytest.raises(CaptureFileError, match="version 99"):
        Capture.load(tmp_path / "new.npz")
    header["version"] = 1
    np.savez(tmp_path / "pickle.npz", __ddetr_capture__=np.frombuffer(json.dumps(header).encode(), np.uint8),
             evil=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CaptureFileError):
        Capture.load(tmp_path / "pickle.npz")


@pytest.mark.slow
def test_default_capture_of_r50_at_800x1333_stays_under_100mb():
    torch.manual_seed(0)
    model = build_model(preset("multi_scale")).eval()
    image = rng.integers(0, 256, (600, 1000, 3), dtype=np.uint8)  # resized to 800 x 1333
    with capture(model) as cap:
        model.predict(image)
    c = cap.last
    assert c.geometry.input_size == (800, 1333)
    assert c.nbytes < 100e6 and c.left_out and c.decoder_layers == list(range(6))
    assert len(c.encoder_layers) >= 4
