"""Inference precision: bfloat16 only where promised, float32 untouched, capture faithful in
both, the settings of two threads never mixed, and bfloat16 close to float32."""
from __future__ import annotations

import threading
from functools import partial

import numpy as np
import pytest
import torch

import ops
from ddetr import build_model, precision, preset
from ddetr.attention import SamplingCore
from ddetr.capture import capture
from randomize import randomize

rng = np.random.default_rng(0)
IMG_A = rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)
IMG_B = rng.integers(0, 256, (120, 100, 3), dtype=np.uint8)


def tiny(**overrides):
    cfg = dict(d_model=64, dim_feedforward=128, backbone_width=16, enc_layers=2, dec_layers=2,
               num_queries=20, num_classes=5, min_size=96, max_size=160)
    cfg.update(overrides)
    torch.manual_seed(0)
    return randomize(build_model(preset("small", **cfg))).eval()


def _dtypes(model, prec: str, image=IMG_A) -> dict[str, set]:
    """Output dtypes of the modules of interest (and the op's inputs) during one predict in
    ``prec``, keyed "encoder.value_proj", "decoder.linear1", "backbone" ..."""
    seen: dict[str, set] = {}

    def record(name, module, args, kwargs, out):
        seen.setdefault(name, set()).add(out.dtype if isinstance(out, torch.Tensor) else None)
        if isinstance(module, SamplingCore):
            for i, what in ((0, "value"), (3, "locations"), (4, "weights")):
                seen.setdefault(f"{name} {what} in", set()).add(args[i].dtype)

    kinds = ("value_proj", "output_proj", "sampling_offsets", "attention_weights", "linear1", "linear2",
             "norm1", "norm2", "core", "self_attn.out_proj")
    wanted = {f"transformer.{part}.layers.{i}.{sub}.{k}" if k not in ("linear1", "linear2", "norm1", "norm2")
              else f"transformer.{part}.layers.{i}.{k}": f"{part}.{k}"
              for part, sub in (("encoder", "self_attn"), ("decoder", "cross_attn")) for i in range(2) for k in kinds}
    wanted.update({"backbone.0.body.layer1": "backbone", "input_proj.0.0": "input conv", "input_proj.0.1": "input norm",
                   "transformer.reference_points": "reference_points", "class_embed.0": "class head",
                   "bbox_embed.0": "box head"})
    handles = [m.register_forward_hook(partial(record, wanted[name]), with_kwargs=True)
               for name, m in model.named_modules() if name in wanted]
    try:
        model.predict(image, precision=prec)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_bf16_exactly_where_promised():
    model = tiny(two_stage=False, with_box_refine=True)
    seen = _dtypes(model, "bf16")
    bf16, fp32 = {torch.bfloat16}, {torch.float32}
    dense = ["backbone", "input conv", "encoder.core value in"] + [f"encoder.{k}" for k in ("value_proj", "output_proj", "linear1", "linear2")]
    exact = ["input norm", "reference_points", "class head", "box head", "encoder.core locations in",
             "encoder.core weights in"]
    exact += [f"encoder.{k}" for k in ("sampling_offsets", "attention_weights", "norm1", "norm2", "core")]
    exact += [k for k in seen if k.startswith("decoder.")]  # the whole decoder
    assert len(exact) > 15
    for k in dense:
        assert seen[k] == bf16, k
    for k in exact:
        assert seen[k] == fp32, k
    # In float32 nothing is bfloat16.
    assert all(d == fp32 for d in _dtypes(model, "fp32").values())


def test_fp32_is_the_default_and_bit_identical():
    model = tiny()
    default = model.predict([IMG_A, IMG_B])
    explicit = model.predict([IMG_A, IMG_B], precision="fp32")
    for a, b in zip(default, explicit):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
    assert precision.current() == "fp32"
    model.predict(IMG_A, precision="bf16")
    assert precision.current() == "fp32"  # restored on exit


def test_bad_precision_is_explained():
    with pytest.raises(precision.PrecisionError, match="'fp32', 'bf16'"):
        tiny().predict(IMG_A, precision="fp16")


def test_threads_never_mix_precisions():
    """A bfloat16 predict in one thread while another runs float32: the float32 results are
    bit-identical to a float32 run alone."""
    model = tiny()
    (alone,) = model.predict(IMG_A)
    inside, go, out = threading.Event(), threading.Event(), {}

    def other():
        with precision.use("bf16"):
            inside.set()
            go.wait(10)
            out["bf16"] = model.predict(IMG_B, precision="bf16")

    t = threading.Thread(target=other)
    t.start()
    assert inside.wait(10)
    (mine,) = model.predict(IMG_A)  # while the other thread sits inside use("bf16")
    go.set()
    t.join(30)
    assert torch.equal(mine.boxes, alone.boxes) and torch.equal(mine.scores, alone.scores)
    assert len(out["bf16"]) == 1


@pytest.mark.parametrize("overrides", [{}, dict(two_stage=False)], ids=["two_stage", "box_refine"])
def test_capture_is_faithful_in_bf16(overrides):
    """What the capture holds is what the op consumed, in bfloat16 too: the rebuilt locations
    equal the op's float32 input bit for bit and reproduce its output."""
    model = tiny(**overrides)
    seen = {}

    def record(key, module, args, kwargs, output):
        seen[key] = (*args, output)

    t = model.transformer
    cores = [("encoder", i, l.self_attn.core) for i, l in enumerate(t.encoder.layers)]
    cores += [("decoder", i, l.cross_attn.core) for i, l in enumerate(t.decoder.layers)]
    handles = [core.register_forward_hook(partial(record, (part, i)), with_kwargs=True) for part, i, core in cores]
    try:
        with capture(model, dtype=torch.float32, max_bytes=None) as cap:
            model.predict([IMG_A, IMG_B], precision="bf16")
    finally:
        for h in handles:
            h.remove()
    for (part, i), (value, shapes, lsi, loc, weights, out) in seen.items():
        assert loc.dtype == weights.dtype == torch.float32
        for b, c in enumerate(cap.captures):
            s = c.sampling(part, i)
            got_loc, got_w = torch.from_numpy(s["locations"]), torch.from_numpy(s["weights"])
            assert torch.equal(got_loc, loc[b]), (part, i, b)
            assert torch.equal(got_w, weights[b])
            redo = ops.ms_deform_attn(value[b:b + 1].float(), shapes, lsi, got_loc[None], got_w[None])
            torch.testing.assert_close(redo, out[b:b + 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("two_stage", [False, True], ids=["box_refine", "two_stage"])
def test_bf16_close_to_fp32_small_model(two_stage):
    """Random weights: boxes within 1 px and sampling locations within 0.05 level px."""
    image = np.random.default_rng(5).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    torch.manual_seed(0)
    model = randomize(build_model(preset("small", min_size=240, max_size=320, two_stage=two_stage))).eval()
    r = precision.agreement(model, image)
    assert r.locations_level_px < 0.05, r
    assert r.boxes_px is None or r.boxes_px < 1.0, r
    if not two_stage:
        assert r.boxes_px is not None


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["multi_scale", "multi_scale_box_refine", "multi_scale_two_stage"])
def test_bf16_close_to_fp32_r50(variant):
    """Random-weight R50 variants at 320x480 (800x1333: ``python bench/r50_cpu.py --accuracy``).
    Encoder sampling within 0.05 level px everywhere; without refinement also the decoder's,
    and boxes within 1 px. With refinement, random per-layer box heads amplify the bfloat16
    rounding of the encoder memory layer after layer (measured at 800x1333: 1.2 level px,
    5 px), so there only the encoder is held to the bound."""
    image = np.random.default_rng(6).integers(0, 256, (320, 480, 3), dtype=np.uint8)
    torch.manual_seed(0)
    model = randomize(build_model(preset(variant, min_size=320, max_size=480))).eval()
    r = precision.agreement(model, image)
    assert r.encoder_level_px < 0.05, (variant, r)
    if variant == "multi_scale":
        assert r.decoder_level_px < 0.05 and r.boxes_px < 1.0, r


def test_match_detections_is_one_to_one_and_keeps_labels():
    """A shuffled, slightly moved copy is matched back to its originals; a box that only exists
    with another label is matched across labels and reported as such."""
    g = np.random.default_rng(1)
    a = g.uniform(0, 500, (30, 4))
    labels = g.integers(0, 3, 30)
    perm = g.permutation(30)
    b, lb = a[perm] + g.uniform(-0.5, 0.5, (30, 4)), labels[perm].copy()
    err, same = precision.match_detections(a, labels, b, lb)
    assert err.shape == (30,) and same.all() and err.max() <= 0.5
    b_extra = np.concatenate([b, a[:1] + 100]), np.concatenate([lb, lb[:1]])
    err2, _ = precision.match_detections(a, labels, *b_extra)  # a spare candidate changes nothing
    np.testing.assert_allclose(err2, err)
    lb[np.argsort(perm)[0]] = (labels[0] + 1) % 3  # the twin of a[0] now has another label
    err3, same3 = precision.match_detections(a, labels, b, lb)
    assert not same3[0] and same3[1:].all()


def test_agreement_matches_detections_small_model():
    """bf16 detections as a set: every fp32 top-k detection has a bf16 twin; a model against
    itself in fp32 agrees exactly."""
    image = np.random.default_rng(5).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    torch.manual_seed(0)
    model = randomize(build_model(preset("small", min_size=240, max_size=320, two_stage=False))).eval()
    same = precision.agreement(model, image, low="fp32")
    assert same.matched_px == 0 and same.same_detections == 1 and same.matched_same_label == 1
    r = precision.agreement(model, image)
    assert r.distinct_boxes > 1  # a model whose detections differ: the comparison means something
    assert r.matched_median_px < 1.0 and r.matched_same_label > 0.9, r
