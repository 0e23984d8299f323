"""Checkpoint diagnostics: every injected fault is named at its place, healthy models pass, an
untrained model does not; the statistics behind them aggregate (and merge) exactly."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import ddetr
from ddetr import faults
from ddetr.attention import MSDeformAttn
from ddetr.attention_stats import AttentionStats, normalized_entropy, region_masks
from ddetr.capture import capture
from ddetr.diagnose import read_images
from ddetr.diagnostics import (CHECKS, Diagnostics, check_capture, check_parameters, diagnose, initial_offset_bias, measure,
                               offset_change)

torch.set_num_threads(min(2, torch.get_num_threads()))
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "examples" / "default_model.safetensors"


@pytest.fixture(scope="module")
def shipped():
    return ddetr.load(SHIPPED)[0]


@pytest.fixture(scope="module")
def images():
    return read_images(ROOT / "examples" / "synthetic", 3)


@pytest.fixture(scope="module")
def untrained(shipped):
    torch.manual_seed(0)
    return ddetr.build_model(shipped.cfg).eval()


# ----------------------------------------------------------------------------- the fault suite
@pytest.mark.slow
def test_every_fault_is_named_at_its_place_and_the_healthy_model_passes(shipped, images):
    healthy = diagnose(shipped, measure(shipped, images))
    assert healthy.verdict == "ok", str(healthy)
    assert {f.check for f in healthy.findings} == set(CHECKS)  # every check ran and passed
    injected = faults.inject_all(shipped)
    assert {f.check for _, f in injected} == set(CHECKS)
    for model, fault in injected:
        d = diagnose(model, measure(model, images))
        assert d.verdict == "problem", fault.name
        assert faults.named(d, fault), f"{fault.name} not named:\n{d}"
        # Named where it is, not elsewhere: no problem of the same check at another layer / head /
        # level (saturated references are passed on by refinement: later decoder layers inherit them).
        elsewhere = [f.where for f in d.of("problem") if f.check == fault.check
                     and not faults.named(Diagnostics([f]), fault)
                     and not (fault.check == "references_saturated" and f.layer > fault.layer)]
        assert not elsewhere, (fault.name, elsewhere)


@pytest.mark.slow
def test_untrained_model_is_not_ok(untrained, images):
    d = diagnose(untrained, measure(untrained, images))
    problems = {f.check for f in d.of("problem")}
    assert {"offsets_at_init", "uniform_heads", "class_head_silent"} <= problems
    assert "PROBLEM" in d.to_markdown()


def test_faults_leave_the_original_untouched(shipped):
    before = {k: v.clone() for k, v in shipped.state_dict().items()}
    for model, _ in faults.inject_all(shipped):
        assert model is not shipped
    assert all(torch.equal(before[k], v) for k, v in shipped.state_dict().items())


# ----------------------------------------------------------------------------- weight checks
def test_weight_checks_locate_each_fault_without_images(shipped):
    assert all(f.severity == "ok" for f in check_parameters(shipped))
    for fn, kw in ((faults.offsets_at_init, dict(part="decoder", layer=1)),
                   (faults.dead_heads, dict(part="encoder", layer=2, head=6)),
                   (faults.uniform_heads, dict(part="encoder", layer=0)),
                   (faults.level_embed_collapsed, {})):
        model, fault = fn(shipped, **kw)
        d = diagnose(model, None)
        assert faults.named(d, fault), fault.name
        assert any("no images" in n for n in d.notes)


def test_initial_bias_is_the_modules_own_init():
    m = MSDeformAttn(d_model=64, n_levels=3, n_heads=4, n_points=2)
    assert torch.equal(initial_offset_bias(4, 3, 2), m.sampling_offsets.bias.detach())
    assert offset_change(m) == 0.0
    with torch.no_grad():
        m.sampling_offsets.bias.add_(0.5)
    assert offset_change(m) > 0.1


# ----------------------------------------------------------------------------- statistics
def test_normalized_entropy_bounds():
    assert np.allclose(normalized_entropy(np.full((5, 3, 4), 1 / 12)), 1.0)
    peaked = np.zeros((1, 3, 4))
    peaked[0, 1, 2] = 1
    assert normalized_entropy(peaked)[0] == pytest.approx(0.0, abs=1e-9)
    assert normalized_entropy(np.array([[[0.5, 0.5], [0, 0]]]))[0] == pytest.approx(math.log(2) / math.log(4))


def test_region_masks_separate_padding_and_outside():
    # 1 row, 1 head, 2 levels, 2 points; level 0 valid to x <= 0.5
    loc = np.array([[[[[0.25, 0.25], [0.75, 0.25]], [[0.5, 0.5], [1.5, 0.5]]]]])
    pad, out = region_masks(loc, np.array([[0.5, 1.0], [1.0, 1.0]]))
    assert pad.tolist() == [[[[False, True], [False, False]]]]
    assert out.tolist() == [[[[False, False], [False, True]]]]


@pytest.fixture(scope="module")
def captures(shipped, images):
    out = []
    for img in images:
        with capture(shipped, max_bytes=None, dtype=torch.float32) as s:
            shipped.predict(img)
        out.append(s.captures[0])
    return out


def test_stats_of_shards_merge_to_the_stats_of_all(captures):
    whole = AttentionStats()
    for c in captures:
        whole.add(c)
    a, b = AttentionStats(), AttentionStats()
    a.add(captures[0])
    for c in captures[1:]:
        b.add(c)
    merged = AttentionStats.from_state(b.merge(a).to_state())  # order and a serialization round trip
    sw, sm = whole.summary(), merged.summary()
    assert sw.keys() == sm.keys() and sw["images"] == 3
    for k, layer in sw["layers"].items():
        for name, v in layer.items():
            np.testing.assert_allclose(sm["layers"][k][name], v, rtol=1e-9, atol=1e-12, err_msg=f"{k} {name}")


def test_layer_means_are_shares(captures):
    stats = AttentionStats()
    for c in captures:
        stats.add(c)
    for part, i in stats.keys():
        s = stats.layer(part, i)
        np.testing.assert_allclose(s["mass"].sum(-1), 1.0, atol=1e-9)  # every head's mass over levels
        assert np.all((s["wasted"] >= 0) & (s["wasted"] <= 1))
        assert np.all(np.linalg.norm(s["direction"], axis=-1) <= 1 + 1e-9)


def test_single_capture_checks_keep_the_app_interface(captures, shipped):
    findings, notes = check_capture(captures[0])
    assert findings and any("one image" in n for n in notes)
    d = diagnose(shipped, captures[0])
    assert d.verdict in ("ok", "warning", "problem")
    row = d.to_json("x")["findings"][0]
    assert set(row) == {"check", "severity", "module", "layer", "head", "level", "value", "message"}


def test_starved_level_in_a_capture_is_located(captures):
    c = copy.deepcopy(captures[0])
    for k in [k for k in c.arrays if k.startswith("enc/1/") and k.endswith("/weights")]:
        w = c.arrays[k].copy()
        w[..., 2, :] = 0  # level 2 gets nothing in encoder layer 1
        c.arrays[k] = w / w.sum((-1, -2), keepdims=True)
    findings, _ = check_capture(c)
    starved = [(f.module, f.layer, f.level) for f in findings if f.check == "starved_levels" and f.severity == "problem"]
    assert starved == [("encoder", 1, 2)]


def test_saturated_first_references_are_named_without_refinement_too(images):
    """Without two-stage, layer 0's references come from the reference-point head."""
    cfg = ddetr.preset("multi_scale", backbone="resnet_small", backbone_block="basic", backbone_width=16,
                       backbone_blocks=(1, 1, 1, 1), d_model=64, enc_layers=1, dec_layers=2, dim_feedforward=128,
                       num_queries=20, min_size=64, max_size=96)
    torch.manual_seed(0)
    model = ddetr.build_model(cfg).eval()
    faulty, fault = faults.references_saturated(model, layer=0)
    d = diagnose(faulty, measure(faulty, images[:1]))
    assert faults.named(d, fault), str(d)
    healthy = [f for f in diagnose(model, measure(model, images[:1])).findings if f.check == "references_saturated"]
    assert [f.severity for f in healthy] == ["ok"]
