"""Checkpoint diagnostics: each check fires on the symptom it names and stays quiet otherwise."""
import math

import numpy as np
import pytest
import torch

import ddetr
from ddetr.capture import capture
from ddetr.diagnostics import (check_parameters, diagnose, initial_offset_bias, level_mass,
                               normalized_entropy, offset_change, outside_mass)
from ddetr.attention import MSDeformAttn


@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(0)
    return ddetr.build_model(ddetr.preset("small", num_classes=8, min_size=128, max_size=192)).eval()


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return (rng.random((120, 160, 3)) * 255).astype(np.uint8)


def _run(model, image):
    with capture(model) as s:
        model.predict(image)
    return s.captures[0]


def test_initial_bias_is_the_modules_own_init():
    m = MSDeformAttn(d_model=64, n_levels=3, n_heads=4, n_points=2)
    assert torch.equal(initial_offset_bias(4, 3, 2), m.sampling_offsets.bias.detach())
    assert offset_change(m) == 0.0
    with torch.no_grad():
        m.sampling_offsets.bias.add_(0.5)
    assert offset_change(m) > 0.1


def test_untrained_model_is_flagged(untrained, image):
    d = diagnose(untrained, _run(untrained, image))
    problems = {f.check for f in d.of("problem")}
    assert {"offsets_at_init", "weights_at_init", "uniform_heads"} <= problems
    assert d.worst == "problem"
    md = d.to_markdown()
    assert "PROBLEM" in md and "initialization" in md


def test_moved_parameters_pass(untrained, image):
    import copy

    model = copy.deepcopy(untrained)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "sampling_offsets" in n or "attention_weights" in n:
                p.add_(torch.randn_like(p) * 0.1)
    assert not [f for f in check_parameters(model) if f.severity != "ok"]
    d = diagnose(model, _run(model, image))
    assert not [f for f in d.findings if f.check in ("offsets_at_init", "weights_at_init", "uniform_heads")
                and f.severity != "ok"]


def test_barely_moved_is_a_warning(untrained):
    import copy

    model = copy.deepcopy(untrained)
    attn = model.transformer.encoder.layers[0].self_attn
    with torch.no_grad():
        attn.sampling_offsets.bias.mul_(1.005)  # 0.5 % change: between the two thresholds
    found = {(f.check, f.severity, f.where) for f in check_parameters(model)}
    assert ("offsets_at_init", "warning", "encoder layer 0") in found


def test_normalized_entropy_bounds():
    uniform = np.full((5, 3, 4), 1 / 12)
    assert np.allclose(normalized_entropy(uniform), 1.0)
    peaked = np.zeros((1, 3, 4))
    peaked[0, 1, 2] = 1
    assert normalized_entropy(peaked)[0] == pytest.approx(0.0, abs=1e-9)
    mixed = np.array([[[0.5, 0.5], [0, 0]]])
    assert normalized_entropy(mixed)[0] == pytest.approx(math.log(2) / math.log(4))


def test_outside_mass_counts_padding_and_outside():
    # 1 query, 1 head, 2 levels, 2 points; level 0 valid to x <= 0.5
    loc = np.array([[[[[0.25, 0.25], [0.75, 0.25]],  # level 0: in image, in padding
                      [[0.5, 0.5], [1.5, 0.5]]]]])  # level 1: in image, outside the map
    w = np.array([[[[0.1, 0.2], [0.3, 0.4]]]])
    vr = np.array([[0.5, 1.0], [1.0, 1.0]])
    pad, out = outside_mass(loc, w, vr)
    assert pad == pytest.approx(0.2) and out == pytest.approx(0.4)


def test_starved_level_is_reported(untrained, image):
    c = _run(untrained, image)
    for k in [k for k in c.arrays if k.endswith("/weights")]:
        w = c.arrays[k].astype(np.float32)
        w[..., 3, :] = 1e-6  # level 3 gets nothing
        c.arrays[k] = (w / w.sum((-1, -2), keepdims=True)).astype(c.arrays[k].dtype)
    d = diagnose(None, c)
    starved = [f for f in d.findings if f.check == "starved_levels" and f.severity == "warning"]
    assert starved and all("level(s) 3" in f.message for f in starved)
    assert level_mass(c.sampling("encoder", 0)["weights"])[3] < 0.01


def test_points_outside_is_reported(untrained, image):
    c = _run(untrained, image)

    def flagged():
        return {f.where for f in diagnose(None, c).findings if f.check == "points_outside" and f.severity == "problem"}

    decoder = {f"decoder layer {i}" for i in c.decoder_layers}
    assert not flagged() & decoder  # the decoder's init ring lies around its references, inside
    for k in [k for k in c.arrays if k.startswith("dec/") and k.endswith("/offsets")]:
        c.arrays[k] = (c.arrays[k].astype(np.float32) + 50.0).astype(c.arrays[k].dtype)  # far right / below
    assert decoder <= flagged()


def test_without_capture_says_what_is_missing(untrained):
    d = diagnose(untrained, None)
    assert any("no capture" in n for n in d.notes)
    assert all(f.check in ("offsets_at_init", "weights_at_init") for f in d.findings)
