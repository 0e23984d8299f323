"""The capture contract: hooks read their modules' inputs by parameter name (a changed
signature fails when the capture opens), and capture re-runs nothing the model computed."""
import sys

import numpy as np
import pytest
import torch

from ddetr import build_model, preset
from ddetr.capture import capture
from ddetr.postprocess import postprocess
from ddetr.two_stage import encoder_proposals

IMAGE = np.random.default_rng(0).integers(0, 256, (90, 150, 3), dtype=np.uint8)


def tiny():
    torch.manual_seed(0)
    cfg = preset("small", d_model=64, dim_feedforward=128, backbone_width=16, enc_layers=2, dec_layers=2,
                 num_queries=20, num_classes=5, min_size=96, max_size=160)
    return build_model(cfg).eval()


def _calls(fn, codes) -> dict:
    """Run ``fn`` counting calls (on this thread) of the functions whose code objects are given."""
    counts = {c: 0 for c in codes}

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in counts:
            counts[frame.f_code] += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return counts


def test_capture_recomputes_nothing():
    model = tiny()
    codes = (postprocess.__code__, encoder_proposals.__code__)
    plain = _calls(lambda: model.predict(IMAGE), codes)

    def captured():
        with capture(model):
            model.predict(IMAGE)

    assert plain == {postprocess.__code__: 1, encoder_proposals.__code__: 1}
    assert _calls(captured, codes) == plain


def test_a_renamed_parameter_fails_when_the_capture_opens():
    model = tiny()
    core = model.transformer.decoder.layers[0].cross_attn.core

    def forward(value, spatial_shapes, level_start_index, locations, attention_weights, *, reference_points=None,
                offsets=None):  # "sampling_locations" renamed
        raise AssertionError("not called")

    core.forward = forward
    with pytest.raises(TypeError, match="sampling_locations"):
        with capture(model):
            pass
    assert all(not (m._forward_hooks or m._forward_pre_hooks) for m in model.modules())


def test_inputs_are_named_however_they_are_passed():
    from ddetr.capture import _Inputs

    enc = tiny().transformer.encoder
    names = ("src", "spatial_shapes", "level_start_index", "valid_ratios", "pos", "padding_mask")
    values = tuple(object() for _ in names)
    read = _Inputs(enc, ("src", "padding_mask"))
    assert read(values, None) == read((), dict(zip(names, values))) == read(values[:2], dict(zip(names[2:], values[2:])))
    assert read(values, None)["padding_mask"] is values[-1]
